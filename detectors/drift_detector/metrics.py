"""Prometheus metrics of the drift detector (contract 2; dashboards and alerts use these names).

Each server gets its own registry, so several detectors (tests, benchmarks) can live in
one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class DetectorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.test_stat = Gauge("drift_test_stat", "Latest online-MMD test statistic", registry=r)
        self.threshold = Gauge("drift_threshold", "Online-MMD threshold at the current time step", registry=r)
        self.drift_events = Counter(
            "drift_events", "Samples at which the online MMD flagged drift", registry=r)
        self.state = Gauge("drift_state", "1 while the latest window is flagged as drifted", registry=r)
        self.label_stat = Gauge(
            "label_drift_statistic",
            "Total-variation distance between recent predicted classes and the training prior",
            registry=r)
        self.received = Counter("drift_events_received", "Logger events accepted", ["type"], registry=r)
        self.processed = Counter("drift_events_processed", "Logger events processed", ["type"], registry=r)
        self.dropped = Counter("drift_events_dropped", "Logger events dropped: queue full", registry=r)
        self.duplicates = Counter("drift_events_duplicate", "Redelivered logger events (processed once)",
                                  registry=r)
        self.invalid = Counter(
            "drift_events_invalid", "Logger events rejected with 400 (malformed)", registry=r)
        self.bad_images = Counter(
            "drift_images_invalid", "Logged images that failed to decode", registry=r)
        self.backlog = Gauge("drift_backlog", "Logger events queued, not yet processed", registry=r)
        # What changed (drift_detector.profile): image properties of recent photos vs the training photos
        self.property_shift = Gauge(
            "drift_property_shift", "Kolmogorov-Smirnov statistic of an image property (recent photos vs "
            "the training reference; 0 = same distribution, 1 = disjoint)", ["property"], registry=r)
        self.property_shift_sd = Gauge(
            "drift_property_shift_sd", "Mean of an image property over recent photos minus the training "
            "mean, in training standard deviations (the sign says which way)", ["property"], registry=r)
        self.class_shift_sd = Gauge(
            "drift_class_shift_sd", "Largest standardised property shift of the recent photos predicted as "
            "a class against that class's training photos", ["class_name"], registry=r)
        for kind in ("request", "response"):  # present from the first scrape
            self.received.labels(kind)
            self.processed.labels(kind)
        self.label_stat.set(float("nan"))
        self.test_stat.set(float("nan"))

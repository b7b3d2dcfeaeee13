"""Prediction metrics (contract 2): dashboards and alert rules query these names.

They live in prometheus_client's default REGISTRY, which kserve serves on ``/metrics``
next to its own ``request_{preprocess,predict,postprocess}_seconds`` histograms.
Recording never fails a prediction: errors are logged and swallowed.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Iterable, Mapping

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from gourmetgram.estimation import RollingEstimate

logger = logging.getLogger(__name__)

CONFIDENCE_BUCKETS = tuple(round(i / 10, 1) for i in range(11))  # 0.0, 0.1, ..., 1.0
# Energy scores (-logsumexp of the logits): about -log(classes) for a net that has no idea,
# far below for a confident one; the bundle's threshold sits in between.
OOD_SCORE_BUCKETS = (-40.0, -30.0, -25.0, -20.0, -17.5, -15.0, -12.5, -10.0, -9.0, -8.0, -7.0, -6.0,
                     -5.0, -4.0, -3.0, -2.0, -1.0, 0.0)
DEFAULT_REVISION = "local"

PREDICTION_CONFIDENCE = Histogram(
    "prediction_confidence",
    "Softmax confidence of the top-1 class per served image",
    ["model_name", "revision"],
    buckets=CONFIDENCE_BUCKETS,
)
# prometheus_client appends _total: exposed as predicted_class_total.
PREDICTED_CLASS = Counter(
    "predicted_class",
    "Served images per predicted (top-1) class",
    ["model_name", "revision", "class_name"],
)
OOD_SCORE = Histogram(
    "gourmetgram_ood_score",
    "Energy score (-logsumexp of the logits) per served image; higher = less like the training data",
    ["model_name", "revision"],
    buckets=OOD_SCORE_BUCKETS,
)
OUT_OF_DISTRIBUTION = Counter(
    "gourmetgram_out_of_distribution",
    "Served images whose energy score is above the bundle's OOD threshold (in_distribution false)",
    ["model_name", "revision"],
)


def resolve_revision(flag: str | None = None) -> str:
    """Knative sets K_REVISION in every pod; locally the flag or 'local'."""
    return os.environ.get("K_REVISION") or flag or DEFAULT_REVISION


def record_predictions(
    model_name: str, revision: str, predictions: Iterable[Mapping[str, object]]
) -> None:
    """Count each prediction's top-1 class, observe its confidence and OOD score; never raises."""
    try:
        hist = PREDICTION_CONFIDENCE.labels(model_name=model_name, revision=revision)
        ood = OOD_SCORE.labels(model_name=model_name, revision=revision)
        for pred in predictions:
            hist.observe(float(pred["confidence"]))  # type: ignore[arg-type]  # a number, or the except below
            PREDICTED_CLASS.labels(
                model_name=model_name, revision=revision, class_name=str(pred["label"])
            ).inc()
            if "ood_score" in pred:
                ood.observe(float(pred["ood_score"]))  # type: ignore[arg-type]
                if pred.get("in_distribution") is False:
                    OUT_OF_DISTRIBUTION.labels(model_name=model_name, revision=revision).inc()
    except Exception:  # noqa: BLE001 - metrics must not break serving
        logger.exception("recording prediction metrics failed; the prediction is still served")


class EstimateCollector:
    """``gourmetgram_estimated_accuracy{model_name,revision,model_version,stage,method}`` and its
    interval and window size, computed at scrape time from each served model's rolling window
    (:class:`gourmetgram.estimation.RollingEstimate`). A failing estimate is logged, never raised."""

    def __init__(self) -> None:
        self._estimates: dict[tuple[str, str], tuple[str, str, RollingEstimate]] = {}
        self._lock = threading.Lock()

    def track(self, model_name: str, revision: str, model_version: str, stage: str,
              estimate: RollingEstimate) -> None:
        with self._lock:
            self._estimates[(model_name, revision)] = (model_version, stage, estimate)

    def collect(self):
        labels = ["model_name", "revision", "model_version", "stage", "method"]
        value = GaugeMetricFamily("gourmetgram_estimated_accuracy", "Accuracy estimated without labels over "
                                  "the revision's recent predictions (ATC, ATC on the energy score, mean "
                                  "calibrated confidence)", labels=labels)
        lower = GaugeMetricFamily("gourmetgram_estimated_accuracy_lower", "Lower end of the 95% interval of "
                                  "gourmetgram_estimated_accuracy (sampling error only)", labels=labels)
        upper = GaugeMetricFamily("gourmetgram_estimated_accuracy_upper", "Upper end of the 95% interval of "
                                  "gourmetgram_estimated_accuracy (sampling error only)", labels=labels)
        samples = GaugeMetricFamily("gourmetgram_estimated_accuracy_samples", "Predictions in the window behind "
                                    "gourmetgram_estimated_accuracy", labels=labels)
        with self._lock:
            tracked = list(self._estimates.items())
        for (model_name, revision), (model_version, stage, rolling) in tracked:
            try:
                for method, e in rolling.estimates().items():
                    key = [model_name, revision, model_version, stage, method]
                    value.add_metric(key, e.value)
                    lower.add_metric(key, e.lower)
                    upper.add_metric(key, e.upper)
                    samples.add_metric(key, e.n)
            except Exception:  # noqa: BLE001 - a scrape must not fail because of one estimate
                logger.exception("estimating accuracy for %s/%s failed", model_name, revision)
        yield from (value, lower, upper, samples)


ESTIMATES = EstimateCollector()
REGISTRY.register(ESTIMATES)

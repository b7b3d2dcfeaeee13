"""The canary analysis's figures: ONE set of PromQL queries, and what they give per revision.

Used against the local Prometheus and the cluster's alike: queue-proxy's request histogram
(Knative 1.21 ``kn_serving_invocation_duration_seconds``, names in gourmetgram/metric_names.py;
the local gateway exposes the same) gives requests, 5xx and p95 latency per ``kn_revision_name``;
the transformer's ``prediction_confidence`` and ``predicted_class_total`` (labelled with the same
revision name: Knative's ``K_REVISION``) give the confidence sum and count and the predicted-class
counts.

The comparative checks are sequential tests, so they read counts **accumulated since the canary
started** (``since``: ``increase()`` over the canary's whole life, which also sums the counters of
pods that came and went and survives counter resets), not a sliding window; only the p95 latency
(an SLO-style check) reads the recent ``window``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from gourmetgram import metric_names as qp
from gourmetgram.rollout.config import check_window
from gourmetgram.rollout.prometheus import PrometheusClient
from gourmetgram.rollout.state import RolloutState


@dataclasses.dataclass(frozen=True)
class FeedbackFigures:
    """What users said about one revision's answers (the loop store), over the canary's period."""

    served: int = 0  # captured predictions
    answers: int = 0  # of those, with user feedback
    correct: int = 0  # of those, marked correct

    @property
    def wrong(self) -> int:
        return self.answers - self.correct

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.answers if self.answers else None

    @property
    def wrong_rate(self) -> float | None:
        return self.wrong / self.served if self.served else None


# The loop store's figures per revision name, for the current rollout state.
FeedbackSource = Callable[[RolloutState], "dict[str, FeedbackFigures]"]


@dataclasses.dataclass
class Figures:
    """One revision's figures since the canary started (p95: over the recent window)."""

    revision: str
    requests: float = 0.0
    errors: float = 0.0
    p95_ms: float | None = None
    confidence: float | None = None  # mean top-1 confidence
    classes: dict[str, float] = dataclasses.field(default_factory=dict)
    feedback: FeedbackFigures | None = None  # None: feedback not consulted
    predictions: float | None = None  # confidences observed; None: the requests that did not fail

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests > 0 else 0.0

    @property
    def confidence_count(self) -> float:
        return self.predictions if self.predictions is not None else max(0.0, self.requests - self.errors)

    def class_shares(self) -> dict[str, float]:
        total = sum(self.classes.values())
        return {k: v / total for k, v in self.classes.items()} if total > 0 else {}


def _selector(**labels: str) -> str:
    parts = []
    for key, value in labels.items():
        op = "=~" if key.endswith("~") else "="
        parts.append(f'{key.rstrip("~")}{op}"{value}"')
    return "{" + ",".join(parts) + "}"


def since_range(seconds: float) -> str:
    """A PromQL range covering the last ``seconds`` (whole seconds, at least 1)."""
    return f"{max(1, math.ceil(seconds))}s"


def queries(state: RolloutState, window: str, since: str | None = None) -> dict[str, str]:
    """The PromQL for the analysis: one definition for the local stack and the cluster.

    ``since``: the range back to the canary's start (default ``window``, when it is unknown)."""
    check_window(window)
    since = check_window(since) if since else window
    revs = "|".join(r for r in (state.stable, state.canary) if r)
    serving = _selector(**{qp.NAMESPACE: state.namespace, qp.CONFIGURATION: state.configuration,
                           f"{qp.REVISION}~": revs})
    model = _selector(model_name=state.model_name, **{"revision~": revs})
    errors = serving[:-1] + f",{qp.SERVER_ERROR}}}"
    by_rev = f"sum by ({qp.REVISION})"
    return {
        "requests": f"{by_rev} (increase({qp.REQUEST_COUNT}{serving}[{since}]))",
        "errors": f"{by_rev} (increase({qp.REQUEST_COUNT}{errors}[{since}]))",
        # queue-proxy measures seconds; the thresholds and the report are in milliseconds
        "p95_ms": (f"1000 * histogram_quantile(0.95, sum by ({qp.REVISION}, le) "
                   f"(rate({qp.REQUEST_DURATION_BUCKET}{serving}[{window}])))"),
        "confidence_sum": f"sum by (revision) (increase(prediction_confidence_sum{model}[{since}]))",
        "confidence_count": f"sum by (revision) (increase(prediction_confidence_count{model}[{since}]))",
        "classes": f"sum by (revision, class_name) (increase(predicted_class_total{model}[{since}]))",
    }


def collect(client: PrometheusClient, state: RolloutState, window: str,
            since: str | None = None) -> dict[str, Figures]:
    """Run every query and file the results per revision."""
    figures = {r: Figures(r) for r in (state.stable, state.canary) if r}
    q = queries(state, window, since)

    def per_revision(name: str, label: str = "revision") -> dict[str, float]:
        return {s.labels[label]: s.value for s in client.query(q[name])
                if s.labels.get(label) in figures and math.isfinite(s.value)}

    for rev, value in per_revision("requests", qp.REVISION).items():
        figures[rev].requests = value
    for rev, value in per_revision("errors", qp.REVISION).items():
        figures[rev].errors = value
    for rev, value in per_revision("p95_ms", qp.REVISION).items():
        figures[rev].p95_ms = value
    sums = per_revision("confidence_sum")
    for rev, count in per_revision("confidence_count").items():
        if count > 0 and rev in sums:
            figures[rev].predictions = count
            figures[rev].confidence = min(1.0, max(0.0, sums[rev] / count))
    for s in client.query(q["classes"]):
        name = s.labels.get("revision")
        if name in figures and s.value > 0:
            figures[name].classes[s.labels.get("class_name", "?")] = s.value
    return figures

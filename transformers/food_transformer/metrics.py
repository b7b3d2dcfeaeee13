"""Prediction metrics (contract 2): dashboards and alert rules query these names.

They live in prometheus_client's default REGISTRY, which kserve serves on ``/metrics``
next to its own ``request_{preprocess,predict,postprocess}_seconds`` histograms.
Recording never fails a prediction: errors are logged and swallowed.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Mapping

from prometheus_client import Counter, Histogram

logger = logging.getLogger(__name__)

CONFIDENCE_BUCKETS = tuple(round(i / 10, 1) for i in range(11))  # 0.0, 0.1, ..., 1.0
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


def resolve_revision(flag: str | None = None) -> str:
    """Knative sets K_REVISION in every pod; locally the flag or 'local'."""
    return os.environ.get("K_REVISION") or flag or DEFAULT_REVISION


def record_predictions(
    model_name: str, revision: str, predictions: Iterable[Mapping[str, object]]
) -> None:
    """Count each prediction's top-1 class and observe its confidence; never raises."""
    try:
        hist = PREDICTION_CONFIDENCE.labels(model_name=model_name, revision=revision)
        for pred in predictions:
            hist.observe(float(pred["confidence"]))  # type: ignore[arg-type]  # a number, or the except below
            PREDICTED_CLASS.labels(
                model_name=model_name, revision=revision, class_name=str(pred["label"])
            ).inc()
    except Exception:  # noqa: BLE001 - metrics must not break serving
        logger.exception("recording prediction metrics failed; the prediction is still served")

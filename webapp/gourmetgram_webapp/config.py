"""The web app's settings: where the public API is, and where the operator page looks.

The user page needs only the public prediction/feedback API (the gateway locally, the
ingress on the cluster) and the class names (for "pick the right class"). The operator
page reads, per stage, what is served (the local gateway's rollout status, or the
InferenceService through the Kubernetes API), the drift detector's ``/status``, the
MLflow registry and, when configured, the feedback store's summary (and the captured photos'
thumbnails beside it), Prometheus (the label-free accuracy estimates) and the retrain receiver's runs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from gourmetgram import constants
from gourmetgram.classes import FOOD11_CLASSES
from gourmetgram.errors import BadInput
from gourmetgram.preprocessing import MAX_IMAGE_BYTES

SERVED_KINDS = ("local", "kube")


@dataclasses.dataclass(frozen=True)
class StageSource:
    """Where the operator page reads one stage from.

    ``served``: ``local:<gateway URL>`` (the local gateway's ``/_gourmetgram/rollout``) or
    ``kube:<namespace>/<inferenceservice>`` (the cluster's API, read only).
    ``detector``: the drift detector's base URL (``/status``, ``/metrics``), or "".
    """

    stage: str
    served: str = ""
    detector: str = ""

    @property
    def served_kind(self) -> str:
        return self.served.partition(":")[0]

    @property
    def served_target(self) -> str:
        return self.served.partition(":")[2]

    @classmethod
    def parse(cls, text: str) -> "StageSource":
        """``STAGE:served=local:http://...,detector=http://...`` (the ``--stage`` flag)."""
        stage, sep, rest = text.partition(":")
        stage = stage.strip()
        if not sep or stage not in constants.STAGES:
            raise BadInput(f"--stage {text!r}: expected STAGE:served=...,detector=... with STAGE one of "
                            f"{', '.join(constants.STAGES)}")
        fields: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq or key not in ("served", "detector"):
                raise BadInput(f"--stage {text!r}: {part!r} is not served=... or detector=...")
            fields[key] = value.strip()
        source = cls(stage, fields.get("served", ""), fields.get("detector", "").rstrip("/"))
        if source.served and (source.served_kind not in SERVED_KINDS or not source.served_target):
            raise BadInput(f"--stage {text!r}: served must be local:<gateway URL> or kube:<namespace>/<name>")
        if source.served_kind == "kube" and "/" not in source.served_target:
            raise BadInput(f"--stage {text!r}: kube:<namespace>/<name>, e.g. kube:gourmetgram-production/food11")
        return source


@dataclasses.dataclass(frozen=True)
class WebConfig:
    api_url: str
    model_name: str = constants.MODEL_NAME
    class_names: tuple[str, ...] = FOOD11_CLASSES
    stages: tuple[StageSource, ...] = ()
    # The loop's feedback summary (production accuracy by version, labelling backlog);
    # "" until a store is configured: the operator page then says "not available".
    feedback_summary_url: str = ""
    # Prometheus (the label-free accuracy estimates the transformers export); "": not shown.
    prometheus_url: str = ""
    # The retrain receiver (its GET /runs: the last runs, their trigger, steps and outcome);
    # "" = not configured: the operator page says so.
    retrain_url: str = ""
    registry: bool = True
    max_upload_bytes: int = MAX_IMAGE_BYTES
    api_timeout_s: float = 30.0
    status_timeout_s: float = 3.0


def capture_base_url(summary_url: str) -> str:
    """The capture sink's base URL, from its summary URL (thumbnails live beside it); "" if
    the summary URL is not the sink's."""
    return summary_url[:-len(constants.LOOP_SUMMARY_PATH)] if summary_url.endswith(constants.LOOP_SUMMARY_PATH) \
        else ""


def read_class_names(model_spec: str | None, classes: str | None) -> tuple[str, ...]:
    """Class names from a bundle's ``model_spec.json``, a comma list, or Food-11's."""
    if classes:
        names = tuple(n.strip() for n in classes.split(",") if n.strip())
        if len(names) < 2:
            raise BadInput("--classes needs at least two comma-separated names")
        return names
    if model_spec:
        path = Path(model_spec)
        try:
            names = tuple(json.loads(path.read_text())["class_names"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BadInput(f"cannot read class names from {path}: {exc}") from None
        return names
    return FOOD11_CLASSES

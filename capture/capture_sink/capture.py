"""Turn logger events into stored samples: object first, then the committed row.

A request event carries the image(s), a response event the prediction(s); they share the
``ce-id`` (the inference id) and may arrive in either order, or twice. Both halves upsert
the same row (:meth:`gourmetgram.loop.store.Store.upsert_sample`), so the order does not
matter and a redelivery changes nothing. The event is acknowledged (2xx) only after the
transaction commits: an acknowledged capture survives a kill -9 of this process.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Sequence

from gourmetgram import constants
from gourmetgram.inference_events import InferenceEvent, sample_id
from gourmetgram.loop.settings import LoopSettings
from gourmetgram.loop.store import Store
from gourmetgram.objectstore import ObjectStore, sniff_type

STAGE_OF_ISVC = {name: stage for stage, name in constants.ISVC_NAMES.items()}
VERSION_ANNOTATION = constants.MODEL_VERSION_ANNOTATION
STAGE_ANNOTATION = "gourmetgram.io/stage"


def sampled(inference_id: str, rate: float) -> bool:
    """A deterministic draw from the id, so the request and the response of one inference agree."""
    if rate >= 1:
        return True
    if rate <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(inference_id.encode()).digest()[:8], "big")
    return h / 2**64 < rate


def _annotations(ext: dict[str, str]) -> dict[str, Any]:
    try:
        value = json.loads(ext.get("annotations") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def stage_of(ext: dict[str, str]) -> str | None:
    """canary for the canary endpoint, else the stage of the InferenceService (or its annotation)."""
    if ext.get("endpoint") == "canary":
        return constants.CANARY
    return STAGE_OF_ISVC.get(ext.get("inferenceservicename", "")) or _annotations(ext).get(STAGE_ANNOTATION)


def _ood_fields(pred: dict[str, Any]) -> dict[str, Any]:
    """The answer's ``ood_score`` and ``in_distribution`` when they are well-formed (an older
    transformer's answer has neither: both stay unknown)."""
    score, inside = pred.get("ood_score"), pred.get("in_distribution")
    return {"ood_score": float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None,
            "in_distribution": inside if isinstance(inside, bool) else None}


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class Capture:
    """Store the samples of one event; returns what happened (for the log line and metrics)."""

    def __init__(self, store: Store, objects: ObjectStore, settings: LoopSettings,
                 class_names: Sequence[str] = ()) -> None:
        self.store, self.objects, self.settings = store, objects, settings
        self.class_names = list(class_names)

    @staticmethod
    def meta(event: InferenceEvent) -> dict[str, Any]:
        ext = event.extensions
        return {
            "inference_id": event.id, "model_name": constants.MODEL_NAME,
            "model_version": ext.get("modelversion") or _annotations(ext).get(VERSION_ANNOTATION),
            "revision": ext.get("revision") or None, "stage": stage_of(ext),
            "inferenceservice": ext.get("inferenceservicename"), "namespace": ext.get("namespace"),
            "endpoint": ext.get("endpoint"),
        }

    def handle(self, event: InferenceEvent) -> dict[str, Any]:
        meta = self.meta(event)
        if (meta["endpoint"] == "shadow" or event.extensions.get("shadow") == "true"
                or meta["inferenceservice"] == constants.SHADOW_ISVC_NAME):
            # A shadow's answer shares the production sample's id but never reached a user: it
            # must not fill that sample's prediction (the shadow's own table keeps it).
            return self.handle_shadow(event, meta)
        if not sampled(event.id, self.settings.sampling_rate(meta["stage"])):
            return {"outcome": "sampled_out", "stage": meta["stage"]}
        changed = 0
        if event.is_request:
            if not event.images:
                return {"outcome": "unsupported", "reason": "no encoded images (preprocessed tensors)"}
            for k, blob in enumerate(event.images):
                ctype = event.content_types[k] if k < len(event.content_types) else sniff_type(blob)
                key, sha = self.objects.put_image(blob, ctype)  # the object exists before the row says so
                changed += self.store.upsert_sample(
                    sample_id(event.id, k), instance=k, object_key=key, content_sha256=sha,
                    content_type=ctype, size_bytes=len(blob), requested_at=_time(event.time), **meta)
            n = len(event.images)
        else:
            preds = event.predictions or [{"class_index": c} for c in event.classes]
            for k, pred in enumerate(preds):
                index = pred.get("class_index")
                label = pred.get("label")
                if label is None and isinstance(index, int) and 0 <= index < len(self.class_names):
                    label = self.class_names[index]
                confidence = pred.get("confidence")
                changed += self.store.upsert_sample(
                    sample_id(event.id, k), instance=k, label=label, class_index=index,
                    confidence=None if confidence is None else float(confidence),
                    top_k=pred.get("top_k"), predicted_at=_time(event.time), **_ood_fields(pred), **meta)
            n = len(preds)
        return {"outcome": "stored" if changed else "duplicate", "samples": n, "stage": meta["stage"],
                "kind": "request" if event.is_request else "response"}

    def handle_shadow(self, event: InferenceEvent, meta: dict[str, Any]) -> dict[str, Any]:
        """A shadow revision's answer: kept in its own table, keyed by the mirrored sample.
        Never sampled out on its own: it is kept whenever it arrives (the comparison joins
        it with whatever production sample was kept)."""
        if event.is_request:  # the image is the production request's, already captured once
            return {"outcome": "unsupported", "reason": "shadow request events carry nothing new"}
        revision = meta["revision"] or meta["inferenceservice"] or "shadow"
        changed = 0
        preds = event.predictions or [{"class_index": c} for c in event.classes]
        for k, pred in enumerate(preds):
            index, label, confidence = pred.get("class_index"), pred.get("label"), pred.get("confidence")
            if label is None and isinstance(index, int) and 0 <= index < len(self.class_names):
                label = self.class_names[index]
            changed += self.store.add_shadow_prediction(
                sample_id(event.id, k), revision, inference_id=event.id, instance=k, label=label,
                class_index=index, confidence=None if confidence is None else float(confidence),
                top_k=pred.get("top_k"), model_version=meta["model_version"],
                predicted_at=_time(event.time))
        return {"outcome": "stored" if changed else "duplicate", "samples": len(preds),
                "stage": "shadow", "kind": "shadow-response"}

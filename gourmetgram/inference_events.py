"""Decode the KServe inference logger's CloudEvents (1.0, binary mode).

Shared by the two consumers of the logger's events: the drift detector and the capture
sink (which also keeps the full v1 predictions and the event time).

The logger (KServe agent sidecar, or the local gateway) POSTs each request and each
200 response to the sink URL: headers ``ce-specversion``, ``ce-id``, ``ce-type``
(``org.kubeflow.serving.inference.request|response``), ``ce-source`` and the extensions
``ce-inferenceservicename``, ``ce-namespace``, ``ce-component``, ``ce-endpoint``; the body
is the raw payload with the original Content-Type. Anything else is a
:class:`BadEvent` (HTTP 400), never a crash.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from gourmetgram.errors import BadInput

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
EVENT_TYPES = (REQUEST_TYPE, RESPONSE_TYPE)
EXTENSIONS = ("inferenceservicename", "namespace", "component", "endpoint")
# Optional extensions: KServe's ``annotations`` (JSON of the InferenceService annotations named in
# ``logger.metadataAnnotations``) and two the local gateway adds (KServe's agent does not): the
# revision that served and the registered model version it serves.
LOCAL_EXTENSIONS = ("annotations", "revision", "modelversion", "shadow")
MAX_INSTANCES = 1024


class BadEvent(BadInput):
    """A logger event this detector cannot use; the message says why."""


@dataclass
class InferenceEvent:
    """One decoded logger event: images (requests) or predicted classes (responses)."""

    id: str
    type: str
    source: str
    extensions: dict[str, str] = field(default_factory=dict)
    images: list[bytes] = field(default_factory=list)  # encoded JPEG/PNG
    tensors: np.ndarray | None = None  # already-preprocessed (N, 3, H, W), e.g. predictor logs
    classes: list[int] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)  # v1 responses: label, confidence, top_k
    time: str | None = None  # ce-time
    content_types: list[str] = field(default_factory=list)  # per image, when the body was an image

    @property
    def is_request(self) -> bool:
        return self.type == REQUEST_TYPE

    @property
    def size(self) -> int:
        return len(self.images) + (0 if self.tensors is None else len(self.tensors))


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise BadEvent(f"{where} must be a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadEvent(f"{where} is not valid base64: {exc}") from exc


def _v1_image(instance: Any, where: str) -> bytes:
    """``{"image": {"b64": ...}}`` (the project's API), ``{"image": "..."}`` or ``{"b64": ...}``."""
    if isinstance(instance, dict) and "image" in instance:
        instance = instance["image"]
    if isinstance(instance, dict) and "b64" in instance:
        return _b64(instance["b64"], f"{where}.b64")
    if isinstance(instance, str):
        return _b64(instance, where)
    raise BadEvent(f'{where} must be {{"image": {{"b64": "<base64 image>"}}}}')


def _request_payload(body: Any, event: InferenceEvent) -> None:
    if isinstance(body, dict) and "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadEvent('"instances" must be a non-empty list')
        _check_count(len(instances))
        event.images = [_v1_image(x, f"instances[{i}]") for i, x in enumerate(instances)]
        return
    if isinstance(body, dict) and "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
            raise BadEvent('"inputs" must be a non-empty list of tensors')
        tensor = inputs[0]
        data = tensor.get("data")
        if not isinstance(data, list) or not data:
            raise BadEvent('inputs[0].data must be a non-empty list')
        datatype = str(tensor.get("datatype", "")).upper()
        if datatype == "BYTES":
            flat = _flatten(data)
            _check_count(len(flat))
            event.images = [_b64(x, f"inputs[0].data[{i}]") for i, x in enumerate(flat)]
            return
        if datatype in ("FP32", "FP16", "FP64"):
            shape = tensor.get("shape")
            if not isinstance(shape, list):
                raise BadEvent(f"inputs[0] has no shape list: {shape!r}")
            try:
                array = np.asarray(_flatten(data), dtype=np.float32).reshape(shape)
            except (TypeError, ValueError) as exc:
                raise BadEvent(f"inputs[0] data does not match shape {shape}: {exc}") from exc
            if array.ndim != 4 or array.shape[1] != 3:
                raise BadEvent(f"inputs[0] must be images (N, 3, H, W), got shape {list(array.shape)}")
            _check_count(len(array))
            event.tensors = array
            return
        raise BadEvent(f"inputs[0].datatype {datatype or '<missing>'} is not BYTES (images) or FP32")
    raise BadEvent('request payload must hold "instances" (KServe v1) or "inputs" (v2)')


def _flatten(data: Sequence) -> list:
    out: list = []
    for item in data:
        out.extend(_flatten(item) if isinstance(item, list) else [item])
    return out


def _check_count(n: int) -> None:
    if n > MAX_INSTANCES:
        raise BadEvent(f"event holds {n} instances; the limit is {MAX_INSTANCES}")


def _class_of(prediction: Any, class_names: Sequence[str], where: str) -> int:
    if isinstance(prediction, dict):
        for key in ("class_index", "class_id", "index"):
            if isinstance(prediction.get(key), int):
                return prediction[key]
        if isinstance(prediction.get("label"), str) and prediction["label"] in class_names:
            return list(class_names).index(prediction["label"])
    elif isinstance(prediction, bool):
        pass
    elif isinstance(prediction, int):
        return prediction
    elif isinstance(prediction, list) and prediction and all(isinstance(v, (int, float)) for v in prediction):
        return int(np.argmax(prediction))  # scores or probabilities
    raise BadEvent(f"{where} has no class_index, known label or score vector")


def _response_payload(body: Any, event: InferenceEvent, class_names: Sequence[str]) -> None:
    if isinstance(body, dict) and "predictions" in body:
        preds = body["predictions"]
        if not isinstance(preds, list):
            raise BadEvent('"predictions" must be a list')
        _check_count(len(preds))
        event.classes = [_class_of(p, class_names, f"predictions[{i}]") for i, p in enumerate(preds)]
        event.predictions = [p if isinstance(p, dict) else {"class_index": c}
                             for p, c in zip(preds, event.classes)]
        return
    if isinstance(body, dict) and "outputs" in body:
        outputs = body["outputs"]
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise BadEvent('"outputs" must be a list of tensors')
        by_name = {str(o.get("name", "")).lower(): o for o in outputs}
        for name in ("class_index", "class_indices", "class_id", "predicted_class"):
            if name in by_name:
                event.classes = [int(v) for v in _flatten(by_name[name].get("data") or [])]
                event.predictions = _v2_predictions(by_name, event.classes)
                return
        for name in ("label", "labels", "class_name"):
            if name in by_name:
                names = list(class_names)
                labels = _flatten(by_name[name].get("data") or [])
                event.classes = [names.index(x) for x in labels if x in names]
                return
        for tensor in outputs:  # logits / probabilities (N, C): argmax
            shape = tensor.get("shape") or []
            if str(tensor.get("datatype", "")).upper().startswith("FP") and len(shape) == 2:
                try:
                    scores = np.asarray(_flatten(tensor.get("data") or []), np.float32).reshape(shape)
                except (TypeError, ValueError) as exc:
                    raise BadEvent(f"output {tensor.get('name')} does not match its shape: {exc}") from exc
                event.classes = scores.argmax(axis=1).tolist()
                return
        raise BadEvent("v2 response has no class_index, label or (N, C) score output")
    raise BadEvent('response payload must hold "predictions" (KServe v1) or "outputs" (v2)')


# The transformer's per-image v2 outputs that a v1 prediction carries under the same name.
V2_PREDICTION_FIELDS = ("label", "confidence", "ood_score", "in_distribution")


def _v2_predictions(by_name: dict[str, dict], classes: list[int]) -> list[dict]:
    """One v1-style prediction per image from the v2 outputs that have one value per image."""
    predictions: list[dict] = [{"class_index": c} for c in classes]
    for name in V2_PREDICTION_FIELDS:
        values = _flatten(by_name[name].get("data") or []) if name in by_name else []
        if len(values) == len(classes):
            for prediction, value in zip(predictions, values):
                prediction[name] = value
    return predictions


def sample_id(inference_id: str, instance: int) -> str:
    """A served image's id: the inference id for a request's first image, ``<id>/<k>`` for the
    k-th (the capture sink keys samples by it; the drift detector names photos by it)."""
    return inference_id if instance == 0 else f"{inference_id}/{instance}"


def _sniff_image(head: bytes) -> str:
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    raise BadEvent("request event body (application/octet-stream) is not a JPEG or PNG image")


def decode_event(headers: Mapping[str, str], body: bytes,
                 class_names: Sequence[str] = ()) -> InferenceEvent:
    """Binary-mode CloudEvent (headers + raw body) -> :class:`InferenceEvent`."""
    from cloudevents.exceptions import GenericException
    from cloudevents.http import from_http

    headers = {k.lower(): v for k, v in headers.items()}
    if "ce-specversion" not in headers:
        raise BadEvent("not a binary-mode CloudEvent: the ce-specversion header is missing")
    try:
        ce = from_http(headers, body, data_unmarshaller=lambda b: b)
    except GenericException as exc:
        raise BadEvent(f"invalid CloudEvent: {exc}") from exc
    attrs = ce.get_attributes()
    if attrs.get("specversion") != "1.0":
        raise BadEvent(f"CloudEvents specversion {attrs.get('specversion')} is not supported; send 1.0")
    if attrs["type"] not in EVENT_TYPES:
        raise BadEvent(f"ce-type {attrs['type']!r} is not one of {', '.join(EVENT_TYPES)}")
    event = InferenceEvent(
        id=str(attrs["id"]), type=attrs["type"], source=str(attrs["source"]),
        extensions={k: str(attrs[k]) for k in EXTENSIONS + LOCAL_EXTENSIONS if k in attrs},
        time=None if attrs.get("time") is None else str(attrs["time"]),
    )
    content_type = (headers.get("content-type") or "application/json").split(";")[0].strip().lower()
    if event.is_request and (content_type.startswith("image/") or content_type == "application/octet-stream"):
        # A raw image posted as the body (the transformer's application/octet-stream path).
        if not body:
            raise BadEvent("request event has an empty image body")
        if content_type == "application/octet-stream":
            content_type = _sniff_image(bytes(body[:8]))
        event.images = [bytes(body)]
        event.content_types = [content_type]
        return event
    if content_type not in ("application/json", "text/json") and not content_type.endswith("+json"):
        raise BadEvent(f"payload Content-Type {content_type} is not JSON (or an image for requests)")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadEvent(f"payload is not valid JSON: {exc}") from exc
    if event.is_request:
        _request_payload(payload, event)
    else:
        _response_payload(payload, event, class_names)
    return event

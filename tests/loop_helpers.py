"""Helpers shared by the closing-the-loop tests (not a test module)."""

from __future__ import annotations

import base64
import io
import json
import uuid

from PIL import Image

from gourmetgram.inference_events import REQUEST_TYPE, RESPONSE_TYPE

CLASSES = ["zero", "one", "two", "three"]


def image(seed: int, size: int = 32) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (seed * 37 % 256, seed * 91 % 256, seed * 13 % 256)).save(out, "PNG")
    return out.getvalue()


def ce_headers(ce_id: str, kind: str, isvc: str = "food11", endpoint: str = "default",
               version: str | None = "3", revision: str = "food11-transformer-00001") -> dict[str, str]:
    h = {"ce-specversion": "1.0", "ce-id": ce_id, "ce-source": "http://localhost:9081/",
         "ce-type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
         "ce-time": "2026-12-01T10:00:00Z", "ce-inferenceservicename": isvc, "ce-namespace": "default",
         "ce-component": "transformer", "ce-endpoint": endpoint, "ce-revision": revision,
         "content-type": "application/json"}
    if version:
        h["ce-modelversion"] = version
    return h


def request_body(blob: bytes) -> bytes:
    return json.dumps({"instances": [{"image": {"b64": base64.b64encode(blob).decode()}}]}).encode()


def response_body(label: str, confidence: float) -> bytes:
    index = CLASSES.index(label)
    top = [{"label": label, "class_index": index, "confidence": confidence}]
    return json.dumps({"predictions": [{**top[0], "top_k": top}]}).encode()


def new_id() -> str:
    return str(uuid.uuid4())

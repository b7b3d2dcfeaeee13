"""Request parsing and validation: every bad request becomes a 400 a client can act on.

Everything here runs before any image is decoded or the predictor is called. Failures
raise :class:`kserve.errors.InvalidInput`, which kserve's REST server maps to HTTP 400
(``invalid_input_handler``) and its gRPC server to INVALID_ARGUMENT.

Accepted shapes (KServe v1):
    {"instances": [{"image": {"b64": "<base64>"}}, ...]}
    {"instances": [{"image_bytes": {"b64": "<base64>"}}, ...]}
    {"instances": [{"image": "<base64>"}, ...]} or {"instances": ["<base64>", ...]}
KServe v2: one BYTES input (any name), shape [N] (or [N, 1]), each element base64 text or,
over gRPC or in the v2 binary tensor extension, the raw JPEG/PNG bytes.
Raw: one image per request, the file's bytes as the body, with ``Content-Type:
application/octet-stream`` (or ``image/jpeg``, ``image/png``): no base64, no JSON.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any, Iterable, Mapping

import orjson
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest

from gourmetgram.preprocessing import MAX_IMAGE_BYTES

# base64 grows data by 4/3; a little slack for padding and line breaks.
MAX_B64_CHARS = 4 * math.ceil(MAX_IMAGE_BYTES / 3) + 1024
DEFAULT_MAX_BATCH = 64
IMAGE_KEYS = ("image", "image_bytes")
EXAMPLE = '{"instances": [{"image": {"b64": "<base64 JPEG or PNG>"}}]}'
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
# What food_transformer.server.RawImageBody relabels application/octet-stream to on :predict.
RAW_IMAGE_TYPE = "application/vnd.gourmetgram.image"
RAW_CONTENT_TYPES = ("application/octet-stream", "image/jpeg", "image/png", RAW_IMAGE_TYPE)


def is_raw_image_request(headers: Mapping[str, str] | None) -> bool:
    """Whether the body is the image itself (Content-Type octet-stream, image/jpeg or image/png)."""
    if not headers:
        return False
    value = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    return value.split(";")[0].strip().lower() in RAW_CONTENT_TYPES


def parse_raw_body(body: bytes | bytearray) -> list[bytes]:
    """A raw-image request body -> [image bytes]; anything but JPEG/PNG bytes is a 400."""
    if not body:
        raise InvalidInput("request body is empty; send the JPEG or PNG file's bytes")
    if not bytes(body[:8]).startswith(_IMAGE_MAGIC):
        raise InvalidInput(
            "request body (Content-Type application/octet-stream) is not a JPEG or PNG image; "
            f"send the image file's bytes, or JSON ({EXAMPLE}) with Content-Type application/json"
        )
    return [bytes(body)]


def parse_v1_body(payload: Any, max_batch: int = DEFAULT_MAX_BATCH) -> list[bytes]:
    """A v1 request body (dict, or raw bytes when the Content-Type was not JSON) -> image bytes."""
    if isinstance(payload, (bytes, bytearray)):
        payload = _json_from_bytes(bytes(payload))
    if not isinstance(payload, dict):
        raise InvalidInput(f"request body must be a JSON object like {EXAMPLE}")
    if "instances" not in payload:
        keys = ", ".join(sorted(map(str, payload))) or "none"
        raise InvalidInput(
            f'request body has no "instances" field (found: {keys}); send {EXAMPLE}'
        )
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f'"instances" must be a list; send {EXAMPLE}')
    check_batch_size(len(instances), max_batch, "instances")
    return [instance_image_bytes(inst, i) for i, inst in enumerate(instances)]


def instance_image_bytes(instance: Any, index: int) -> bytes:
    """One v1 instance -> the image bytes it carries."""
    where = f"instances[{index}]"
    if isinstance(instance, str):
        return decode_b64(instance, where)
    if not isinstance(instance, dict):
        raise InvalidInput(
            f'{where} must be an object like {{"image": {{"b64": "..."}}}}, '
            f"got {type(instance).__name__}"
        )
    key = next((k for k in IMAGE_KEYS if k in instance), None)
    if key is None:
        keys = ", ".join(sorted(map(str, instance))) or "none"
        raise InvalidInput(
            f'{where} has no "image" field (found: {keys}); send {{"image": {{"b64": "..."}}}}'
        )
    value = instance[key]
    where = f"{where}.{key}"
    if isinstance(value, dict):
        if "b64" not in value:
            raise InvalidInput(f'{where} must hold {{"b64": "<base64 JPEG or PNG>"}}')
        value, where = value["b64"], f"{where}.b64"
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a base64 string, got {type(value).__name__}")
    return decode_b64(value, where)


def decode_b64(text: str, where: str) -> bytes:
    """Strict base64 (standard alphabet; a data: URL prefix and line breaks are tolerated)."""
    if len(text) > MAX_B64_CHARS:
        raise InvalidInput(
            f"{where} is {len(text)} base64 characters; the limit is {MAX_B64_CHARS} "
            f"({MAX_IMAGE_BYTES} image bytes). Send a smaller image."
        )
    text = _WHITESPACE.sub("", _DATA_URL.sub("", text, count=1))
    if not text:
        raise InvalidInput(f"{where} is empty; send a base64-encoded JPEG or PNG")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{where} is not valid base64 ({exc}); encode the image bytes with base64") from exc


def parse_v2_request(request: InferRequest, max_batch: int = DEFAULT_MAX_BATCH) -> list[bytes]:
    """A v2 InferRequest with one BYTES input -> image bytes."""
    inputs = list(request.inputs or [])
    byte_inputs = [i for i in inputs if i.datatype == "BYTES"]
    if len(byte_inputs) != 1:
        found = ", ".join(f"{i.name} ({i.datatype})" for i in inputs) or "none"
        raise InvalidInput(
            f"send exactly one BYTES input holding base64 JPEG/PNG images, one element per "
            f"image (found inputs: {found})"
        )
    tensor = byte_inputs[0]
    # JSON gives a list of strings in .data; gRPC raw_input_contents only decode via as_numpy.
    try:
        items = tensor.as_numpy().ravel().tolist()
    except ValueError as exc:  # shape does not match the element count
        count = len(list(_flatten(tensor.data))) if tensor.data is not None else "?"
        raise InvalidInput(
            f"input {tensor.name!r} has shape {list(tensor.shape)} but {count} elements"
        ) from exc
    check_batch_size(len(items), max_batch, f"input {tensor.name!r}")
    return [_v2_element(item, f"{tensor.name}[{i}]") for i, item in enumerate(items)]


def check_batch_size(n: int, max_batch: int, what: str) -> None:
    if n == 0:
        raise InvalidInput(f"{what} is empty; send at least one image")
    if n > max_batch:
        raise InvalidInput(
            f"{what} holds {n} images; the limit is {max_batch} per request. Split the batch."
        )


def _v2_element(item: Any, where: str) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        item = bytes(item)
        if item.startswith(_IMAGE_MAGIC):
            return item  # raw image bytes (gRPC bytes_contents)
        try:
            item = item.decode("ascii")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{where} is neither a JPEG/PNG nor base64 text") from exc
    if not isinstance(item, str):
        raise InvalidInput(f"{where} must be base64 text, got {type(item).__name__}")
    return decode_b64(item, where)


def _flatten(data: Any) -> Iterable[Any]:
    if isinstance(data, (list, tuple)):
        for x in data:
            yield from _flatten(x)
    else:
        yield data


def _json_from_bytes(body: bytes) -> Any:
    """kserve passes the raw body when the Content-Type is not a JSON type; accept JSON anyway."""
    if not body.strip():
        raise InvalidInput(f"request body is empty; send {EXAMPLE}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"request body is not JSON ({exc}); send Content-Type: application/json with {EXAMPLE}"
        ) from exc

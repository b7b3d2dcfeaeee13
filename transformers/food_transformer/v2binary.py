"""The v2 REST binary tensor extension: the call to Triton (in and out), and client requests.

Request: a JSON header (``inputs`` with ``binary_data_size``, ``outputs`` asking for binary
data) followed by the raw FP32 bytes; ``Inference-Header-Content-Length`` says where the JSON
ends. Triton answers the same way, so no tensor is ever written as JSON numbers. The images
arrive as separate (3, H, W) arrays and are joined straight into the request body (one copy).
A server that answers JSON data instead (no binary extension) is read too.

:func:`decode_request` reads a client's binary v2 request in place of kserve 0.20's
``InferRequest.from_bytes``, which turns binary BYTES elements into UTF-8 text (a raw JPEG
then fails as a 500) and lets malformed headers and sizes escape as 500s. Here every element
stays bytes and every malformed part is :class:`kserve.errors.InvalidInput` (HTTP 400).
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any, Mapping, Sequence

import aiohttp
import numpy as np
import orjson
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput
from kserve.utils.numpy_codec import to_np_dtype

HEADER_LENGTH = "Inference-Header-Content-Length"
_DIGITS = re.compile(r"^[0-9]+$")
_HOW = (f"a v2 binary request is the JSON inference header, then each binary input's bytes; "
        f"{HEADER_LENGTH} is the JSON header's length in bytes")


def encode_request(images: Sequence[np.ndarray], input_name: str, output_name: str,
                   request_id: str | None = None) -> tuple[bytes, int]:
    """(body, JSON header length) for a v2 binary request holding ``images`` as one FP32 batch."""
    if not images:
        raise ValueError("no images to send")
    shape = [len(images), *images[0].shape]
    parts = [np.ascontiguousarray(a, dtype=np.float32) for a in images]
    size = sum(p.nbytes for p in parts)
    header: dict[str, Any] = {
        "inputs": [{"name": input_name, "shape": shape, "datatype": "FP32",
                    "parameters": {"binary_data_size": size}}],
        "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
    }
    if request_id:
        header["id"] = request_id
    head = orjson.dumps(header)
    return b"".join([head, *(p.data.cast("B") for p in parts)]), len(head)


def decode_response(body: bytes, headers: Mapping[str, str], output_name: str) -> np.ndarray:
    """The named FP32 output (else the first) of a v2 response, binary or JSON."""
    length = headers.get(HEADER_LENGTH)
    try:
        head = orjson.loads(body[:int(length)] if length is not None else body)
        outputs = head["outputs"]
        output = next((o for o in outputs if o.get("name") == output_name), outputs[0])
        shape = [int(x) for x in output["shape"]]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise InferenceError(f"predictor answered an unreadable v2 response ({type(exc).__name__}: {exc})") from exc
    if output.get("datatype", "FP32") != "FP32":
        raise InferenceError(f"predictor output {output.get('name')} is {output.get('datatype')}, expected FP32")
    size = (output.get("parameters") or {}).get("binary_data_size")
    if size is None:
        return np.asarray(output.get("data", []), dtype=np.float32).reshape(shape)
    # Binary outputs follow the JSON in the order the outputs are listed.
    offset = int(length or 0)
    for o in outputs:
        if o is output:
            break
        offset += int((o.get("parameters") or {}).get("binary_data_size", 0))
    return np.frombuffer(body, dtype=np.float32, count=int(size) // 4, offset=offset).reshape(shape)


class PredictorStatusError(Exception):
    """The predictor answered an HTTP error status (its body usually says why)."""

    def __init__(self, status: int, url: str, body: bytes):
        self.status = status
        detail = body[:300].decode("utf-8", "replace").strip()
        super().__init__(f"{url} answered {status}" + (f": {detail}" if detail else ""))


async def infer(session: aiohttp.ClientSession, base_url: str, model_name: str, images: Sequence[np.ndarray],
                input_name: str, output_name: str, headers: Mapping[str, str] | None = None,
                connect_retries: int = 0) -> np.ndarray:
    """POST one binary v2 request; the logits (N, C).

    An error status raises :class:`PredictorStatusError`; transport failures raise aiohttp's
    errors (``aiohttp.ClientError``, ``asyncio.TimeoutError``). A refused connection is tried
    ``connect_retries`` more times (what httpx's transport retries did).
    """
    body, head_len = encode_request(images, input_name, output_name)
    url = f"{base_url}/v2/models/{model_name}/infer"
    send = {**(headers or {}), "Content-Type": "application/octet-stream", HEADER_LENGTH: str(head_len)}
    for attempt in range(connect_retries + 1):
        try:
            async with session.post(url, data=body, headers=send) as response:
                content = await response.read()
                if response.status >= 400:
                    raise PredictorStatusError(response.status, url, content)
                return decode_response(content, response.headers, output_name)
        except aiohttp.ClientConnectorError:
            if attempt == connect_retries:
                raise
    raise AssertionError("unreachable")  # the loop returns or raises


def decode_request(body: bytes, header_length: str | None, model_name: str) -> InferRequest:
    """A client's v2 REST request body (binary tensor extension or plain JSON) -> InferRequest.

    ``header_length`` is the ``Inference-Header-Content-Length`` value; without it the whole
    body is the JSON header (as Triton reads it). BYTES inputs keep their elements as bytes
    (raw JPEG/PNG or base64 text), numeric binary inputs become arrays of their datatype.
    """
    if not body:
        raise InvalidInput(f"request body is empty; {_HOW}")
    length = _header_length(header_length, len(body))
    try:
        head = orjson.loads(body[:length])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the first {length} bytes of the body are not a JSON inference header ({exc}); "
                           f"{_HOW}") from exc
    if not isinstance(head, dict) or not isinstance(head.get("inputs"), list):
        raise InvalidInput('the JSON inference header must be an object with an "inputs" list, like '
                           '{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", '
                           '"parameters": {"binary_data_size": <bytes>}}]}')
    offset, inputs = length, []
    for i, spec in enumerate(head["inputs"]):
        tensor, size = _input(spec, i, len(body) - offset)
        if size is not None:
            _fill_binary(tensor, body[offset:offset + size])
            offset += size
        inputs.append(tensor)
    if offset != len(body):
        raise InvalidInput(f"{len(body) - offset} bytes follow the last binary input; the inputs' "
                           f"binary_data_size values must add up to the bytes after the JSON header")
    outputs = head.get("outputs")
    requested = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                    for o in outputs):
            raise InvalidInput('"outputs" must be a list of objects with a "name"')
        requested = [RequestedOutput(name=o["name"], parameters=_parameters(o, "outputs")) for o in outputs]
    request_id = head.get("id")
    return InferRequest(model_name=model_name, infer_inputs=inputs,
                        request_id=str(request_id) if request_id is not None else None,
                        parameters=_parameters(head, "the request"), request_outputs=requested)


def split_bytes_elements(raw: bytes, where: str) -> list[bytes]:
    """A serialized BYTES tensor (each element: 4-byte little-endian length, then the bytes)."""
    out: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"{where}: element {len(out)} is cut short (its 4-byte length prefix is missing)")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidInput(f"{where}: element {len(out)} says {size} bytes but only "
                               f"{len(raw) - offset} remain; each BYTES element is a 4-byte "
                               f"little-endian length followed by that many bytes")
        out.append(raw[offset:offset + size])
        offset += size
    return out


def _header_length(value: str | None, body_size: int) -> int:
    if value is None:
        return body_size
    text = value.strip()
    if not _DIGITS.match(text):
        raise InvalidInput(f"{HEADER_LENGTH} must be a whole number of bytes, got {value[:40]!r}; {_HOW}")
    length = int(text)
    if length > body_size:
        raise InvalidInput(f"{HEADER_LENGTH} is {text[:40]} but the body is only {body_size} bytes; {_HOW}")
    return length


def _input(spec: Any, index: int, remaining: int) -> tuple[InferInput, int | None]:
    """One "inputs" entry -> (tensor, binary size or None when its data is JSON)."""
    where = f"inputs[{index}]"
    if not isinstance(spec, dict):
        raise InvalidInput(f"{where} must be an object with name, shape, datatype")
    name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise InvalidInput(f'{where} needs a "name" and a "datatype" (strings)')
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise InvalidInput(f'{where} ({name}): "shape" must be a list of non-negative integers, got {shape!r}')
    if to_np_dtype(datatype.upper()) is None:
        raise InvalidInput(f"{where} ({name}): unknown datatype {datatype!r}")
    parameters = _parameters(spec, where)
    if "data" in spec:
        return InferInput(name=name, shape=shape, datatype=datatype, data=spec["data"], parameters=parameters), None
    size = (parameters or {}).get("binary_data_size")
    if size is None:
        raise InvalidInput(f'{where} ({name}) has neither "data" nor parameters.binary_data_size')
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"{where} ({name}): binary_data_size must be a non-negative integer, got {size!r}")
    if size > remaining:
        raise InvalidInput(f"{where} ({name}): binary_data_size is {size} but only {remaining} bytes "
                           f"follow; {_HOW}")
    return InferInput(name=name, shape=shape, datatype=datatype, parameters=parameters), size


def _fill_binary(tensor: InferInput, raw: bytes) -> None:
    """Set a binary input's data, checked against its shape; BYTES elements stay bytes."""
    count = math.prod(tensor.shape)
    where = f"input {tensor.name!r}"
    if tensor.datatype == "BYTES":
        elements = split_bytes_elements(raw, where)
        if len(elements) != count:
            raise InvalidInput(f"{where} has shape {list(tensor.shape)} but {len(elements)} elements")
        tensor.data = elements
        return
    dtype = np.dtype(to_np_dtype(tensor.datatype))
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(f"{where} has shape {list(tensor.shape)} ({tensor.datatype}) = "
                           f"{count * dtype.itemsize} bytes, but binary_data_size is {len(raw)}")
    tensor.set_data_from_numpy(np.frombuffer(raw, dtype=dtype).reshape(tensor.shape), binary_data=False)


def _parameters(obj: dict, where: str) -> dict | None:
    value = obj.get("parameters")
    if value is not None and not isinstance(value, dict):
        raise InvalidInput(f'{where}: "parameters" must be an object')
    return value

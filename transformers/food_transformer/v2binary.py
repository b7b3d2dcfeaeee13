"""The v2 REST call to Triton with the binary tensor extension, in and out.

Request: a JSON header (``inputs`` with ``binary_data_size``, ``outputs`` asking for binary
data) followed by the raw FP32 bytes; ``Inference-Header-Content-Length`` says where the JSON
ends. Triton answers the same way, so no tensor is ever written as JSON numbers. The images
arrive as separate (3, H, W) arrays and are joined straight into the request body (one copy).
A server that answers JSON data instead (no binary extension) is read too.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import httpx
import numpy as np
import orjson
from kserve.errors import InferenceError

HEADER_LENGTH = "Inference-Header-Content-Length"


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


async def infer(client: httpx.AsyncClient, base_url: str, model_name: str, images: Sequence[np.ndarray],
                input_name: str, output_name: str, headers: Mapping[str, str] | None = None,
                timeout_s: float | None = None) -> np.ndarray:
    """POST one binary v2 request; the logits (N, C). HTTP errors raise httpx.HTTPStatusError."""
    body, head_len = encode_request(images, input_name, output_name)
    response = await client.post(
        f"{base_url}/v2/models/{model_name}/infer", content=body,
        headers={**(headers or {}), "Content-Type": "application/octet-stream", HEADER_LENGTH: str(head_len)},
        timeout=timeout_s)
    response.raise_for_status()
    return decode_response(response.content, response.headers, output_name)

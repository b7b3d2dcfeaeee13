"""Logger events whose request body is the raw image (the octet-stream client path)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from gourmetgram.inference_events import REQUEST_TYPE, BadEvent, decode_event


def _headers(content_type: str) -> dict[str, str]:
    return {"ce-specversion": "1.0", "ce-id": "abc", "ce-type": REQUEST_TYPE, "ce-source": "test",
            "content-type": content_type}


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_octet_stream_request_event_is_one_image_with_its_sniffed_type():
    png = _png()
    event = decode_event(_headers("application/octet-stream"), png)
    assert event.images == [png] and event.content_types == ["image/png"]


def test_octet_stream_request_event_that_is_not_an_image_is_a_bad_event():
    with pytest.raises(BadEvent, match="not a JPEG or PNG"):
        decode_event(_headers("application/octet-stream"), b"plain bytes")

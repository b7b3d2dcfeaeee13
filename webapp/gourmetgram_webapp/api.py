"""The platform's public API, called like any other client would (never the model directly).

``predict`` posts one photo to ``/v1/models/<model>:predict`` (KServe v1 protocol) and
reads the inference id from the ``X-Inference-Id`` header; ``feedback`` posts JSON to
``/v1/feedback`` (the API takes nothing else), naming the visitor it comes from in
``X-Client-Id`` (the daily correction cap counts per visitor). Every failure becomes an :class:`ApiError` whose ``message`` is a
sentence for the person at the page; the technical detail stays in ``detail``.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import httpx

from gourmetgram.constants import CLIENT_ID_HEADER

INFERENCE_ID_HEADER = "x-inference-id"
REVISION_HEADER = "x-gourmetgram-revision"
FEEDBACK_PATH = "/v1/feedback"
FLAGS = ("not_food", "inappropriate")


class ApiError(Exception):
    """A failed call, said for a person (``message``) and for the log (``detail``)."""

    def __init__(self, status: int, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


@dataclasses.dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    top: tuple[dict, ...]
    inference_id: str | None
    revision: str | None
    # False when the model said the photo is unlike its training data (the answer's
    # in_distribution); True when it did not say (an older model).
    in_distribution: bool = True


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("detail") or body)[:300]
    return str(body)[:300]


def _is_json(response: httpx.Response) -> bool:
    try:
        return isinstance(response.json(), dict)
    except ValueError:
        return False


class PublicApi:
    def __init__(self, base_url: str, model_name: str, timeout_s: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=3.0), transport=transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, path: str, body: dict, what: str, headers: dict[str, str] | None = None) -> httpx.Response:
        try:  # json= sends Content-Type: application/json
            return await self._client.post(self.base_url + path, json=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise ApiError(504, f"The {what} service took too long to answer. Please try again.",
                           f"{type(exc).__name__}: {exc}") from None
        except httpx.HTTPError as exc:
            raise ApiError(503, f"The {what} service cannot be reached right now. Please try again in a "
                           "minute.", f"{type(exc).__name__}: {exc}") from None

    async def predict(self, image: bytes) -> Prediction:
        body = {"instances": [{"image": {"b64": base64.b64encode(image).decode("ascii")}}]}
        r = await self._post(f"/v1/models/{self.model_name}:predict", body, "food recognition")
        if r.status_code in (502, 503, 504):
            raise ApiError(503, "The food recognizer is not available right now "
                           f"({r.status_code}). Please try again in a minute.", _error_text(r))
        if 400 <= r.status_code < 500:
            raise ApiError(400 if r.status_code != 413 else 413,
                           f"The food recognizer could not use this photo: {_error_text(r)}",
                           _error_text(r))
        if r.status_code != 200:
            raise ApiError(502, f"The food recognizer failed on this photo ({r.status_code}). "
                           "Please try again, or try another photo.", _error_text(r))
        try:
            p: dict[str, Any] = r.json()["predictions"][0]
            top = tuple({"label": str(t["label"]), "confidence": float(t["confidence"])}
                        for t in p.get("top_k") or [p])
            return Prediction(str(p["label"]), float(p["confidence"]), top[:3],
                              r.headers.get(INFERENCE_ID_HEADER) or None, r.headers.get(REVISION_HEADER),
                              p.get("in_distribution") is not False)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ApiError(502, "The food recognizer gave an answer this page cannot read. Please try "
                           "again.", f"{type(exc).__name__}: {exc}: {r.text[:200]}") from None

    async def feedback(self, inference_id: str, correct: bool, correct_class: str | None = None,
                       flag: str | None = None, client_id: str | None = None) -> dict:
        body: dict[str, Any] = {"inference_id": inference_id, "correct": bool(correct)}
        if correct_class:
            body["correct_class"] = correct_class
        if flag:
            body["flag"] = flag
        r = await self._post(FEEDBACK_PATH, body, "feedback", {CLIENT_ID_HEADER: client_id} if client_id else None)
        if r.status_code == 200:
            try:
                return r.json()
            except ValueError:
                return {}
        if r.status_code == 404 and not _is_json(r):  # the route itself is missing, not the id
            raise ApiError(503, "Feedback cannot be saved: this platform has no feedback service (404). "
                           "Your answer was not saved.", _error_text(r))
        if r.status_code == 404:
            raise ApiError(404, "This photo's prediction is no longer known to the platform, so the "
                           "feedback was not saved.", _error_text(r))
        if r.status_code == 429:
            raise ApiError(429, "You have sent as many corrections today as one person can; thank you. Your "
                           "answer was not saved; please send it again tomorrow.", _error_text(r))
        if 400 <= r.status_code < 500:
            raise ApiError(400, f"The feedback was not accepted: {_error_text(r)}", _error_text(r))
        raise ApiError(503, f"The feedback store is not available right now ({r.status_code}). Your "
                       "answer was not saved; please try again in a minute.", _error_text(r))

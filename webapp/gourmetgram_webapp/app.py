"""The GourmetGram web app: a user page (photo in, tags out, feedback) and an operator page.

Server-rendered (Starlette + Jinja2): every action is a plain HTML form, so the page works
from the keyboard and without JavaScript; ``static/app.js`` only adds drag-and-drop, a
preview and an early size check. Photos go to the platform's public API (:mod:`.api`),
exactly as any client's would. A visitor's recent uploads (a small thumbnail, the
prediction and the feedback given) are kept in this process's memory under an anonymous
cookie: nothing is stored on disk here (the platform's own capture/feedback store keeps
what it needs), and the Deployment runs one replica with client-IP affinity.

Errors are pages that say what happened, with the HTTP status that fits (400 not an image,
413 too large, 503 model or feedback store down), never a stack trace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import logging
import secrets
import time
from collections import OrderedDict, deque
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from gourmetgram import constants
from gourmetgram.preprocessing import InvalidImageError, decode_image
from gourmetgram_webapp.api import FLAGS, ApiError, Prediction, PublicApi
from gourmetgram_webapp.config import WebConfig, capture_base_url
from gourmetgram_webapp.operator_view import RegistryReader, gather

HERE = Path(__file__).resolve().parent
VISITOR_COOKIE = "gg_visitor"
RECENT_PER_VISITOR = 8
MAX_VISITORS = 2000
THUMB_PX = 160
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024  # larger uploads are cut off without reading them
log = logging.getLogger("gourmetgram.webapp")


@dataclasses.dataclass
class Upload:
    id: str
    filename: str
    created: float
    thumbnail: bytes
    prediction: Prediction
    feedback: dict | None = None  # what the platform stored


class VisitorStore:
    """Recent uploads per anonymous visitor, bounded (oldest visitors and uploads drop out)."""

    def __init__(self, per_visitor: int = RECENT_PER_VISITOR, max_visitors: int = MAX_VISITORS) -> None:
        self.per_visitor, self.max_visitors = per_visitor, max_visitors
        self._visitors: OrderedDict[str, deque[Upload]] = OrderedDict()

    def recent(self, visitor: str | None) -> list[Upload]:
        return list(reversed(self._visitors.get(visitor or "", ())))

    def add(self, visitor: str, upload: Upload) -> None:
        uploads = self._visitors.setdefault(visitor, deque(maxlen=self.per_visitor))
        self._visitors.move_to_end(visitor)
        uploads.append(upload)
        while len(self._visitors) > self.max_visitors:
            self._visitors.popitem(last=False)

    def get(self, visitor: str | None, upload_id: str) -> Upload | None:
        return next((u for u in self._visitors.get(visitor or "", ()) if u.id == upload_id), None)


def check_photo(data: bytes, filename: str, max_bytes: int) -> bytes:
    """The upload as a JPEG/PNG the model can take, plus a small JPEG thumbnail; or a 4xx ApiError."""
    if not data:
        raise ApiError(400, "No photo was uploaded. Choose a JPEG or PNG photo first.")
    if len(data) > max_bytes:
        raise ApiError(413, f"{filename or 'This file'} is {_mb(len(data))}; photos up to {_mb(max_bytes)} "
                       "are accepted. Try a smaller photo.")
    try:
        image = decode_image(data, max_bytes=max_bytes)
    except InvalidImageError as exc:
        raise ApiError(400, f"{filename or 'This file'} is not a photo we can read: {exc}. Upload a JPEG "
                       "or PNG photo.") from None
    image.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def create_app(config: WebConfig, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The ASGI app; ``transport`` lets tests put the public API on an in-process server."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    store = VisitorStore()
    api = PublicApi(config.api_url, config.model_name, config.api_timeout_s, transport=transport)
    status_client = httpx.AsyncClient(timeout=httpx.Timeout(config.status_timeout_s), transport=transport)
    registry = RegistryReader() if config.registry else None

    @asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            await api.aclose()
            await status_client.aclose()

    def render(request: Request, name: str, status: int = 200, **context) -> Response:
        visitor = request.cookies.get(VISITOR_COOKIE)
        context.setdefault("recent", store.recent(visitor))
        context.update(config=config, max_mb=_mb(config.max_upload_bytes),
                       max_bytes=config.max_upload_bytes, classes=config.class_names)
        response = templates.TemplateResponse(request, name, context, status_code=status)
        return _with_visitor(request, response)

    async def index(request: Request) -> Response:
        return render(request, "index.html")

    async def predict(request: Request) -> Response:
        visitor = request.cookies.get(VISITOR_COOKIE) or secrets.token_urlsafe(16)
        request.state.visitor = visitor
        try:
            data, filename = await _read_upload(request, config.max_upload_bytes)
            thumbnail = await asyncio.to_thread(check_photo, data, filename, config.max_upload_bytes)
            prediction = await api.predict(data)
        except ApiError as exc:
            log.warning("upload failed (%s): %s %s", exc.status, exc.message, exc.detail)
            return render(request, "index.html", exc.status, error=exc.message)
        upload = Upload(secrets.token_urlsafe(9), filename, time.time(), thumbnail, prediction)
        store.add(visitor, upload)
        return _with_visitor(request, RedirectResponse(f"/uploads/{upload.id}", status_code=303))

    def find(request: Request) -> Upload:
        upload = store.get(request.cookies.get(VISITOR_COOKIE), request.path_params["upload_id"])
        if upload is None:
            raise HTTPException(404, "This upload is not among your recent uploads (they are kept for a "
                                "while only). Upload the photo again.")
        return upload

    async def result(request: Request) -> Response:
        upload = find(request)
        saved = request.query_params.get("saved") == "1"
        return render(request, "result.html", upload=upload, saved=saved)

    async def thumbnail(request: Request) -> Response:
        return Response(find(request).thumbnail, media_type="image/jpeg",
                        headers={"cache-control": "private, max-age=3600"})

    async def feedback(request: Request) -> Response:
        upload = find(request)
        form = await request.form(max_files=0, max_fields=10)
        verdict = str(form.get("verdict", ""))
        correct_class = str(form.get("correct_class", "")).strip() or None
        flag = str(form.get("flag", "")).strip() or None
        error = None
        if verdict not in ("right", "wrong"):
            error = "Say whether the tag is right or wrong."
        elif verdict == "wrong" and not correct_class and not flag:
            error = "Pick the right class from the list (or say it is not food)."
        elif correct_class and correct_class not in config.class_names:
            error = f"{correct_class!r} is not one of the classes: {', '.join(config.class_names)}."
        elif flag and flag not in FLAGS:
            error = f"Unknown flag {flag!r}."
        elif not upload.prediction.inference_id:
            error = ("Feedback cannot be sent for this photo: the platform did not give its prediction "
                     "an inference id.")
        if error or not upload.prediction.inference_id:
            return render(request, "result.html", 400, upload=upload, error=error)
        try:
            stored = await api.feedback(upload.prediction.inference_id, verdict == "right",
                                        correct_class if verdict == "wrong" else None, flag,
                                        client_id=visitor_id(request.cookies.get(VISITOR_COOKIE)))
        except ApiError as exc:
            log.warning("feedback failed (%s): %s %s", exc.status, exc.message, exc.detail)
            return render(request, "result.html", exc.status, upload=upload, error=exc.message)
        upload.feedback = {"correct": verdict == "right", "correct_class": correct_class, "flag": flag,
                           "stored": stored}
        return RedirectResponse(f"/uploads/{upload.id}?saved=1", status_code=303)

    async def operator(request: Request) -> Response:
        view = await gather(config, status_client, registry)
        return render(request, "operator.html", view=view, refreshed=time.strftime("%H:%M:%S"))

    async def operator_json(_request: Request) -> Response:
        return JSONResponse(await gather(config, status_client, registry))

    async def operator_thumbnail(request: Request) -> Response:
        """A captured photo's thumbnail, from the capture sink (the operator page's most atypical
        recent photos); the web app never opens the object store itself."""
        base = capture_base_url(config.feedback_summary_url)
        if not base:
            raise HTTPException(404, "No capture sink is configured: thumbnails are not available.")
        sample_id = quote(request.path_params["sample_id"], safe="/")
        try:
            r = await status_client.get(f"{base}{constants.SAMPLE_THUMBNAIL_PATH}/{sample_id}")
        except httpx.HTTPError as exc:
            raise HTTPException(503, f"The capture sink cannot be reached ({type(exc).__name__}).") from None
        if r.status_code != 200 or not r.headers.get("content-type", "").startswith("image/"):
            raise HTTPException(404 if r.status_code == 404 else 503,
                                "This photo was not captured (or was sampled out)." if r.status_code == 404
                                else f"The capture sink answered {r.status_code}.")
        return Response(r.content, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else \
            "There is no page here."
        if exc.status_code == 405:
            message = "That address does not take this kind of request; go back to the upload page."
        return render(request, "error.html", exc.status_code, error=message)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return render(request, "error.html", 500, recent=[],
                      error="Something went wrong on our side; the error was logged. Please try again.")

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/uploads/{upload_id}", result, methods=["GET"]),
        Route("/uploads/{upload_id}/thumb.jpg", thumbnail, methods=["GET"]),
        Route("/uploads/{upload_id}/feedback", feedback, methods=["POST"]),
        Route("/operator", operator, methods=["GET"]),
        Route("/operator.json", operator_json, methods=["GET"]),
        Route("/operator/thumbnails/{sample_id:path}", operator_thumbnail, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: server_error})


async def _read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The one file of the upload form, read no further than the limit allows."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes + 64 * 1024:
        # Read (and drop) what the browser is sending before answering: a reply in the middle
        # of an upload makes browsers show a connection error instead of this page.
        if int(length) <= DRAIN_LIMIT_BYTES:
            async for _chunk in request.stream():
                pass
        raise ApiError(413, f"This photo is {_mb(int(length))}; photos up to {_mb(max_bytes)} are accepted. "
                       "Try a smaller photo.")
    try:
        form = await request.form(max_files=2, max_fields=10)
    except Exception as exc:  # noqa: BLE001 - python-multipart/starlette raise several kinds
        raise ApiError(400, "The upload could not be read; choose the photo again and resend it.",
                       f"{type(exc).__name__}: {exc}") from None
    files = [v for k in ("photo", "camera") for v in form.getlist(k) if isinstance(v, UploadFile) and v.filename]
    if not files:
        raise ApiError(400, "No photo was uploaded. Choose a JPEG or PNG photo first.")
    upload = files[0]
    data = await upload.read(max_bytes + 1)
    return data, upload.filename or "photo"


def visitor_id(cookie: str | None) -> str | None:
    """The visitor as the feedback API's X-Client-Id: a hash of the anonymous cookie, so the
    cookie (which opens the visitor's uploads here) never leaves this app."""
    return hashlib.sha256(cookie.encode()).hexdigest()[:32] if cookie else None


def _with_visitor(request: Request, response: Response) -> Response:
    visitor = getattr(request.state, "visitor", None)
    if visitor and request.cookies.get(VISITOR_COOKIE) != visitor:
        response.set_cookie(VISITOR_COOKIE, visitor, max_age=30 * 24 * 3600, httponly=True, samesite="lax")
    return response

"""Routing: which revision serves a request, and forwarding it there (Istio/Knative's part).

* **Traffic split** (KServe's ``ksvc_reconciler``, :meth:`Router._apply_split`): with a canary at
  P%, the ``latest`` revision gets P% and the ``prev`` revision (the last one rolled out)
  100-P%; 0 pins all traffic to ``prev`` (rollback); promoting gives ``latest`` 100%.
* **Tag routing**: a Host header ``latest-<isvc>...``/``prev-<isvc>...`` (KServe's tag
  hostnames) or ``X-Gourmetgram-Tag: latest|prev`` picks the revision, with the stack's control
  token only (KServe's tag routes are internal). Every response names its revision in
  ``X-Gourmetgram-Revision`` (and ``X-Gourmetgram-Tag``) and carries ``X-Inference-Id``.
* **Forwarding**: to the revision's transformer (which only knows its own Triton, so a request
  never crosses from a canary transformer to a stable predictor, kserve#1669), measured like
  queue-proxy, logged by the inference logger, mirrored to a shadow when one runs; a revision
  that is not ready answers 503 with ``Retry-After``; ``POST /v1/feedback`` (JSON only: 415
  otherwise) goes to the capture/feedback service with the caller's ``X-Client-Id`` and its
  address appended to ``X-Forwarded-For``, as Istio's gateway does. Bodies over the limit are
  a 413 while they stream in.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid

import aiohttp
from prometheus_client import Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gourmetgram import bodylimit
from gourmetgram import control as policy  # the token rules
from gourmetgram.constants import CLIENT_ID_HEADER, FEEDBACK_PATH
from gourmetgram.jsonlog import INFERENCE_ID_HEADER, log_json
from gourmetgram.loop.feedback_media import media_type_problem
from gourmetgram_app.local import httpclient
from gourmetgram_app.local.gateway.discovery import Revision
from gourmetgram_app.local.gateway.logger import InferenceLogger
from gourmetgram_app.local.manifests import ServiceManifest
from gourmetgram_app.local.readiness import RevisionReadiness, probe_revision
from gourmetgram_app.local.shadow import ShadowMirror

MAX_BODY_BYTES = 64 * 1024 * 1024
# Headers that describe one hop, not the request (RFC 9110 7.6.1), plus what the client
# recomputes (host, content-length) and ``expect`` (the gateway has the whole body already:
# forwarded, it would make aiohttp wait for a 100 Continue before sending it).
HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailer", "transfer-encoding", "upgrade", "host", "content-length", "expect"}
FEEDBACK_TIMEOUT_S = 10.0
LATEST, PREV, SHADOW = "latest", "prev", "shadow"
TAG_HEADER = "x-gourmetgram-tag"
REVISION_HEADER = "x-gourmetgram-revision"
FEEDBACK_MAX_BODY_BYTES = 64 * 1024  # the feedback service applies its own, smaller limit
# A caller's ce-id is kept only when it is a sane id (it becomes a storage key downstream).
INFERENCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def passthrough(upstream: aiohttp.ClientResponse, content: bytes) -> Response:
    """The upstream's answer for the caller: its status, its end-to-end headers (a repeated
    one stays repeated, byte for byte) and ``content``, already decoded (so no
    ``Content-Encoding``; Starlette sets ``Content-Length``)."""
    response = Response(content, status_code=upstream.status)
    response.raw_headers.extend(
        (name.lower(), value) for name, value in upstream.raw_headers
        if name.lower().decode("latin-1") not in HOP_HEADERS and name.lower() != b"content-encoding")
    return response


class Router:
    """The request path of :class:`gourmetgram_app.local.gateway.server.Gateway` (which sets
    these attributes): revision choice, forwarding, measuring, logging, mirroring."""

    manifest: ServiceManifest
    revisions: list[Revision]
    canary_percent: int | None  # KServe state: None = no canary, latest takes 100%
    rolled_out: str  # status.latestRolledoutRevision
    control_token: str
    configuration: str
    timeout_s: float
    max_body_bytes: int
    feedback_url: str | None
    request_duration: Histogram
    logger: InferenceLogger | None
    shadow: ShadowMirror
    readiness: RevisionReadiness
    _rng: random.Random
    _client: aiohttp.ClientSession | None

    def by_tag(self, tag: str) -> Revision | None:
        return next((r for r in self.revisions if r.tag == tag), None)

    def requested_tag(self, request: Request) -> str | None:
        """``latest``/``prev`` from the Host (``latest-<isvc>...``) or ``X-Gourmetgram-Tag``."""
        tag = request.headers.get(TAG_HEADER, "").strip().lower()
        if tag:
            return tag
        host = request.headers.get("host", "").lower()
        for candidate in (LATEST, PREV):
            if host.startswith(f"{candidate}-{self.manifest.name}"):
                return candidate
        return None

    def select_revision(self, request: Request) -> Revision:
        """The tagged revision when one is asked for, else a weighted pick by ``percent``."""
        tag = self.requested_tag(request)
        if tag is not None:
            if not policy.authorized(request.headers, self.control_token):
                raise PermissionError(
                    f"tag routing (header {TAG_HEADER} or a {tag}-<isvc> Host) is internal: send the "
                    "stack's control token as 'Authorization: Bearer ...', or leave the tag out")
            revision = self.by_tag(tag)
            if revision is None:
                raise LookupError(f"no revision is tagged {tag!r} (tags exist only while a canary "
                                  f"is configured; tags now: {[r.tag for r in self.revisions if r.tag]})")
            return revision
        live = [r for r in self.revisions if r.percent > 0]
        point = self._rng.uniform(0, sum(r.percent for r in live))
        for revision in live:
            point -= revision.percent
            if point <= 0:
                return revision
        return live[-1]

    def route(self, request: Request) -> Revision | JSONResponse:
        """The revision for this request, or the 403/404 answer that says why there is none."""
        try:
            return self.select_revision(request)
        except PermissionError as exc:
            return error(403, str(exc))
        except LookupError as exc:
            return error(404, str(exc))

    async def forward(self, request: Request) -> Response:
        revision = self.route(request)
        if isinstance(revision, Response):
            return revision
        started = time.perf_counter()
        try:  # the limit holds while the body streams in, before it is logged or forwarded
            body = await bodylimit.read_body(request, self.max_body_bytes)
        except bodylimit.BodyTooLarge as exc:
            self.observe(revision, 413, started)
            return error(413, str(exc))
        given = request.headers.get("ce-id", "")
        ce_id = given if INFERENCE_ID_RE.match(given) else str(uuid.uuid4())
        endpoint = "canary" if revision.tag == LATEST and self.canary_percent is not None else "default"
        logger = self.logger if request.method == "POST" else None
        extensions = {"revision": revision.name, "modelversion": revision.version or ""}
        if logger is not None:
            logger.log(ce_id, "request", body, request.headers.get("content-type", ""), endpoint,
                            extensions)
        mirrored = self._mirror(request, ce_id, body)
        response = await self._send_if_ready(request, revision, body, ce_id)
        self.observe(revision, response.status_code, started)
        if mirrored and response.status_code == 200:
            self.shadow.record_production(ce_id, response.body)
        if logger is not None and response.status_code == 200:  # KServe logs only 200 responses
            logger.log(ce_id, "response", bytes(response.body), response.headers.get("content-type", ""),
                            endpoint, extensions)
        if request.method == "POST":
            log_json("gateway", "predict", ce_id, path=request.url.path, revision=revision.name,
                     endpoint=endpoint, status=response.status_code,
                     ms=round((time.perf_counter() - started) * 1000, 2))
        response.headers["X-Inference-Id"] = ce_id
        response.headers[REVISION_HEADER] = revision.name
        if revision.tag:
            response.headers[TAG_HEADER] = revision.tag
        return response

    def _mirror(self, request: Request, ce_id: str, body: bytes) -> bool:
        """Copy a share of the model POSTs to the shadow (never waits for it)."""
        if not self.shadow.active or request.method != "POST" or self._rng.uniform(0, 100) >= self.shadow.percent:
            return False
        # Neither the control token nor tag routing travels to the shadow.
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_HEADERS and k.lower() not in (TAG_HEADER, "authorization")}
        headers[INFERENCE_ID_HEADER] = ce_id  # the shadow's transformer logs the same id
        return self.shadow.mirror(ce_id, request.url.path, request.url.query, body, headers, self.logger)

    def observe(self, revision: Revision, status: int, started: float) -> None:
        self.request_duration.labels(self.manifest.namespace, self.configuration, revision.name,
                                     str(status)).observe(time.perf_counter() - started)

    async def _send_if_ready(self, request: Request, revision: Revision, body: bytes | None = None,
                             inference_id: str | None = None) -> Response:
        """503 + Retry-After for a revision that is not ready, else forward (see readiness.py)."""
        if not self.readiness.ready(revision.name):
            return self.readiness.unavailable(revision.name)
        return self.readiness.observe(revision.name, await self._send(request, revision, body, inference_id))

    async def _send(self, request: Request, revision: Revision, body: bytes | None = None,
                    inference_id: str | None = None) -> Response:
        if body is None:
            try:
                body = await bodylimit.read_body(request, self.max_body_bytes)
            except bodylimit.BodyTooLarge as exc:
                return error(413, str(exc))
        # The control token stays here: the transformer never needs it.
        drop = {TAG_HEADER} | ({"authorization"} if policy.authorized(request.headers, self.control_token)
                               else set())
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_HEADERS and k.lower() not in drop}
        if inference_id:
            headers[INFERENCE_ID_HEADER] = inference_id
        url = revision.transformer_url + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        assert self._client is not None, "the gateway's HTTP client starts with the app"
        try:
            async with self._client.request(request.method, url, data=body or None, headers=headers,
                                            allow_redirects=False,
                                            skip_auto_headers=httpclient.NO_CONTENT_TYPE) as upstream:
                content = await upstream.read()
        except httpclient.CONNECT_TIMEOUT as exc:
            return self._unreachable(revision, exc)
        except httpclient.TIMEOUT:
            return error(504, f"transformer of revision {revision.name} did not answer within "
                               f"{self.timeout_s:.0f} s")
        except aiohttp.ClientError as exc:  # refused, reset, closed mid-answer: it is down
            return self._unreachable(revision, exc)
        return passthrough(upstream, content)

    async def feedback(self, request: Request) -> Response:
        """``POST /v1/feedback`` to the capture/feedback service, as the ingress routes it."""
        if self.feedback_url is None:
            return error(503, "no feedback service is configured on this gateway (--feedback-url)")
        problem = media_type_problem(request.headers.get("content-type"))
        if problem:  # JSON only: a cross-site page cannot send it without a preflight
            return error(415, problem)
        forwarded = ", ".join(filter(None, [request.headers.get("x-forwarded-for"),
                                            request.client.host if request.client else None]))
        headers = {"content-type": request.headers["content-type"], "x-forwarded-for": forwarded}
        if request.headers.get(CLIENT_ID_HEADER):
            headers[CLIENT_ID_HEADER] = request.headers[CLIENT_ID_HEADER]
        try:  # refused while it streams in, like a model request
            body = await bodylimit.read_body(request, FEEDBACK_MAX_BODY_BYTES)
        except bodylimit.BodyTooLarge as exc:
            return error(413, f"feedback {exc}")
        assert self._client is not None
        try:
            async with self._client.post(
                    self.feedback_url + FEEDBACK_PATH, data=body, allow_redirects=False,
                    timeout=httpclient.timeout(FEEDBACK_TIMEOUT_S), headers=headers,
            ) as upstream:
                content = await upstream.read()
        except httpclient.FAILED as exc:
            return error(503, f"the feedback service at {self.feedback_url} is not reachable "
                               f"({type(exc).__name__}); try again shortly")
        try:
            answer = json.loads(content)
        except ValueError:
            answer = None
        inference_id = answer.get("inference_id") if isinstance(answer, dict) else None
        log_json("gateway", "feedback", inference_id, status=upstream.status)
        return passthrough(upstream, content)

    async def _probe(self, revision: Revision) -> str | None:
        assert self._client is not None, "the gateway's HTTP client starts with the app"
        return await probe_revision(self._client, revision, self.manifest.model_name)

    @staticmethod
    def _unreachable(revision: Revision, exc: Exception) -> Response:
        return error(503, f"transformer of revision {revision.name} at {revision.transformer_url} "
                           f"is not reachable ({type(exc).__name__}: {exc}); is it running?")

    # -- traffic split -----------------------------------------------------------------
    def _apply_split(self) -> None:
        """KServe's traffic for the current state (``ksvc_reconciler``)."""
        latest = self.revisions[-1]
        if self.canary_percent is None or latest.name == self.rolled_out:
            for r in self.revisions:
                r.percent, r.tag = (100 if r is latest else 0), None
            return
        for r in self.revisions:
            if r is latest:
                r.percent, r.tag = self.canary_percent, LATEST
            elif r.name == self.rolled_out:
                r.percent, r.tag = 100 - self.canary_percent, PREV
            else:
                r.percent, r.tag = 0, None

"""The local gateway: a stand-in for the Istio/Knative ingress in front of the transformer.

On the cluster a request to an InferenceService passes the Istio ingress, which picks a
Knative revision (by ``canaryTrafficPercent`` or by tag), and that revision's queue-proxy,
which measures it (``kn_serving_invocation_duration_seconds``, Knative 1.21; the names are
in gourmetgram/metric_names.py), and
the KServe agent, which sends the request and its response to the logger's sink as
CloudEvents. Locally this small ASGI app does the same for transformer processes on
localhost, under the SAME metric names, so the same PromQL, dashboards and alert rules work
on both:

* **Traffic split** (KServe's ``ksvc_reconciler``): with a canary at P%, the ``latest``
  revision gets P% and the ``prev`` revision (the last one rolled out) 100-P%; 0 pins all
  traffic to ``prev`` (rollback); promoting gives ``latest`` 100% and retires ``prev``.
* **Tag routing**: a Host header ``latest-<isvc>...``/``prev-<isvc>...`` (KServe's tag
  hostnames) or the header ``X-Gourmetgram-Tag: latest|prev`` picks the revision. Every
  response names its revision in ``X-Gourmetgram-Revision`` (and ``X-Gourmetgram-Tag``).
* **Paired components**: a revision is one transformer + one Triton (``RevisionPair``); the
  gateway routes to a transformer, which only knows its own Triton, so a request never
  crosses from a canary transformer to a stable predictor (kserve#1669).
* **Inference logger** (``logger.mode``/``url`` of the manifest): binary-mode CloudEvents
  (``ce-type`` ``org.kubeflow.serving.inference.request|response``, one ``ce-id`` per
  pair, extensions ``inferenceservicename``, ``namespace``, ``component``, ``endpoint``),
  sent off the request path through a bounded queue; a slow or dead sink never delays or
  fails a prediction; what cannot be queued or delivered is counted in
  ``logger_events_dropped_total``.
* **Inference id**: every prediction response carries ``X-Inference-Id``, the ``ce-id`` of its
  logger events (the caller's ``ce-id`` when it sent a valid one, as KServe's agent keeps it),
  so user feedback and the captured sample meet on it. The transformer gets it too, and every
  hop writes a JSON log line with it (:mod:`gourmetgram.jsonlog`). Logger events also carry two
  local extensions, ``revision`` and ``modelversion`` (what served the request).
* **Feedback**: ``POST /v1/feedback`` is routed to the capture/feedback service
  (``--feedback-url``), next to predict on the public path; 503 when none is configured.
* **Shadow** (Istio's VirtualService ``mirror``/``mirrorPercentage`` on the cluster): a share
  of model requests is also copied, fire-and-forget, to a shadow revision whose answers go
  only to the logger's sink (``ce-endpoint: shadow``, ``ce-shadow: true``, the mirrored
  request's ``ce-id``), never to the client (:mod:`gourmetgram.local.shadow`).
* **Crashes**: a revision whose transformer or Triton is down answers 503 with
  ``Retry-After`` until a probe finds it ready again (:mod:`gourmetgram.local.readiness`);
  the split does not change by itself. Canary pairs started here are restarted by this
  process's :class:`~gourmetgram.local.supervisor.Supervisor`.
* **Control** (the Knative controller's part, localhost only): ``GET/POST
  /_gourmetgram/rollout`` starts a canary revision from a bundle, sets its percentage,
  promotes or rolls back (``gourmetgram rollout`` drives it); ``GET /_gourmetgram/targets``
  lists every revision's metrics endpoints in Prometheus HTTP-SD form. A POST needs the
  stack's control token, JSON, and a bundle from the model store; tag routing needs the
  token too (:mod:`gourmetgram.local.control`).
* **Size limits**: a body over ``max_body_bytes`` is a 413 before it is read whole or
  logged (:mod:`gourmetgram.bodylimit`); the logger queue is bounded by bytes as well.

Run: ``python -m gourmetgram.local.gateway --manifest inference_services/staging.yaml
--revision food11-staging-predictor-00001=http://127.0.0.1:8080``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import random
import re
import secrets
import sys
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, Sequence
from urllib.parse import urlsplit

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gourmetgram import bodylimit, constants
from gourmetgram import metric_names as qp
from gourmetgram.errors import DependencyUnavailable, UserError
from gourmetgram.jsonlog import INFERENCE_ID_HEADER, log_json
from gourmetgram.local import control
from gourmetgram.local.manifests import (
    ServiceManifest,
    configuration_name,
    generation_of,
    load_manifest,
    local_logger_url,
    revision_name,
)
from gourmetgram.local.readiness import RevisionReadiness, probe_revision
from gourmetgram.local.shadow import ShadowMirror
from gourmetgram.local.supervisor import Process, Supervisor, read_state_file

MAX_BODY_BYTES = 64 * 1024 * 1024
LOGGER_QUEUE_BYTES = 256 * 1024 * 1024  # events waiting for the sink, at most
# Headers that describe one hop, not the request (RFC 9110 7.6.1), plus what httpx recomputes.
HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailer", "transfer-encoding", "upgrade", "host", "content-length"}


LATEST, PREV, SHADOW = "latest", "prev", "shadow"
TAG_HEADER = "x-gourmetgram-tag"
REVISION_HEADER = "x-gourmetgram-revision"
CONTROL_PREFIX = "/_gourmetgram"
FEEDBACK_PATH = "/v1/feedback"
FEEDBACK_MAX_BODY_BYTES = 64 * 1024  # the feedback service applies its own, smaller limit
# A caller's ce-id is kept only when it is a sane id (it becomes a storage key downstream).
INFERENCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
WARMUP_REQUESTS = 5
log = logging.getLogger("gourmetgram.gateway")


@dataclasses.dataclass
class Revision:
    """One Knative revision of the transformer: where it listens and its share of traffic.

    ``tag`` is ``prev``/``latest`` while a canary is configured (KServe's tag routing);
    ``percent`` is the traffic share in 0..100. ``bundle``/``version`` say what model it
    serves, ``triton_metrics_url`` where its predictor's metrics are.
    """

    name: str
    transformer_url: str
    percent: int = 100
    tag: str | None = None
    bundle: str | None = None
    version: str | None = None
    triton_metrics_url: str | None = None
    triton_url: str | None = None  # for the readiness probe

    @classmethod
    def parse(cls, text: str) -> "Revision":
        """``NAME=URL`` (the CLI form)."""
        name, sep, url = text.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise UserError(f"revision {text!r} is not NAME=http://HOST:PORT")
        return cls(name=name, transformer_url=url.rstrip("/"))

    def public(self) -> dict:
        return dataclasses.asdict(self)


class InferenceLogger:
    """KServe's logger agent, locally: binary-mode CloudEvents to ``url``, off the request path.

    :meth:`log` never blocks and never raises: it puts the event on a bounded queue or,
    when the queue is full, counts a drop. ``workers`` tasks deliver the queue with a short
    timeout; a delivery that fails (sink down, slow, non-2xx) is counted as dropped too.
    """

    def __init__(self, url: str, mode: str, inferenceservice: str, namespace: str,
                 sent: Counter, dropped: Counter, component: str = "transformer",
                 queue_size: int = 1000, workers: int = 4, timeout_s: float = 2.0,
                 queue_bytes: int = LOGGER_QUEUE_BYTES, sink_token: str | None = None) -> None:
        if mode not in ("all", "request", "response"):
            raise UserError(f"logger mode {mode!r} is not all, request or response")
        self.url, self.mode = url, mode
        self.inferenceservice, self.namespace, self.component = inferenceservice, namespace, component
        self.queue_size, self.workers, self.timeout_s = queue_size, workers, timeout_s
        # Bounded by count AND bytes: 1000 large images would otherwise pin gigabytes.
        self.queue_bytes, self.queued_bytes = queue_bytes, 0
        self.sink_token = sink_token  # the local detector's ingest token, when it has one
        self.sent = sent.labels(inferenceservice)
        self.dropped = dropped.labels(inferenceservice)
        self.source = "http://localhost:9081/"  # where KServe's agent says events come from
        self._queue: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self._client: httpx.AsyncClient | None = None

    def wants(self, kind: str) -> bool:
        return self.mode == "all" or self.mode == kind

    def headers(self, ce_id: str, kind: str, content_type: str, endpoint: str,
                extensions: dict[str, str] | None = None) -> dict[str, str]:
        return {
            **{f"ce-{k}": v for k, v in (extensions or {}).items() if v},
            **(control.bearer(self.sink_token) if self.sink_token else {}),
            **{f"ce-{k}": v for k, v in (extensions or {}).items() if v},
            "ce-specversion": "1.0", "ce-id": ce_id, "ce-source": self.source,
            "ce-type": f"org.kubeflow.serving.inference.{kind}",
            "ce-time": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "ce-inferenceservicename": self.inferenceservice, "ce-namespace": self.namespace,
            "ce-component": self.component, "ce-endpoint": endpoint,
            "content-type": content_type or "application/json",
        }

    def log(self, ce_id: str, kind: str, body: bytes, content_type: str, endpoint: str,
            extensions: dict[str, str] | None = None) -> None:
        """Queue one event (``kind`` request|response); a full queue (by count or bytes)
        counts a drop."""
        if not self.wants(kind):
            return
        if self._queue is None or self.queued_bytes + len(body) > self.queue_bytes:
            self.dropped.inc()
            return
        try:
            self._queue.put_nowait((self.headers(ce_id, kind, content_type, endpoint, extensions), body))
        except asyncio.QueueFull:
            self.dropped.inc()
            return
        self.queued_bytes += len(body)

    async def _deliver(self) -> None:
        assert self._queue is not None and self._client is not None
        while True:
            headers, body = await self._queue.get()
            self.queued_bytes -= len(body)
            try:
                r = await self._client.post(self.url, content=body, headers=headers)
                (self.sent if r.status_code < 300 else self.dropped).inc()
            except Exception:  # noqa: BLE001 - a sink's failure is a counted drop, nothing more
                self.dropped.inc()
            finally:
                self._queue.task_done()

    @property
    def backlog(self) -> int:
        return self._queue.qsize() if self._queue else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s, connect=0.5),
                                         limits=httpx.Limits(max_connections=self.workers))
        self._tasks = [asyncio.create_task(self._deliver()) for _ in range(self.workers)]

    async def stop(self, drain_s: float = 2.0) -> None:
        """Give queued events ``drain_s`` to go out, then cancel the workers."""
        if self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.join(), drain_s)
            except asyncio.TimeoutError:
                pass
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()


class _Stoppable(Protocol):
    """What the gateway needs of a :class:`gourmetgram.local.stack.RevisionPair` it started."""

    @property
    def services(self) -> Sequence[Process]: ...

    def stop(self) -> None: ...


class Gateway:
    """Routes model requests to transformer revisions, measures them like queue-proxy, logs them."""

    def __init__(self, manifest: ServiceManifest, revisions: list[Revision],
                 timeout_s: float = 60.0, logger_url: str | None = None, logger_enabled: bool = True,
                 logger_queue: int = 1000, logger_workers: int = 4, logger_timeout_s: float = 2.0,
                 log_dir: str | Path | None = None, host: str = constants.HOST,
                 seed: int | None = None, control_token: str | None = None,
                 model_store: str | Path | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 logger_queue_bytes: int = LOGGER_QUEUE_BYTES, feedback_url: str | None = None,
                 status_file: str | Path | None = None) -> None:
        """``control_token``: what the control API and tag routing require (None: a random
        one, readable as ``self.control_token``); ``model_store``: the only place canary
        bundles may come from (default ``$GOURMETGRAM_HOME/models``); ``feedback_url``: the
        capture/feedback service ``POST /v1/feedback`` is routed to; ``status_file``: the
        serve supervisor's component states, shown in the status."""
        if not revisions:
            raise UserError("the gateway needs at least one revision")
        self.manifest = manifest
        self.revisions = list(revisions)
        self.timeout_s = timeout_s
        self.host = host
        self.log_dir = Path(log_dir) if log_dir else None
        self.control_token = control_token or secrets.token_urlsafe(32)
        self.model_store = Path(model_store).resolve() if model_store else control.model_store()
        self.max_body_bytes = max_body_bytes
        self.feedback_url = feedback_url.rstrip("/") if feedback_url else None
        self.configuration = configuration_name(manifest)
        # KServe state: the canary percentage (None = no canary: latest takes 100%).
        self.canary_percent: int | None = None
        self.rolled_out = self.revisions[0].name  # status.latestRolledoutRevision
        self._rng = random.Random(seed)
        self._pairs: dict[str, _Stoppable] = {}  # revision name -> RevisionPair this gateway started
        self._control_lock = asyncio.Lock()
        self.registry = CollectorRegistry()
        # queue-proxy's request histogram (its _count is the request count), same name, labels
        # and buckets as Knative 1.21 exports it with the chart's PodMonitor labels.
        self.request_duration = Histogram(
            qp.REQUEST_DURATION, "The duration of task execution", list(qp.LABELS),
            buckets=qp.LATENCY_BUCKETS_S, registry=self.registry)
        self.logger_sent = Counter("logger_events_sent", "Inference logger CloudEvents sent",
                                   ["inferenceservice"], registry=self.registry)
        self.logger_dropped = Counter("logger_events_dropped", "Inference logger CloudEvents dropped",
                                      ["inferenceservice"], registry=self.registry)
        self.logger_sent.labels(manifest.name)
        self.logger_dropped.labels(manifest.name)
        Gauge("logger_events_queued", "Inference logger CloudEvents waiting to be sent",
              registry=self.registry).set_function(lambda: self.logger.backlog if self.logger else 0)
        self.shadow = ShadowMirror(self.registry, manifest.name)
        self.logger: InferenceLogger | None = None
        spec = manifest.logger
        if logger_enabled and (spec or logger_url):
            url = logger_url or (local_logger_url(spec.url) if spec else "")
            self.logger = InferenceLogger(url, spec.mode if spec else "all", manifest.name,
                                          manifest.namespace, self.logger_sent, self.logger_dropped,
                                          queue_size=logger_queue, workers=logger_workers,
                                          timeout_s=logger_timeout_s, queue_bytes=logger_queue_bytes,
                                          sink_token=control.sink_token_for(url))
        self._client: httpx.AsyncClient | None = None
        # Crash handling: revisions answer 503 while not ready; canary pairs are restarted here.
        self.readiness = RevisionReadiness(self._probe, lambda: self.revisions)
        self.supervisor = Supervisor()
        self.status_file = Path(status_file) if status_file else None  # the serve supervisor's

    # -- routing -------------------------------------------------------------------------
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
            if not control.authorized(request.headers, self.control_token):
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

    # -- proxying ----------------------------------------------------------------------
    async def forward(self, request: Request) -> Response:
        try:
            revision = self.select_revision(request)
        except PermissionError as exc:
            return _error(403, str(exc))
        except LookupError as exc:
            return _error(404, str(exc))
        started = time.perf_counter()
        try:  # the limit holds while the body streams in, before it is logged or forwarded
            body = await bodylimit.read_body(request, self.max_body_bytes)
        except bodylimit.BodyTooLarge as exc:
            self.observe(revision, 413, started)
            return _error(413, str(exc))
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
                return _error(413, str(exc))
        # The control token stays here: the transformer never needs it.
        drop = {TAG_HEADER} | ({"authorization"} if control.authorized(request.headers, self.control_token)
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
            upstream = await self._client.request(request.method, url, content=body, headers=headers)
        except httpx.ConnectTimeout as exc:
            return self._unreachable(revision, exc)
        except httpx.TimeoutException:
            return _error(504, f"transformer of revision {revision.name} did not answer within "
                               f"{self.timeout_s:.0f} s")
        except httpx.TransportError as exc:  # refused, reset, closed mid-answer: it is down
            return self._unreachable(revision, exc)
        out_headers = {k: v for k, v in upstream.headers.items()
                       if k.lower() not in HOP_HEADERS and k.lower() != "content-encoding"}
        return Response(upstream.content, status_code=upstream.status_code, headers=out_headers)

    async def feedback(self, request: Request) -> Response:
        """``POST /v1/feedback`` to the capture/feedback service, as the ingress routes it."""
        if self.feedback_url is None:
            return _error(503, "no feedback service is configured on this gateway (--feedback-url)")
        try:  # refused while it streams in, like a model request
            body = await bodylimit.read_body(request, FEEDBACK_MAX_BODY_BYTES)
        except bodylimit.BodyTooLarge as exc:
            return _error(413, f"feedback {exc}")
        assert self._client is not None
        try:
            upstream = await self._client.post(
                self.feedback_url + FEEDBACK_PATH, content=body, timeout=10.0,
                headers={"content-type": request.headers.get("content-type", "application/json")})
        except httpx.HTTPError as exc:
            return _error(503, f"the feedback service at {self.feedback_url} is not reachable "
                               f"({type(exc).__name__}); try again shortly")
        try:
            answer = upstream.json()
        except ValueError:
            answer = None
        inference_id = answer.get("inference_id") if isinstance(answer, dict) else None
        log_json("gateway", "feedback", inference_id, status=upstream.status_code)
        out = {k: v for k, v in upstream.headers.items()
               if k.lower() not in HOP_HEADERS and k.lower() != "content-encoding"}
        return Response(upstream.content, status_code=upstream.status_code, headers=out)

    async def _probe(self, revision: Revision) -> str | None:
        assert self._client is not None, "the gateway's HTTP client starts with the app"
        return await probe_revision(self._client, revision, self.manifest.model_name)

    @staticmethod
    def _unreachable(revision: Revision, exc: Exception) -> Response:
        return _error(503, f"transformer of revision {revision.name} at {revision.transformer_url} "
                           f"is not reachable ({type(exc).__name__}: {exc}); is it running?")

    # -- rollout control (the Knative controller's part) ------------------------------------
    def components(self) -> list[dict]:
        """Every supervised process: the serve supervisor's (its state file) and the canaries'."""
        own = [c for c in self.supervisor.states() if c["state"] != "stopped"]
        return (read_state_file(self.status_file) if self.status_file else []) + own

    def status(self) -> dict:
        return {
            "inferenceservice": self.manifest.name, "namespace": self.manifest.namespace,
            "model": self.manifest.model_name, "configuration": self.configuration,
            "canary_traffic_percent": self.canary_percent,
            "latest_rolledout_revision": self.rolled_out,
            "latest_revision": self.revisions[-1].name,
            "revisions": [{**r.public(), "ready": self.readiness.ready(r.name),
                           "not_ready_reason": self.readiness.reason(r.name)} for r in self.revisions],
            "shadow": self.shadow.status(),
            "components": self.components(),
            "logger": None if self.logger is None else {
                "url": self.logger.url, "mode": self.logger.mode,
                "sent": self.logger.sent._value.get(), "dropped": self.logger.dropped._value.get(),
                "queued": self.logger.backlog},
        }

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

    async def _retire(self, names: set[str]) -> None:
        """Drop revisions from the table, then stop the pairs this gateway started for them."""
        self.revisions = [r for r in self.revisions if r.name not in names]
        for name in names:
            self.readiness.forget(name)
            pair = self._pairs.pop(name, None)
            if pair is not None:
                for service in pair.services:
                    self.supervisor.forget(service)
                await asyncio.to_thread(pair.stop)

    async def start_canary(self, bundle: str, percent: int, version: str | None = None) -> Revision:
        """A new latest revision from ``bundle`` (its own Triton + transformer) at ``percent``%."""
        path = control.bundle_in_store(bundle, self.model_store)  # before any heavy import
        from gourmetgram.export import validate_bundle
        from gourmetgram.local.stack import Ports, RevisionPair

        validate_bundle(path, self.manifest.model_name)
        generation = max(generation_of(r.name) for r in self.revisions) + 1
        name = revision_name(self.manifest, generation)
        log_dir = self.log_dir or Path.cwd()
        pair = RevisionPair(path, name, self.manifest, Ports.free(self.host), self.host, log_dir)
        await pair.start_async(cwd=log_dir)
        self._pairs[name] = pair
        for service in pair.services:  # restarted when they crash, as the first revision's are
            self.supervisor.adopt(service, log_dir, revision=name)
        await self._warm_up(pair.transformer_url)
        # A latest revision that never rolled out is replaced (Knative keeps only prev/latest routed).
        replaced = {r.name for r in self.revisions if r.name != self.rolled_out}
        self.revisions.append(Revision(name, pair.transformer_url, 0, None, str(path), version,
                                       pair.triton_metrics_url, pair.triton_url))
        self.canary_percent = percent
        self._apply_split()
        await self._retire(replaced)
        return self.revisions[-1]

    async def start_shadow(self, bundle: str, percent: int, version: str | None = None) -> Revision:
        """A shadow revision from ``bundle`` (its own Triton + transformer) mirrored ``percent``%
        of model requests; it replaces a running shadow. It never takes client traffic."""
        path = control.bundle_in_store(bundle, self.model_store)
        from gourmetgram.export import validate_bundle
        from gourmetgram.local.stack import Ports, RevisionPair

        validate_bundle(path, self.manifest.model_name)
        previous = self.shadow.revision
        generation = generation_of(previous.name) + 1 if previous is not None else 1
        name = f"{self.manifest.name}-{SHADOW}-predictor-{generation:05d}"
        log_dir = self.log_dir or Path.cwd()
        pair = RevisionPair(path, name, self.manifest, Ports.free(self.host), self.host, log_dir)
        await pair.start_async(cwd=log_dir)
        self._pairs[name] = pair
        await self._warm_up(pair.transformer_url)
        revision = Revision(name, pair.transformer_url, 0, SHADOW, str(path), version,
                            pair.triton_metrics_url)
        self.shadow.attach(revision, percent)
        if previous is not None:
            await self._stop_pair(previous.name)
        return revision

    async def stop_shadow(self) -> None:
        previous = self.shadow.revision
        if previous is None:
            raise UserError("no shadow revision is running")
        self.shadow.detach()
        await self._stop_pair(previous.name)

    def shadow_pids(self) -> dict[str, int | None]:
        """The shadow's processes (what a fault test kills)."""
        pair = self._pairs.get(self.shadow.revision.name) if self.shadow.revision else None
        return {s.name: s.pid for s in pair.services} if pair is not None else {}  # type: ignore[attr-defined]

    async def _stop_pair(self, name: str) -> None:
        pair = self._pairs.pop(name, None)
        if pair is not None:
            await asyncio.to_thread(pair.stop)

    async def _warm_up(self, transformer_url: str, requests: int = WARMUP_REQUESTS) -> None:
        """A few predictions straight to a new transformer before it takes traffic, so the
        first users (and the canary's p95) do not pay for ONNX Runtime's and Triton's first
        inferences. Not counted: it bypasses the revision metrics, like a readiness probe."""
        url = f"{transformer_url}/v1/models/{self.manifest.model_name}:predict"
        body = {"instances": [{"image": {"b64": _warmup_image()}}]}
        assert self._client is not None
        for _ in range(requests):
            try:
                await self._client.post(url, json=body)
            except httpx.HTTPError:
                return

    async def set_percent(self, percent: int) -> None:
        if len(self.revisions) < 2:
            raise UserError("no canary revision: start one with a bundle first")
        self.canary_percent = percent
        self._apply_split()

    async def promote(self) -> None:
        """canaryTrafficPercent removed: latest takes 100% and becomes the rolled-out revision."""
        latest = self.revisions[-1]
        if latest.name == self.rolled_out:
            raise UserError(f"nothing to promote: {latest.name} already serves all traffic")
        self.rolled_out, self.canary_percent = latest.name, None
        self._apply_split()
        await self._retire({r.name for r in self.revisions if r is not latest})

    async def rollback(self) -> None:
        """canaryTrafficPercent 0: all traffic to prev; latest stays reachable by its tag."""
        await self.set_percent(0)

    async def control(self, action: dict) -> dict:
        kind = action.get("action")
        percent = action.get("percent")
        if percent is not None and (isinstance(percent, bool) or not isinstance(percent, int)
                                    or not 0 <= percent <= 100):
            raise UserError(f"percent must be an integer in 0..100, got {percent!r}")
        async with self._control_lock:
            if kind == "canary":
                if not action.get("bundle"):
                    raise UserError("a canary needs a bundle")
                await self.start_canary(str(action["bundle"]), 10 if percent is None else percent,
                                        None if action.get("version") is None else str(action["version"]))
            elif kind == "percent":
                if percent is None:
                    raise UserError("action percent needs a percent")
                await self.set_percent(percent)
            elif kind == "promote":
                await self.promote()
            elif kind == "rollback":
                await self.rollback()
            elif kind == "shadow":
                if action.get("bundle"):
                    await self.start_shadow(str(action["bundle"]), 100 if percent is None else percent,
                                            None if action.get("version") is None else str(action["version"]))
                elif self.shadow.revision is None:
                    raise UserError("no shadow revision is running: start one with a bundle")
                elif percent is None:
                    raise UserError("action shadow needs a bundle (start) or a percent (re-weight)")
                else:
                    self.shadow.percent = percent
            elif kind == "shadow_stop":
                await self.stop_shadow()
            else:
                raise UserError(f"unknown action {kind!r}; use canary, percent, promote, rollback, "
                                "shadow or shadow_stop")
            log.warning("rollout %s: %s", kind, [(r.name, r.percent, r.tag) for r in self.revisions])
            return self.status()

    def targets(self) -> list[dict]:
        """Prometheus HTTP service discovery: every revision's transformer and Triton metrics."""
        groups = []
        for r in [*self.revisions, *([self.shadow.revision] if self.shadow.revision else [])]:
            labels = {"gourmetgram_revision": r.name}
            groups.append({"targets": [urlsplit(r.transformer_url).netloc],
                           "labels": {**labels, "gourmetgram_component": "transformer"}})
            if r.triton_metrics_url:
                groups.append({"targets": [urlsplit(r.triton_metrics_url).netloc],
                               "labels": {**labels, "gourmetgram_component": "predictor"}})
        return groups

    # -- app -----------------------------------------------------------------------------
    def metrics_text(self) -> str:
        return generate_latest(self.registry).decode()

    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(_app):
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s, connect=2.0),
                                             limits=httpx.Limits(max_connections=256))
            if self.logger is not None:
                await self.logger.start()
            await self.shadow.start()
            self.readiness.start()
            try:
                yield
            finally:
                self.supervisor.halt()  # no restarts while the pairs are stopped below
                await self.readiness.stop()
                await self.shadow.stop()
                if self.logger is not None:
                    await self.logger.stop()
                await self._client.aclose()
                # in parallel: each Triton takes seconds to unload
                await asyncio.gather(*(asyncio.to_thread(pair.stop) for pair in self._pairs.values()))
                self._pairs.clear()

        async def live(_request: Request) -> Response:
            return JSONResponse({"live": True})

        async def ready(request: Request) -> Response:
            # Ready when the transformer behind it is: what the ingress would report.
            try:
                revision = self.select_revision(request)
            except PermissionError as exc:
                return _error(403, str(exc))
            except LookupError as exc:
                return _error(404, str(exc))
            return await self._send_if_ready(request, revision)

        async def metrics(_request: Request) -> Response:
            return PlainTextResponse(self.metrics_text(), media_type=CONTENT_TYPE_LATEST)

        async def index(_request: Request) -> Response:
            return JSONResponse(self.status())

        async def rollout(request: Request) -> Response:
            if request.method == "GET":
                return JSONResponse(self.status())
            refused = control.refuse(request.headers, self.control_token)
            if refused is not None:
                return refused
            try:
                action = json.loads(await bodylimit.read_body(request, control.MAX_CONTROL_BODY_BYTES))
            except bodylimit.BodyTooLarge as exc:
                return _error(413, str(exc))
            except ValueError:
                return _error(400, "the body must be JSON: {\"action\": canary|percent|promote|rollback, ...}")
            if not isinstance(action, dict):
                return _error(400, "the body must be a JSON object")
            try:
                return JSONResponse(await self.control(action))
            except DependencyUnavailable as exc:  # the new revision did not come up
                return _error(503, str(exc))
            except UserError as exc:
                return _error(400, str(exc))

        async def targets(_request: Request) -> Response:
            return JSONResponse(self.targets())

        async def shadow(request: Request) -> Response:
            # The pairs are predictions on users' requests: behind the token, like tag routing.
            if not control.authorized(request.headers, self.control_token):
                return _error(401, "the shadow's answers need the stack's control token "
                                   "('Authorization: Bearer <token>'; `gourmetgram rollout shadow` sends it)")
            return JSONResponse({"shadow": self.shadow.status(), "pids": self.shadow_pids(),
                                 "pairs": self.shadow.pairs()})

        routes = [
            Route("/", index, methods=["GET"]),
            Route("/healthz", live, methods=["GET"]),
            Route("/v2/health/live", live, methods=["GET"]),
            Route("/v2/health/ready", ready, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route(f"{CONTROL_PREFIX}/rollout", rollout, methods=["GET", "POST"]),
            Route(f"{CONTROL_PREFIX}/targets", targets, methods=["GET"]),
            Route(FEEDBACK_PATH, self.feedback, methods=["POST"]),
            Route(f"{CONTROL_PREFIX}/shadow", shadow, methods=["GET"]),
            Route("/v1/models/{rest:path}", self.forward, methods=["GET", "POST"]),
            Route("/v2/{rest:path}", self.forward, methods=["GET", "POST"]),
        ]
        return Starlette(routes=routes, lifespan=lifespan)


def _warmup_image() -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 96, 64)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gourmetgram.local.gateway",
                                description="Local stand-in for the KServe ingress (one stage).")
    p.add_argument("--manifest", required=True, help="inference_services/<stage>.yaml")
    p.add_argument("--revision", action="append", required=True, metavar="NAME=URL",
                   help="a transformer revision; the first is the rolled-out one")
    p.add_argument("--bundle", help="the first revision's model bundle (for status)")
    p.add_argument("--triton-metrics", help="the first revision's Triton metrics URL (for Prometheus)")
    p.add_argument("--triton-url", help="the first revision's Triton HTTP URL (readiness probe)")
    p.add_argument("--status-file", help="the serve supervisor's component states (shown in status)")
    p.add_argument("--log-dir", help="where canary revisions write their logs (default: cwd)")
    p.add_argument("--logger-url", help="inference logger sink (default: the manifest's logger.url; "
                   "a cluster-only URL becomes the local detector)")
    p.add_argument("--no-logger", action="store_true", help="do not send logger CloudEvents")
    p.add_argument("--feedback-url", help="the capture/feedback service that POST /v1/feedback goes to")
    p.add_argument("--model-version", help="the first revision's registered model version (for capture)")
    p.add_argument("--logger-queue", type=int, default=1000, help="logger queue size (default: %(default)s)")
    p.add_argument("--logger-timeout", type=float, default=2.0,
                   help="seconds the logger waits on its sink per event before counting a drop (default: %(default)s)")
    p.add_argument("--logger-queue-bytes", type=int, default=LOGGER_QUEUE_BYTES,
                   help="most bytes of events waiting for the logger sink (default: %(default)s)")
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                   help="largest request body accepted, else 413 (default: %(default)s)")
    p.add_argument("--control-token-file",
                   help="file holding the control API's token (default: the stack's state folder "
                        "$GOURMETGRAM_HOME/stacks/<host>-<port>/control-token, created if missing)")
    p.add_argument("--model-store", help="canary bundles must be inside this folder "
                   "(default: $GOURMETGRAM_HOME/models)")
    p.add_argument("--host", default=constants.HOST, help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=constants.GATEWAY_PORT)
    p.add_argument("--timeout", type=float, default=60.0, help="upstream timeout in seconds")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = parse_args(argv)
    try:
        revisions = [Revision.parse(r) for r in args.revision]
        revisions[0].bundle, revisions[0].triton_metrics_url = args.bundle, args.triton_metrics
        revisions[0].version = args.model_version
        revisions[0].triton_url = args.triton_url
        for r in revisions[1:]:
            r.percent = 0
        gateway = Gateway(load_manifest(args.manifest), revisions, timeout_s=args.timeout,
                          logger_url=args.logger_url, logger_enabled=not args.no_logger,
                          logger_queue=args.logger_queue, logger_timeout_s=args.logger_timeout,
                          log_dir=args.log_dir, host=args.host,
                          control_token=control.gateway_token(args.control_token_file, args.host,
                                                              args.port),
                          model_store=args.model_store, max_body_bytes=args.max_body_bytes,
                          logger_queue_bytes=args.logger_queue_bytes, feedback_url=args.feedback_url,
                          status_file=args.status_file)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(gateway.app(), host=args.host, port=args.port, log_level="warning",
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The local gateway: a stand-in for the Istio/Knative ingress in front of the transformer.

On the cluster a request to an InferenceService passes the Istio ingress, which picks a
Knative revision (by ``canaryTrafficPercent`` or by tag), and that revision's queue-proxy,
which measures it (``kn_serving_invocation_duration_seconds``, Knative 1.21; the names are in
gourmetgram/metric_names.py), and the KServe agent, which sends the request and its response to
the logger's sink as CloudEvents. Locally :class:`Gateway` (an ASGI app) does the same for
transformer processes on localhost, under the SAME metric names, so the same PromQL,
dashboards and alert rules work on both. By concern:

* :mod:`~gourmetgram_app.local.gateway.routing`: traffic split, tag routing, forwarding, feedback;
* :mod:`~gourmetgram_app.local.gateway.logger`: the inference logger (CloudEvents to the sink);
* :mod:`~gourmetgram_app.local.gateway.control`: the token-protected control API (rollout, shadow);
* :mod:`~gourmetgram_app.local.gateway.discovery`: where revisions listen, Prometheus targets;
* this module: the gateway's state and metrics, and the app that puts the routes together.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gourmetgram import constants
from gourmetgram import control as policy
from gourmetgram import metric_names as qp
from gourmetgram.errors import BadInput
from gourmetgram.http_errors import EXCEPTION_HANDLERS
from gourmetgram_app.local import httpclient
from gourmetgram_app.local.gateway.control import Controller, _Stoppable
from gourmetgram_app.local.gateway.discovery import Revision
from gourmetgram_app.local.gateway.logger import LOGGER_QUEUE_BYTES, LOGGER_QUEUE_EVENTS, InferenceLogger
from gourmetgram_app.local.gateway.routing import FEEDBACK_PATH, MAX_BODY_BYTES
from gourmetgram_app.local.manifests import ServiceManifest, configuration_name, local_logger_url
from gourmetgram_app.local.readiness import RevisionReadiness
from gourmetgram_app.local.shadow import ShadowMirror
from gourmetgram_app.local.supervisor import Supervisor


class Gateway(Controller):
    """Routes model requests to transformer revisions, measures them like queue-proxy, logs them."""

    def __init__(self, manifest: ServiceManifest, revisions: list[Revision],
                 timeout_s: float = 60.0, logger_url: str | None = None, logger_enabled: bool = True,
                 logger_queue: int = LOGGER_QUEUE_EVENTS, logger_workers: int = 4, logger_timeout_s: float = 2.0,
                 log_dir: str | Path | None = None, host: str = constants.HOST,
                 seed: int | None = None, control_token: str | None = None,
                 model_store: str | Path | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 logger_queue_bytes: int = LOGGER_QUEUE_BYTES, feedback_url: str | None = None,
                 status_file: str | Path | None = None, state_file: str | Path | None = None) -> None:
        """``control_token``: what the control API and tag routing require (None: a random
        one, readable as ``self.control_token``); ``model_store``: the only place canary
        bundles may come from (default ``$GOURMETGRAM_HOME/models``); ``feedback_url``: the
        capture/feedback service ``POST /v1/feedback`` is routed to; ``status_file``: the
        serve supervisor's component states, shown in the status; ``state_file``: where the
        rollout is saved after each change and restored from at start (None: neither)."""
        if not revisions:
            raise BadInput("the gateway needs at least one revision")
        self.manifest = manifest
        self.revisions = list(revisions)
        self._given = list(revisions)
        self.timeout_s = timeout_s
        self.host = host
        self.log_dir = Path(log_dir) if log_dir else None
        self.control_token = control_token or secrets.token_urlsafe(32)
        self.model_store = Path(model_store).resolve() if model_store else policy.model_store()
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
        self.logger_retried = Counter("logger_events_retried", "Inference logger deliveries retried "
                                      "(the sink was away, slow or answered 5xx)", ["inferenceservice"],
                                      registry=self.registry)
        self.logger_sent.labels(manifest.name)
        self.logger_dropped.labels(manifest.name)
        self.logger_retried.labels(manifest.name)
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
                                          sink_token=policy.sink_token_for(url), retried=self.logger_retried)
        self._client: aiohttp.ClientSession | None = None
        # Crash handling: revisions answer 503 while not ready; canary pairs are restarted here.
        self.readiness = RevisionReadiness(self._probe, lambda: self.revisions)
        self.supervisor = Supervisor()
        self.status_file = Path(status_file) if status_file else None  # the serve supervisor's
        self.state_file = Path(state_file) if state_file else None
        self._restoring = None

    # -- app -----------------------------------------------------------------------------
    def metrics_text(self) -> str:
        return generate_latest(self.registry).decode()

    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(_app):
            # On the serving loop: an aiohttp session belongs to the loop it was made on.
            self._client = httpclient.session(limit=256, total_s=self.timeout_s, connect_s=2.0)
            if self.logger is not None:
                await self.logger.start()
            await self.shadow.start()
            self.restore()  # a restarted gateway routes as before (pairs start in the background)
            self.readiness.start()
            restoring = asyncio.create_task(self.start_restored())
            try:
                yield
            finally:
                restoring.cancel()  # a pair half started is stopped by its own start
                await asyncio.gather(restoring, return_exceptions=True)
                self.supervisor.halt()  # no restarts while the pairs are stopped below
                await self.readiness.stop()
                await self.shadow.stop()
                if self.logger is not None:
                    await self.logger.stop()
                await self._client.close()
                # in parallel: each Triton takes seconds to unload
                await asyncio.gather(*(asyncio.to_thread(pair.stop) for pair in self._pairs.values()))
                self._pairs.clear()

        async def live(_request: Request) -> Response:
            return JSONResponse({"live": True})

        async def ready(request: Request) -> Response:
            # Ready when the transformer behind it is: what the ingress would report.
            revision = self.route(request)
            if isinstance(revision, Response):
                return revision
            return await self._send_if_ready(request, revision)

        async def metrics(_request: Request) -> Response:
            return PlainTextResponse(self.metrics_text(), media_type=CONTENT_TYPE_LATEST)

        async def kserve_live(_request: Request) -> Response:
            # What KServe's model server answers on / (its v1 liveness, which KServe's own
            # InferenceRESTClient(protocol="v1").is_server_live reads); the status is
            # GET /_gourmetgram/rollout.
            return JSONResponse({"status": "alive"})

        routes = [
            Route("/", kserve_live, methods=["GET"]),
            Route("/healthz", live, methods=["GET"]),
            Route("/v2/health/live", live, methods=["GET"]),
            Route("/v2/health/ready", ready, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *self.control_routes(),
            Route(FEEDBACK_PATH, self.feedback, methods=["POST"]),
            Route("/v1/models/{rest:path}", self.forward, methods=["GET", "POST"]),
            Route("/v2/{rest:path}", self.forward, methods=["GET", "POST"]),
        ]
        return Starlette(routes=routes, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)

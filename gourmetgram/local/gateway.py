"""The local gateway: a stand-in for the Istio/Knative ingress in front of the transformer.

On the cluster a request to an InferenceService passes the Istio ingress, which picks a
Knative revision (by ``canaryTrafficPercent`` or by tag), and that revision's queue-proxy,
which counts it (``revision_app_request_count``, ``revision_app_request_latencies``).
Locally this small ASGI app does the same for transformer processes on localhost: it reads
the stage's InferenceService manifest, forwards ``/v1/models/...`` and ``/v2/...`` to the
chosen revision's transformer and exposes the queue-proxy metrics under the SAME names, so
the same PromQL, dashboards and alert rules work on both.

Extension point: :class:`Revision` (name, transformer URL, traffic percent, tag) and
:meth:`Gateway.select_revision`. Today one revision takes all traffic; canary splitting
(``prev``/``latest``, tag routing) and the inference logger plug in there.

Run: ``python -m gourmetgram.local.gateway --manifest inference_services/staging.yaml
--revision food11-staging-transformer-00001=http://127.0.0.1:8080``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from collections import defaultdict
from contextlib import asynccontextmanager

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gourmetgram import constants
from gourmetgram.errors import UserError
from gourmetgram.local.manifests import ServiceManifest, load_manifest

# Knative queue-proxy's latency buckets (milliseconds).
LATENCY_BUCKETS_MS = (5, 10, 20, 40, 60, 80, 100, 150, 200, 250, 300, 350, 400, 450, 500, 600,
                      700, 800, 900, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
MAX_BODY_BYTES = 64 * 1024 * 1024
# Headers that describe one hop, not the request (RFC 9110 7.6.1), plus what httpx recomputes.
HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailer", "transfer-encoding", "upgrade", "host", "content-length"}


@dataclasses.dataclass
class Revision:
    """One Knative revision of the transformer: where it listens and its share of traffic.

    ``tag`` is ``prev``/``latest`` when KServe's tag routing applies (set by the canary
    extension); ``percent`` is the traffic share in 0..100.
    """

    name: str
    transformer_url: str
    percent: int = 100
    tag: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Revision":
        """``NAME=URL`` (the CLI form)."""
        name, sep, url = text.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise UserError(f"revision {text!r} is not NAME=http://HOST:PORT")
        return cls(name=name, transformer_url=url.rstrip("/"))


def configuration_name(manifest: ServiceManifest) -> str:
    """The Knative Configuration KServe creates for the transformer component."""
    return f"{manifest.name}-transformer"


def revision_name(manifest: ServiceManifest, generation: int = 1) -> str:
    """A Knative-style revision name (``<configuration>-00001``)."""
    return f"{configuration_name(manifest)}-{generation:05d}"


class RequestCounter:
    """``revision_app_request_count`` exactly as queue-proxy exposes it (no ``_total`` suffix).

    prometheus_client's Counter always appends ``_total``, which would break the PromQL
    written for the cluster, so this one counter renders its own text.
    """

    NAME = "revision_app_request_count"
    LABELS = ("namespace_name", "configuration_name", "revision_name", "response_code",
              "response_code_class")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, ...], int] = defaultdict(int)

    def inc(self, *labels: str) -> None:
        with self._lock:
            self._counts[labels] += 1

    def value(self, **labels: str) -> int:
        """Sum over the series matching ``labels`` (tests, benchmarks)."""
        with self._lock:
            return sum(n for key, n in self._counts.items()
                       if all(dict(zip(self.LABELS, key)).get(k) == v for k, v in labels.items()))

    def render(self) -> str:
        lines = [f"# HELP {self.NAME} The number of requests that are routed to the revision.",
                 f"# TYPE {self.NAME} counter"]
        with self._lock:
            for key, n in sorted(self._counts.items()):
                labels = ",".join(f'{k}="{v}"' for k, v in zip(self.LABELS, key))
                lines.append(f"{self.NAME}{{{labels}}} {n}")
        return "\n".join(lines) + "\n"


class Gateway:
    """Routes model requests to a transformer revision and measures them like queue-proxy."""

    def __init__(self, manifest: ServiceManifest, revisions: list[Revision],
                 timeout_s: float = 60.0) -> None:
        if not revisions:
            raise UserError("the gateway needs at least one revision")
        self.manifest = manifest
        self.revisions = list(revisions)
        self.timeout_s = timeout_s
        self.configuration = configuration_name(manifest)
        self.registry = CollectorRegistry()
        self.request_count = RequestCounter()
        self.request_latency = Histogram(
            "revision_app_request_latencies", "The response time in millisecond",
            ["namespace_name", "configuration_name", "revision_name"],
            buckets=LATENCY_BUCKETS_MS, registry=self.registry)
        # The logger's counters (filled in when the logger is added) exist from the start
        # so dashboards and alert rules find them.
        self.logger_sent = Counter("logger_events_sent", "Inference logger CloudEvents sent",
                                   ["inferenceservice"], registry=self.registry)
        self.logger_dropped = Counter("logger_events_dropped", "Inference logger CloudEvents dropped",
                                      ["inferenceservice"], registry=self.registry)
        self.logger_sent.labels(manifest.name)
        self.logger_dropped.labels(manifest.name)
        self._client: httpx.AsyncClient | None = None

    # -- routing (the extension point) -------------------------------------------------
    def select_revision(self, request: Request) -> Revision:
        """The revision that serves ``request``. One revision today: it takes all traffic."""
        return self.revisions[0]

    # -- proxying ----------------------------------------------------------------------
    async def forward(self, request: Request) -> Response:
        revision = self.select_revision(request)
        started = time.perf_counter()
        response = await self._send(request, revision)
        self.observe(revision, response.status_code, started)
        return response

    def observe(self, revision: Revision, status: int, started: float) -> None:
        self.request_count.inc(self.manifest.namespace, self.configuration, revision.name,
                               str(status), f"{status // 100}xx")
        self.request_latency.labels(self.manifest.namespace, self.configuration,
                                    revision.name).observe((time.perf_counter() - started) * 1000)

    async def _send(self, request: Request, revision: Revision) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, f"request body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        url = revision.transformer_url + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        assert self._client is not None, "the gateway's HTTP client starts with the app"
        try:
            upstream = await self._client.request(request.method, url, content=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
            return _error(503, f"transformer of revision {revision.name} at {revision.transformer_url} "
                               f"is not reachable ({type(exc).__name__}: {exc}); is it running?")
        except httpx.TimeoutException:
            return _error(504, f"transformer of revision {revision.name} did not answer within "
                               f"{self.timeout_s:.0f} s")
        out_headers = {k: v for k, v in upstream.headers.items()
                       if k.lower() not in HOP_HEADERS and k.lower() != "content-encoding"}
        return Response(upstream.content, status_code=upstream.status_code, headers=out_headers)

    # -- app -----------------------------------------------------------------------------
    def metrics_text(self) -> str:
        return self.request_count.render() + generate_latest(self.registry).decode()

    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(_app):
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s, connect=2.0),
                                             limits=httpx.Limits(max_connections=256))
            try:
                yield
            finally:
                await self._client.aclose()

        async def live(_request: Request) -> Response:
            return JSONResponse({"live": True})

        async def ready(request: Request) -> Response:
            # Ready when the transformer behind it is: what the ingress would report.
            return await self._send(request, self.select_revision(request))

        async def metrics(_request: Request) -> Response:
            return PlainTextResponse(self.metrics_text(), media_type=CONTENT_TYPE_LATEST)

        async def index(_request: Request) -> Response:
            return JSONResponse({
                "inferenceservice": self.manifest.name, "namespace": self.manifest.namespace,
                "model": self.manifest.model_name,
                "revisions": [dataclasses.asdict(r) for r in self.revisions],
            })

        routes = [
            Route("/", index, methods=["GET"]),
            Route("/healthz", live, methods=["GET"]),
            Route("/v2/health/live", live, methods=["GET"]),
            Route("/v2/health/ready", ready, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/v1/models/{rest:path}", self.forward, methods=["GET", "POST"]),
            Route("/v2/{rest:path}", self.forward, methods=["GET", "POST"]),
        ]
        return Starlette(routes=routes, lifespan=lifespan)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gourmetgram.local.gateway",
                                description="Local stand-in for the KServe ingress (one stage).")
    p.add_argument("--manifest", required=True, help="inference_services/<stage>.yaml")
    p.add_argument("--revision", action="append", required=True, metavar="NAME=URL",
                   help="a transformer revision; the first takes all traffic")
    p.add_argument("--host", default=constants.HOST, help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=constants.GATEWAY_PORT)
    p.add_argument("--timeout", type=float, default=60.0, help="upstream timeout in seconds")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = parse_args(argv)
    try:
        gateway = Gateway(load_manifest(args.manifest), [Revision.parse(r) for r in args.revision],
                          timeout_s=args.timeout)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(gateway.app(), host=args.host, port=args.port, log_level="warning",
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

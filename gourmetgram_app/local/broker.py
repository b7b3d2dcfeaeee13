"""A local stand-in for a Knative Eventing Broker with Triggers: the logger's fan-out.

KServe's inference logger posts every event to ONE URL. On the cluster that URL is a
Knative Broker (``http://broker-ingress.knative-eventing.svc.cluster.local/<ns>/<broker>``,
KServe's documented pattern), and one Trigger per consumer (the drift detector, the capture
sink) delivers a copy, retrying with back-off as the Trigger's ``delivery`` spec says. This
small ASGI app does the same on localhost, with the same semantics:

* ``POST /``: a binary-mode CloudEvent (``ce-specversion``, ``ce-id``, ``ce-type``,
  ``ce-source`` required, else 400); each trigger whose filter matches (exact attribute
  match, like a Trigger's ``filter.attributes``) is owed a copy, and the event is
  **committed to the broker's store** (:mod:`gourmetgram_app.local.eventstore`, SQLite in WAL
  mode) before the 202 Accepted: what the broker acknowledged survives its ``kill -9``. A
  trigger already owed ``queue_size`` events does not get this one (dropped, counted); the
  store cannot take it (disk full...): 503, and the logger retries.
* Delivery per trigger, from the store (oldest first; at start, what a previous run still
  owed): a 2xx from the subscriber acknowledges the event; anything else
  (error, timeout, 429/5xx) is retried ``retry`` times with exponential back-off from
  ``backoff_s`` (Knative's ``retry``/``backoffPolicy: exponential``/``backoffDelay``); what is
  still undelivered is dropped and counted (Knative would send it to a dead-letter sink).
  A 4xx other than 429 is final (the subscriber says the event is bad).
* ``GET /metrics``: ``broker_events_received_total``, ``broker_deliveries_total{trigger,outcome}``
  (outcome ``acked``, ``retried``, ``dropped``, ``rejected``), ``broker_queue{trigger}`` (owed,
  stored), ``broker_events_recovered_total{trigger}`` (found owed in the store at start).

Delivery is at least once (a copy delivered just before a kill is delivered again): the
consumers are idempotent on the event's ``ce-id`` + ``ce-type`` (the capture sink upserts, the
drift detector skips a repeat). A Kafka-backed Knative broker gives the same on the cluster.

Run: ``python -m gourmetgram_app.local.broker --port 8060 --store broker.db
--trigger detector=http://127.0.0.1:8070/ --trigger capture=http://127.0.0.1:8071/``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import logging
import os
import random
import sqlite3
import sys
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gourmetgram import constants
from gourmetgram.errors import BadInput, DependencyUnavailable, PayloadTooLarge, entry_point
from gourmetgram.http_errors import EXCEPTION_HANDLERS
from gourmetgram.tracking import home
from gourmetgram_app.local import httpclient
from gourmetgram_app.local.eventstore import EventStore

REQUIRED = ("ce-specversion", "ce-id", "ce-type", "ce-source")
MAX_BODY_BYTES = 64 * 1024 * 1024
FORWARDED = ("content-type",)
log = logging.getLogger("gourmetgram.broker")


@dataclasses.dataclass
class Trigger:
    """One consumer: where to deliver, which events (exact attribute match), how to retry."""

    name: str
    url: str
    filter: dict[str, str] = dataclasses.field(default_factory=dict)
    retry: int = 10
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    timeout_s: float = 5.0
    queue_size: int = 10000  # most events owed to this trigger (stored, undelivered)
    workers: int = 4

    token: str | None = None  # sent as Authorization: Bearer (the local detector's ingest token)

    @classmethod
    def parse(cls, text: str, **defaults) -> "Trigger":
        """``NAME=URL[,attr=value...][,token-file=PATH|token-env=VAR]``, e.g.
        ``detector=http://127.0.0.1:8070/,type=org.kubeflow...,token-file=/path/detector-token``."""
        head, *filters = text.split(",")
        name, sep, url = head.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise BadInput(f"trigger {text!r} is not NAME=http://HOST:PORT/[,ATTRIBUTE=VALUE...]")
        attrs, token = {}, None
        for f in filters:
            key, sep, value = f.partition("=")
            if not sep or not key:
                raise BadInput(f"trigger {text!r}: filter {f!r} is not ATTRIBUTE=VALUE")
            key, value = key.strip().lower(), value.strip()
            if key == "token-file":
                try:
                    token = Path(value).read_text().strip()
                except OSError as exc:
                    raise BadInput(f"trigger {name}: cannot read its token file {value}: {exc}") from None
            elif key == "token-env":
                token = os.environ.get(value, "").strip() or None
                if token is None:
                    raise BadInput(f"trigger {name}: the environment variable {value} is empty")
            else:
                attrs[key] = value
        return cls(name=name, url=url, filter=attrs, token=token, **defaults)

    def matches(self, attributes: dict[str, str]) -> bool:
        return all(attributes.get(k) == v for k, v in self.filter.items())


class Broker:
    """Fan-out with a durable store: see the module docstring."""

    def __init__(self, triggers: list[Trigger], store: EventStore) -> None:
        if not triggers:
            raise BadInput("the broker needs at least one --trigger")
        names = [t.name for t in triggers]
        if len(set(names)) != len(names):
            raise BadInput(f"trigger names must differ: {names}")
        self.triggers = triggers
        self.store = store
        self.registry = CollectorRegistry()
        self.received = Counter("broker_events_received", "CloudEvents accepted by the broker ingress",
                                registry=self.registry)
        self.deliveries = Counter("broker_deliveries", "Deliveries to trigger subscribers by outcome",
                                  ["trigger", "outcome"], registry=self.registry)
        self.recovered = Counter("broker_events_recovered", "Events found owed in the store at start "
                                 "(accepted by an earlier run, not delivered yet)", ["trigger"],
                                 registry=self.registry)
        queued = Gauge("broker_queue", "Events owed per trigger (stored, not delivered yet)", ["trigger"],
                       registry=self.registry)
        for t in triggers:
            for outcome in ("acked", "retried", "dropped", "rejected"):
                self.deliveries.labels(t.name, outcome)
            self.recovered.labels(t.name)
            queued.labels(t.name).set_function(partial(self._backlog_of, t.name))
        self._owed: collections.Counter[str] = collections.Counter()
        self._queues: dict[str, asyncio.Queue[int]] = {}
        self._tasks: list[asyncio.Task] = []
        self._client: aiohttp.ClientSession | None = None
        self._rng = random.Random()

    def _backlog_of(self, name: str) -> float:
        return float(self._owed[name])

    async def publish(self, headers: dict[str, str], body: bytes) -> list[str]:
        """Store one event for every matching trigger with room, then queue it for them; the
        names it was stored for. Returns only once it is committed."""
        attributes = {k[3:]: v for k, v in headers.items() if k.startswith("ce-")}
        owed = []
        for t in self.triggers:
            if not t.matches(attributes):
                continue
            if self._owed[t.name] >= t.queue_size:
                self.deliveries.labels(t.name, "dropped").inc()
                continue
            owed.append(t.name)
        if not owed:
            return owed
        for name in owed:  # counted before the await: concurrent ingress respects the bound
            self._owed[name] += 1
        try:
            seq = await asyncio.to_thread(self.store.put, headers, body, owed)
        except BaseException:
            for name in owed:
                self._owed[name] -= 1
            raise
        for name in owed:
            self._queues[name].put_nowait(seq)
        return owed

    async def _deliver(self, trigger: Trigger) -> None:
        q = self._queues[trigger.name]
        assert self._client is not None
        while True:
            seq = await q.get()
            event = await asyncio.to_thread(self.store.get, seq)
            if event is not None:
                await self._deliver_one(trigger, *event)
            # acked, rejected or dropped: owed no more (a kill before this line: delivered again)
            await asyncio.to_thread(self.store.done, trigger.name, seq)
            self._owed[trigger.name] -= 1

    async def _deliver_one(self, trigger: Trigger, headers: dict[str, str], body: bytes) -> None:
        assert self._client is not None, "the broker's HTTP client starts with the app"
        delay = trigger.backoff_s
        for attempt in range(trigger.retry + 1):
            try:
                auth = {"Authorization": f"Bearer {trigger.token}"} if trigger.token else {}
                async with self._client.post(trigger.url, data=body, headers={**headers, **auth},
                                             timeout=httpclient.timeout(trigger.timeout_s),
                                             skip_auto_headers=httpclient.NO_CONTENT_TYPE,
                                             allow_redirects=False) as r:
                    await r.read()
                    status = r.status
                if status < 300:
                    self.deliveries.labels(trigger.name, "acked").inc()
                    return
                if 400 <= status < 500 and status not in (404, 408, 409, 429):
                    self.deliveries.labels(trigger.name, "rejected").inc()  # final: a bad event
                    return
            except httpclient.FAILED:
                pass
            if attempt < trigger.retry:
                self.deliveries.labels(trigger.name, "retried").inc()
                await asyncio.sleep(delay * (0.75 + 0.5 * self._rng.random()))
                delay = min(delay * 2, trigger.max_backoff_s)
        self.deliveries.labels(trigger.name, "dropped").inc()

    def backlog(self) -> dict[str, int]:
        return {t.name: self._owed[t.name] for t in self.triggers}

    async def _recover(self) -> None:
        """Queue what the store says is still owed (a previous run's acknowledged events)."""
        known = {t.name for t in self.triggers}
        for name, seqs in (await asyncio.to_thread(self.store.pending)).items():
            if name not in known:
                n = await asyncio.to_thread(self.store.forget_trigger, name)
                log.warning("dropped %d stored event(s) owed to trigger %r, which is no longer configured",
                            n, name)
                continue
            for seq in seqs:
                self._queues[name].put_nowait(seq)
            self._owed[name] += len(seqs)
            self.recovered.labels(name).inc(len(seqs))
            log.warning("delivering %d stored event(s) owed to %s by an earlier run", len(seqs), name)

    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(_app):
            # aiohttp, as the gateway: every served prediction is two events through here
            self._client = httpclient.session(limit=64, total_s=60.0)  # a delivery passes its trigger's timeout
            for t in self.triggers:
                self._queues[t.name] = asyncio.Queue()  # sequence numbers; bounded by _owed
            await self._recover()
            for t in self.triggers:
                self._tasks += [asyncio.create_task(self._deliver(t)) for _ in range(t.workers)]
            try:
                yield
            finally:
                # what is still owed stays in the store for the next start
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                await self._client.close()
                self.store.close()

        async def ingress(request: Request) -> Response:
            body = await request.body()
            if len(body) > MAX_BODY_BYTES:
                raise PayloadTooLarge(f"event over {MAX_BODY_BYTES} bytes")
            headers = {k.lower(): v for k, v in request.headers.items()
                       if k.lower().startswith("ce-") or k.lower() in FORWARDED}
            missing = [h for h in REQUIRED if not headers.get(h)]
            if missing:
                raise BadInput(f"not a binary-mode CloudEvent: missing {', '.join(missing)}")
            try:
                owed = await self.publish(headers, body)
            except sqlite3.Error as exc:  # not stored: not acknowledged (the logger retries)
                log.error("could not store an event: %s", exc)
                raise DependencyUnavailable(f"the broker cannot store the event ({exc}); retry") from None
            self.received.inc()
            return JSONResponse({"accepted": True, "triggers": owed}, status_code=202)

        async def metrics(_request: Request) -> Response:
            return PlainTextResponse(generate_latest(self.registry).decode(), media_type=CONTENT_TYPE_LATEST)

        async def status(_request: Request) -> Response:
            return JSONResponse({"triggers": [{**dataclasses.asdict(t), "token": bool(t.token)} for t in self.triggers],
                                 "backlog": self.backlog()})

        async def health(_request: Request) -> Response:
            return JSONResponse({"status": "ok"})

        return Starlette(routes=[Route("/", ingress, methods=["POST"]),
                                 Route("/metrics", metrics, methods=["GET"]),
                                 Route("/status", status, methods=["GET"]),
                                 Route("/healthz", health, methods=["GET"])], lifespan=lifespan,
                         exception_handlers=EXCEPTION_HANDLERS)


@entry_point
def main(argv: list[str] | None = None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m gourmetgram_app.local.broker",
                                description="Local stand-in for a Knative Broker + Triggers (CloudEvents fan-out).")
    p.add_argument("--trigger", action="append", required=True, metavar="NAME=URL[,ATTR=VALUE]",
                   help="a subscriber and its optional exact-match filter on CloudEvent attributes")
    p.add_argument("--retry", type=int, default=10, help="delivery retries per event (default: %(default)s)")
    p.add_argument("--backoff", type=float, default=0.2, help="first back-off in seconds, doubled per retry")
    p.add_argument("--queue", type=int, default=10000, help="events owed per trigger before dropping")
    p.add_argument("--store", type=Path, help="the SQLite file events are kept in until delivered "
                   "(default: $GOURMETGRAM_HOME/loop/broker-<port>.db)")
    p.add_argument("--host", default=constants.HOST)
    p.add_argument("--port", type=int, default=constants.BROKER_PORT)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    triggers = [Trigger.parse(t, retry=args.retry, backoff_s=args.backoff, queue_size=args.queue)
                for t in args.trigger]
    store_path = args.store or home() / "loop" / f"broker-{args.port}.db"
    try:
        store = EventStore(store_path)
    except sqlite3.Error as exc:
        raise BadInput(f"cannot open the broker's store {store_path}: {exc}") from None
    broker = Broker(triggers, store)
    uvicorn.run(broker.app(), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

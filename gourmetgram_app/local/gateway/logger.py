"""The inference logger: KServe's logger agent, locally (CloudEvents 1.0, binary mode).

Each prediction's request and 200 response go to the manifest's ``logger.url`` (locally the
drift detector or the broker) as ``org.kubeflow.serving.inference.request|response`` events
with one ``ce-id`` per pair and the extensions ``inferenceservicename``, ``namespace``,
``component``, ``endpoint`` (plus the local ``revision`` and ``modelversion``). Delivery is
off the request path through a queue bounded by count and bytes: a slow or dead sink never
delays or fails a prediction.

An event the sink does not take (refused connection, timeout, 5xx, 429) is retried with
exponential back-off, so a sink that is briefly away (the broker restarting after a crash)
loses nothing: the event keeps its bytes in the queue's budget until it is delivered, so the
bytes bound holds for what waits and what is retried alike. Only what the bound refuses, what a
sink rejects (another 4xx: the event is bad) and what is still undelivered when the gateway
stops are dropped, each counted (``logger_events_dropped_total``; retries in
``logger_events_retried_total``). Delivery is at least once: a sink that took an event but
answered too late gets it again, so sinks are idempotent on ``ce-id`` + ``ce-type``.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import aiohttp
from prometheus_client import Counter

from gourmetgram import control as policy  # the sink token
from gourmetgram.errors import BadInput
from gourmetgram_app.local import httpclient

LOGGER_QUEUE_BYTES = 256 * 1024 * 1024  # events waiting for the sink (or retried), at most
LOGGER_QUEUE_EVENTS = 10000  # ~80 s of a busy stack's events (2 per prediction) if the sink is away
RETRY_BACKOFF_S = 0.1  # first retry; doubles up to RETRY_MAX_BACKOFF_S
RETRY_MAX_BACKOFF_S = 2.0
RETRIED_STATUSES = frozenset({404, 408, 409, 429})  # a 4xx that may pass later (a sink restarting)


class InferenceLogger:
    """KServe's logger agent, locally: binary-mode CloudEvents to ``url``, off the request path.

    :meth:`log` never blocks and never raises: it puts the event on a bounded queue or,
    when the queue is full (by count or bytes), counts a drop. ``workers`` tasks deliver the
    queue, each attempt within ``timeout_s``; an attempt that fails (sink down, slow, 5xx) is
    retried with back-off while the event keeps its place in the bytes budget (``retried``
    counts the retries); a sink's 4xx rejection is a counted drop.
    """

    def __init__(self, url: str, mode: str, inferenceservice: str, namespace: str,
                 sent: Counter, dropped: Counter, component: str = "transformer",
                 queue_size: int = LOGGER_QUEUE_EVENTS, workers: int = 4, timeout_s: float = 2.0,
                 queue_bytes: int = LOGGER_QUEUE_BYTES, sink_token: str | None = None,
                 retried: Counter | None = None) -> None:
        if mode not in ("all", "request", "response"):
            raise BadInput(f"logger mode {mode!r} is not all, request or response")
        self.url, self.mode = url, mode
        self.inferenceservice, self.namespace, self.component = inferenceservice, namespace, component
        self.queue_size, self.workers, self.timeout_s = queue_size, workers, timeout_s
        # Bounded by count AND bytes: 1000 large images would otherwise pin gigabytes.
        self.queue_bytes, self.queued_bytes = queue_bytes, 0
        self.pending = 0  # events queued or being delivered (retries included)
        self.sink_token = sink_token  # the local detector's ingest token, when it has one
        self.sent = sent.labels(inferenceservice)
        self.dropped = dropped.labels(inferenceservice)
        self.retried = retried.labels(inferenceservice) if retried is not None else None
        self.source = "http://localhost:9081/"  # where KServe's agent says events come from
        self._queue: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self._client: aiohttp.ClientSession | None = None

    def wants(self, kind: str) -> bool:
        return self.mode == "all" or self.mode == kind

    def headers(self, ce_id: str, kind: str, content_type: str, endpoint: str,
                extensions: dict[str, str] | None = None) -> dict[str, str]:
        return {
            **{f"ce-{k}": v for k, v in (extensions or {}).items() if v},
            **(policy.bearer(self.sink_token) if self.sink_token else {}),
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
        self.pending += 1

    async def _deliver(self) -> None:
        assert self._queue is not None
        while True:
            headers, body = await self._queue.get()
            try:
                await self._deliver_one(headers, body)
            finally:  # its bytes leave the budget only now: delivered, rejected or given up
                self.queued_bytes -= len(body)
                self.pending -= 1
                self._queue.task_done()

    async def _deliver_one(self, headers: dict[str, str], body: bytes) -> None:
        """Post one event until the sink takes it (2xx) or rejects it (a final 4xx)."""
        assert self._client is not None
        delay = RETRY_BACKOFF_S
        while True:
            try:
                async with self._client.post(self.url, data=body, headers=headers,
                                             allow_redirects=False) as r:
                    await r.read()  # to the end: the connection goes back to the pool
                if r.status < 300:
                    self.sent.inc()
                    return
                if r.status < 500 and r.status not in RETRIED_STATUSES:
                    self.dropped.inc()  # the sink says the event is bad: retrying cannot help
                    return
            except Exception:  # noqa: BLE001 - refused, reset, timed out: the sink is away, retry
                pass
            if self.retried is not None:
                self.retried.inc()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_BACKOFF_S)

    @property
    def backlog(self) -> int:
        """Events not delivered yet: queued, or being delivered or retried."""
        return self.pending

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._client = httpclient.session(limit=self.workers, total_s=self.timeout_s, connect_s=0.5)
        self._tasks = [asyncio.create_task(self._deliver()) for _ in range(self.workers)]

    async def stop(self, drain_s: float = 2.0) -> None:
        """Give queued events ``drain_s`` to go out, then cancel the workers; what is still
        undelivered (queued or being retried) is counted as dropped."""
        if self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.join(), drain_s)
            except asyncio.TimeoutError:
                pass
        lost = self.pending  # counted before the workers' cleanup forgets the ones in delivery
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.dropped.inc(lost)
        self.pending = 0
        if self._client is not None:
            await self._client.close()

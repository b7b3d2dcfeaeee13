"""Shadow mirroring for the local gateway: a challenger sees a share of production traffic.

What Istio's VirtualService ``mirror`` + ``mirrorPercentage`` does on the cluster (KServe has
no mirroring of its own, kserve#2978), on localhost: a share of the model requests the
gateway forwards is ALSO sent, fire-and-forget, to a shadow revision (its own transformer +
Triton pair, started like a canary). The client's answer never comes from the shadow and
never waits for it:

* the mirrored copy is sent from a separate task with its own connection pool and a short
  timeout, after the production request has been handed on;
* at most ``max_inflight`` copies are in flight; beyond that (a slow shadow) a copy is
  dropped on the spot, as it is when the shadow is unreachable, times out or errs, and every
  drop is counted per reason (``shadow_requests_dropped_total``);
* the shadow's 200 answers go to the inference logger's sink as KServe CloudEvents
  (``org.kubeflow.serving.inference.response``) with the ``ce-id`` of the mirrored request
  (its inference id), ``ce-endpoint: shadow`` and the extension ``ce-shadow: true``, so a
  consumer keeps them next to the production answer without mistaking them for it. Only
  the response is logged: the request (the image) is already logged once, under the same id.

For the comparison (``gourmetgram rollout shadow analyze``) the gateway also keeps the last
``PAIRS_KEPT`` production/shadow answer pairs in memory (top-1 label and confidence only):
the join of the two answers is free here, where both pass.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
from typing import Any, Protocol

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from gourmetgram_app.local import httpclient


class InferenceLogger(Protocol):
    """What the shadow needs of :class:`gourmetgram_app.local.gateway.logger.InferenceLogger` (named here,
    not imported: the gateway imports this module)."""

    def log(self, ce_id: str, kind: str, body: bytes, content_type: str, endpoint: str,
            extensions: dict[str, str] | None = None) -> None: ...

SHADOW_ENDPOINT = "shadow"
SHADOW_EXTENSION = "shadow"  # ce-shadow: "true" on every event the shadow's answers produce
MAX_INFLIGHT = 16
TIMEOUT_S = 10.0
PAIRS_KEPT = 5000
# Why a mirrored copy produced no shadow answer (the label of the drop counter).
BUSY, UNREACHABLE, TIMEOUT, ERROR = "busy", "unreachable", "timeout", "error"
DROP_REASONS = (BUSY, UNREACHABLE, TIMEOUT, ERROR)
log = logging.getLogger("gourmetgram.gateway.shadow")


def top1(body: bytes) -> list[tuple[str, float]]:
    """(label, confidence) per instance of a v1 ``{"predictions": [...]}`` answer; [] otherwise."""
    try:
        data = json.loads(body)
    except ValueError:
        return []
    predictions = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(predictions, list):
        return []
    out = []
    for p in predictions:
        if not isinstance(p, dict) or not isinstance(p.get("label"), str):
            return []
        confidence = p.get("confidence")
        out.append((p["label"], float(confidence) if isinstance(confidence, (int, float)) else float("nan")))
    return out


@dataclasses.dataclass
class Pair:
    """One request answered by both: what the client got and what the shadow would have said."""

    inference_id: str
    production: list[tuple[str, float]] | None = None
    shadow: list[tuple[str, float]] | None = None

    def public(self) -> dict[str, Any]:
        return {"inference_id": self.inference_id,
                "production": [{"label": lab, "confidence": c} for lab, c in self.production or []],
                "shadow": [{"label": lab, "confidence": c} for lab, c in self.shadow or []]}


class ShadowMirror:
    """Mirrors requests to one shadow revision; counts what it sends and what it drops."""

    def __init__(self, registry: CollectorRegistry, inferenceservice: str,
                 max_inflight: int = MAX_INFLIGHT, timeout_s: float = TIMEOUT_S) -> None:
        self.inferenceservice = inferenceservice
        self.max_inflight, self.timeout_s = max_inflight, timeout_s
        self.revision: Any = None  # gourmetgram_app.local.gateway.discovery.Revision of the shadow, when one runs
        self.percent = 0
        self.inflight = 0
        self._client: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        self._pairs: collections.OrderedDict[str, Pair] = collections.OrderedDict()
        self.mirrored = Counter("shadow_requests_mirrored", "Requests copied to the shadow revision",
                                ["inferenceservice", "revision"], registry=registry)
        self.answered = Counter("shadow_requests_answered", "Mirrored requests the shadow answered 200",
                                ["inferenceservice", "revision"], registry=registry)
        self.dropped = Counter("shadow_requests_dropped",
                               "Mirrored requests dropped (busy|unreachable|timeout|error)",
                               ["inferenceservice", "revision", "reason"], registry=registry)
        Gauge("shadow_requests_inflight", "Mirrored requests waiting on the shadow",
              registry=registry).set_function(lambda: self.inflight)

    # -- configuration --------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.revision is not None and self.percent > 0

    def attach(self, revision: Any, percent: int) -> None:
        self.revision, self.percent = revision, percent
        self._pairs.clear()
        for reason in DROP_REASONS:  # every series exists from the start (rate() needs a zero)
            self.dropped.labels(self.inferenceservice, revision.name, reason)
        self.mirrored.labels(self.inferenceservice, revision.name)
        self.answered.labels(self.inferenceservice, revision.name)

    def detach(self) -> None:
        self.revision, self.percent = None, 0

    def _count(self, counter: Counter, *extra: str) -> float:
        if self.revision is None:
            return 0.0
        return counter.labels(self.inferenceservice, self.revision.name, *extra)._value.get()

    def status(self) -> dict[str, Any] | None:
        if self.revision is None:
            return None
        return {**self.revision.public(), "percent": self.percent, "inflight": self.inflight,
                "mirrored": self._count(self.mirrored), "answered": self._count(self.answered),
                "dropped": {r: self._count(self.dropped, r) for r in DROP_REASONS},
                "pairs": sum(1 for p in self._pairs.values() if p.production and p.shadow)}

    def pairs(self) -> list[dict[str, Any]]:
        """Requests both answered (oldest first)."""
        return [p.public() for p in self._pairs.values() if p.production and p.shadow]

    # -- request path -----------------------------------------------------------------------
    def mirror(self, inference_id: str, path: str, query: str, body: bytes,
               headers: dict[str, str], logger: InferenceLogger | None) -> bool:
        """Send a copy to the shadow in the background; never blocks, never raises.
        False when the copy was dropped at once (shadow busy)."""
        if self.revision is None or self._client is None:
            return False
        revision = self.revision
        if self.inflight >= self.max_inflight:
            self.dropped.labels(self.inferenceservice, revision.name, BUSY).inc()
            return False
        self.inflight += 1
        self.mirrored.labels(self.inferenceservice, revision.name).inc()
        url = revision.transformer_url + path + (f"?{query}" if query else "")
        # The mirrored copy keeps the request's ce-id (what KServe's agent logs under), and says
        # it is a copy, as Istio does by appending "-shadow" to the Host.
        headers = {**headers, "ce-id": inference_id, "x-gourmetgram-shadow": "true"}
        task = asyncio.create_task(self._send(revision, inference_id, url, body, headers, logger))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _send(self, revision: Any, inference_id: str, url: str, body: bytes,
                    headers: dict[str, str], logger: InferenceLogger | None) -> None:
        assert self._client is not None
        reason = None
        try:
            async with self._client.post(url, data=body or None, headers=headers, allow_redirects=False,
                                         skip_auto_headers=httpclient.NO_CONTENT_TYPE) as r:
                content = await r.read()
            if r.status != 200:
                reason = ERROR
            else:
                self.answered.labels(self.inferenceservice, revision.name).inc()
                if revision is self.revision:
                    self._record(inference_id, shadow=top1(content))
                if logger is not None:
                    logger.log(inference_id, "response", content, r.headers.get("content-type", ""),
                               SHADOW_ENDPOINT, {SHADOW_EXTENSION: "true", "revision": revision.name,
                                                 "modelversion": revision.version or ""})
        except httpclient.TIMEOUT:  # connecting too (httpx's ConnectTimeout was a timeout here)
            reason = TIMEOUT
        except aiohttp.ClientError:  # refused, reset, closed mid-answer
            reason = UNREACHABLE
        except Exception:  # noqa: BLE001 - a side path: whatever goes wrong is a counted drop
            log.exception("mirrored request %s failed", inference_id)
            reason = ERROR
        finally:
            self.inflight -= 1
        if reason is not None:
            self.dropped.labels(self.inferenceservice, revision.name, reason).inc()

    def record_production(self, inference_id: str, body: bytes | memoryview) -> None:
        """The client's answer for a mirrored request (for the pairs kept)."""
        self._record(inference_id, production=top1(bytes(body)))

    def _record(self, inference_id: str, production: list | None = None, shadow: list | None = None) -> None:
        pair = self._pairs.get(inference_id)
        if pair is None:
            pair = self._pairs[inference_id] = Pair(inference_id)
            while len(self._pairs) > PAIRS_KEPT:
                self._pairs.popitem(last=False)
        if production is not None:
            pair.production = production
        if shadow is not None:
            pair.shadow = shadow

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        # Its own pool: copies to a stuck shadow can never take the production pool's connections.
        self._client = httpclient.session(limit=self.max_inflight, total_s=self.timeout_s, connect_s=1.0)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

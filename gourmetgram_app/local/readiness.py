"""Which revisions can take requests now: the gateway's part of a crash (Knative's endpoints).

On a cluster a revision whose pod is restarting drops out of the endpoints and the ingress
answers 503 for it; the traffic split does not change by itself. Locally the gateway does
the same with :class:`RevisionReadiness`:

* a revision is marked **not ready** when forwarding to it fails (connection refused or
  reset: the transformer is down) or it answers 503 (its predictor is down or loading);
* while it is not ready, the gateway answers its share of requests (the canary's too) with
  503 and ``Retry-After`` at once, without forwarding, so a restarting process is not hammered;
* a background task probes each not-ready revision every ``interval_s`` (the transformer's
  ``/v2/health/ready`` and, when known, its Triton's server and model readiness: the whole
  path a request takes) and marks it ready again when all answer 200.

Only readiness lives here; :mod:`gourmetgram_app.local.supervisor` restarts the processes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Protocol

import aiohttp
from starlette.responses import JSONResponse, Response

from gourmetgram_app.local import httpclient

log = logging.getLogger("gourmetgram.gateway.readiness")
RETRY_AFTER_S = 1
PROBE_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 2.0


class RevisionLike(Protocol):
    name: str
    transformer_url: str
    triton_url: str | None


async def probe_revision(client: aiohttp.ClientSession, revision: RevisionLike, model: str) -> str | None:
    """None when the revision's transformer and Triton are ready, else why not."""
    urls = [f"{revision.transformer_url}/v2/health/ready"]
    if getattr(revision, "triton_url", None):
        urls += [f"{revision.triton_url}/v2/health/ready", f"{revision.triton_url}/v2/models/{model}/ready"]
    for url in urls:
        try:
            async with client.get(url, timeout=httpclient.timeout(PROBE_TIMEOUT_S)) as r:
                await r.read()  # read to the end: the connection goes back to the pool
        except httpclient.FAILED as exc:
            return f"{url}: {type(exc).__name__}"
        if r.status != 200:
            return f"{url} answered {r.status}"
    return None


class RevisionReadiness:
    """Not-ready revisions, their reasons, and the probe that brings them back."""

    def __init__(self, probe: Callable[[Any], Awaitable[str | None]],
                 revisions: Callable[[], list], interval_s: float = PROBE_INTERVAL_S,
                 retry_after_s: int = RETRY_AFTER_S) -> None:
        self.probe, self.revisions = probe, revisions
        self.interval_s, self.retry_after_s = interval_s, retry_after_s
        self._down: dict[str, tuple[str, float]] = {}  # name -> (reason, since)
        self._task: asyncio.Task | None = None

    def ready(self, name: str) -> bool:
        return name not in self._down

    def reason(self, name: str) -> str | None:
        return self._down[name][0] if name in self._down else None

    def mark_down(self, name: str, reason: str) -> None:
        if name not in self._down:
            log.warning("revision %s not ready: %s", name, reason)
            self._down[name] = (reason, time.monotonic())

    def forget(self, name: str) -> None:
        self._down.pop(name, None)

    def unavailable(self, name: str) -> Response:
        """The 503 for a request routed to a not-ready revision."""
        reason = self.reason(name) or "restarting"
        return self._with_retry_after(JSONResponse(
            {"error": f"revision {name} is not ready ({reason}); retry after {self.retry_after_s} s"},
            status_code=503))

    def observe(self, name: str, response: Response) -> Response:
        """After forwarding: a 503 marks the revision not ready and says when to retry."""
        if response.status_code == 503:
            self.mark_down(name, _error_text(response))
            self._with_retry_after(response)
        return response

    def _with_retry_after(self, response: Response) -> Response:
        response.headers.setdefault("retry-after", str(self.retry_after_s))
        return response

    # -- probing ---------------------------------------------------------------------------
    async def check(self) -> None:
        """Probe every not-ready revision once (the loop calls this; tests may too)."""
        known = {r.name: r for r in self.revisions()}
        for name in list(self._down):
            revision = known.get(name)
            if revision is None:  # retired meanwhile
                self._down.pop(name, None)
                continue
            why = await self.probe(revision)
            if why is None:
                reason, since = self._down.pop(name)
                log.warning("revision %s ready again after %.1f s (was: %s)", name,
                            time.monotonic() - since, reason)
            else:
                self._down[name] = (why, self._down[name][1])

    async def _loop(self) -> None:
        while True:
            try:
                if self._down:
                    await self.check()
            except Exception:  # noqa: BLE001 - the probe loop must outlive any one failure
                log.exception("readiness probe failed")
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _error_text(response: Response) -> str:
    body = getattr(response, "body", b"") or b""
    try:
        import json

        data = json.loads(body)
        if isinstance(data, dict) and data.get("error"):
            return str(data["error"])[:300]
    except ValueError:
        pass
    return body[:300].decode(errors="replace") or f"HTTP {response.status_code}"

"""The gateway's control API: the Knative controller's part, behind the stack's control token.

``GET/POST /_gourmetgram/rollout`` starts a canary revision (its own Triton + transformer) from a
bundle in the model store, sets its traffic percentage, promotes or rolls back, and starts,
re-weights or stops a shadow revision (``gourmetgram rollout`` drives it); ``GET
/_gourmetgram/targets`` lists every revision's metrics endpoints for Prometheus; ``GET
/_gourmetgram/shadow`` shows the shadow's paired answers. A POST (and the shadow's answers) needs
the token, JSON, and a bundle from the model store: the policy is
:mod:`gourmetgram.control`; this module applies it to the gateway's state.

Every pair the gateway starts is watched by its supervisor from the first start (a start that
fails is retried with back-off; a given-up one is a 503 that says why). After each change the
rollout is saved (:mod:`.state`); a restarted gateway restores it (:meth:`Controller.restore`)
and starts the canary and shadow pairs again.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from pathlib import Path
from typing import Protocol, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gourmetgram import bodylimit
from gourmetgram import control as policy
from gourmetgram.errors import BadInput, DependencyUnavailable, Unauthorized
from gourmetgram_app.local import httpclient
from gourmetgram_app.local.gateway import state
from gourmetgram_app.local.gateway.discovery import Revision, http_sd_targets
from gourmetgram_app.local.gateway.routing import SHADOW, Router
from gourmetgram_app.local.manifests import generation_of, revision_name
from gourmetgram_app.local.supervisor import Process, Supervisor, read_state_file

CONTROL_PREFIX = "/_gourmetgram"
WARMUP_REQUESTS = 5
log = logging.getLogger("gourmetgram.gateway")


class _Stoppable(Protocol):
    """What the gateway needs of a :class:`gourmetgram_app.local.stack.RevisionPair` it started."""

    @property
    def services(self) -> Sequence[Process]: ...

    @property
    def transformer_url(self) -> str: ...

    @property
    def triton_url(self) -> str: ...

    @property
    def triton_metrics_url(self) -> str: ...

    async def start_supervised(self, supervisor: Supervisor, cwd: Path) -> None: ...

    def stop(self) -> None: ...


class Controller(Router):
    """Rollout and shadow control on top of the request path (the gateway sets the attributes)."""

    model_store: Path
    log_dir: Path | None
    host: str
    status_file: Path | None
    state_file: Path | None  # where the rollout is saved (None: not saved, not restored)
    supervisor: Supervisor
    _given: list[Revision]  # the revisions the gateway was started with (serve's own pair)
    _pairs: dict[str, _Stoppable]  # revision name -> RevisionPair this gateway started
    _control_lock: asyncio.Lock
    _restoring: tuple[list[tuple[Revision, _Stoppable]], state.SavedShadow | None] | None

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
                "retried": self.logger.retried._value.get() if self.logger.retried is not None else 0,
                "queued": self.logger.backlog},
        }

    async def _retire(self, names: set[str]) -> None:
        """Drop revisions from the table, then stop the pairs this gateway started for them."""
        self.revisions = [r for r in self.revisions if r.name not in names]
        for name in names:
            self.readiness.forget(name)
            await self._stop_pair(name)

    def _new_pair(self, bundle: Path, name: str, version: str | None,
                  stage: str | None = None) -> _Stoppable:
        """A pair not started yet; ``version`` and ``stage`` label its label-free accuracy estimate."""
        from gourmetgram_app.local.ports import Ports
        from gourmetgram_app.local.stack import RevisionPair

        return RevisionPair(bundle, name, self.manifest, Ports.free(self.host), self.host, self._pair_log_dir,
                            model_version=version, stage=stage)

    @property
    def _pair_log_dir(self) -> Path:
        return self.log_dir or Path.cwd()

    async def _start_pair(self, name: str, pair: _Stoppable) -> None:
        """Start a pair supervised (failed starts retried), then warm it up; raises
        DependencyUnavailable when the supervisor gave up on it (the pair is stopped then)."""
        await pair.start_supervised(self.supervisor, self._pair_log_dir)
        self._pairs[name] = pair
        await self._warm_up(pair.transformer_url)

    async def start_canary(self, bundle: str, percent: int, version: str | None = None) -> Revision:
        """A new latest revision from ``bundle`` (its own Triton + transformer) at ``percent``%."""
        path = policy.bundle_in_store(bundle, self.model_store)  # before any heavy import
        from gourmetgram.export import validate_bundle

        validate_bundle(path, self.manifest.model_name)
        generation = max(generation_of(r.name) for r in self.revisions) + 1
        name = revision_name(self.manifest, generation)
        pair = self._new_pair(path, name, version)
        await self._start_pair(name, pair)
        # A latest revision that never rolled out is replaced (Knative keeps only prev/latest routed).
        replaced = {r.name for r in self.revisions if r.name != self.rolled_out}
        self.revisions.append(Revision(name, pair.transformer_url, 0, None, str(path), version,
                                       pair.triton_metrics_url, pair.triton_url, started=time.time()))
        self.canary_percent = percent
        self._apply_split()
        await self._retire(replaced)
        return self.revisions[-1]

    async def start_shadow(self, bundle: str, percent: int, version: str | None = None) -> Revision:
        """A shadow revision from ``bundle`` (its own Triton + transformer) mirrored ``percent``%
        of model requests; it replaces a running shadow. It never takes client traffic."""
        path = policy.bundle_in_store(bundle, self.model_store)
        from gourmetgram.export import validate_bundle

        validate_bundle(path, self.manifest.model_name)
        previous = self.shadow.revision
        generation = generation_of(previous.name) + 1 if previous is not None else 1
        name = f"{self.manifest.name}-{SHADOW}-predictor-{generation:05d}"
        pair = self._new_pair(path, name, version, stage=SHADOW)
        await self._start_pair(name, pair)
        revision = Revision(name, pair.transformer_url, 0, SHADOW, str(path), version,
                            pair.triton_metrics_url)
        self.shadow.attach(revision, percent)
        if previous is not None:
            await self._stop_pair(previous.name)
        return revision

    async def stop_shadow(self) -> None:
        previous = self.shadow.revision
        if previous is None:
            raise BadInput("no shadow revision is running")
        self.shadow.detach()
        await self._stop_pair(previous.name)

    def shadow_pids(self) -> dict[str, int | None]:
        """The shadow's processes (what a fault test kills)."""
        pair = self._pairs.get(self.shadow.revision.name) if self.shadow.revision else None
        return {s.name: s.proc.pid if s.proc else None for s in pair.services} if pair is not None else {}

    async def _stop_pair(self, name: str) -> None:
        """Stop watching a pair this gateway started, then stop it."""
        pair = self._pairs.pop(name, None)
        if pair is not None:
            for service in pair.services:
                self.supervisor.forget(service)
            await asyncio.to_thread(pair.stop)

    # -- the rollout across a gateway restart ---------------------------------------------------
    def rollout_state(self) -> state.RolloutState:
        shadow = self.shadow.revision
        return state.RolloutState(
            self.manifest.name, tuple(state.SavedRevision(r.name, r.bundle, r.version, r.started) for r in self.revisions),
            self.rolled_out, self.canary_percent,
            state.SavedShadow(shadow.bundle, self.shadow.percent, shadow.version)
            if shadow is not None and shadow.bundle else None)

    def save_state(self) -> None:
        """Write the rollout to the state file (a failure is logged: routing goes on)."""
        if self.state_file is None:
            return
        try:
            state.save(self.state_file, self.rollout_state())
        except OSError as exc:
            log.error("could not save the rollout to %s: %s", self.state_file, exc)

    def restore(self) -> None:
        """Before the first request: route as the saved rollout says. Revisions the gateway was
        started with keep their processes; each other one gets a new pair (fresh ports), not
        started yet (:meth:`start_restored` does that in the background): until it is ready its
        share is answered 503 + Retry-After, as for a crashed revision, and the split stays."""
        saved = state.load(self.state_file, self.manifest.name) if self.state_file else None
        if saved is None:
            return
        given = {r.name: r for r in self._given}
        table: list[Revision] = []
        pending: list[tuple[Revision, _Stoppable]] = []
        for entry in saved.revisions:
            if entry.name in given:
                table.append(given[entry.name])
                continue
            try:
                path = policy.bundle_in_store(entry.bundle or "", self.model_store)
            except BadInput as exc:
                log.error("not restoring revision %s: %s", entry.name, exc)
                continue
            pair = self._new_pair(path, entry.name, entry.version)
            revision = Revision(entry.name, pair.transformer_url, 0, None, str(path), entry.version,
                                pair.triton_metrics_url, pair.triton_url, started=entry.started)
            table.append(revision)
            pending.append((revision, pair))
        if saved.rolled_out not in {r.name for r in table}:
            log.error("not restoring the rollout: its rolled-out revision %s cannot be started",
                      saved.rolled_out)
            return
        self.revisions, self.rolled_out, self.canary_percent = table, saved.rolled_out, saved.canary_percent
        self._apply_split()
        for revision, pair in pending:
            self._pairs[revision.name] = pair
            self.readiness.mark_down(revision.name, "starting again after a gateway restart")
        self._restoring = (pending, saved.shadow)
        log.warning("rollout restored from %s: %s", self.state_file,
                    [(r.name, r.percent, r.tag) for r in self.revisions])

    async def start_restored(self) -> None:
        """Start the restored pairs (supervised, like a canary's first start) and the shadow; a
        revision whose pair cannot be started leaves the table (its share goes back to the
        rolled-out revision, or to the given revisions when that was the one)."""
        pending, shadow = self._restoring or ([], None)
        self._restoring = None
        async with self._control_lock:
            for revision, pair in pending:
                try:
                    await self._start_pair(revision.name, pair)
                except DependencyUnavailable as exc:  # the pair is stopped already
                    log.error("revision %s could not be started again: %s", revision.name, exc)
                    self._pairs.pop(revision.name, None)
                    self._drop_restored(revision)
            if shadow is not None:
                try:
                    await self.start_shadow(shadow.bundle, shadow.percent, shadow.version)
                except (BadInput, DependencyUnavailable) as exc:
                    log.error("the shadow could not be started again: %s", exc)
            self.save_state()

    def _drop_restored(self, revision: Revision) -> None:
        self.readiness.forget(revision.name)
        self.revisions = [r for r in self.revisions if r is not revision]
        if revision.name == self.rolled_out or not self.revisions:
            self.revisions, self.rolled_out = list(self._given), self._given[0].name
        self.canary_percent = None
        self._apply_split()

    async def _warm_up(self, transformer_url: str, requests: int = WARMUP_REQUESTS) -> None:
        """A few predictions straight to a new transformer before it takes traffic, so the
        first users (and the canary's p95) do not pay for ONNX Runtime's and Triton's first
        inferences. Not counted: it bypasses the revision metrics, like a readiness probe."""
        url = f"{transformer_url}/v1/models/{self.manifest.model_name}:predict"
        body = {"instances": [{"image": {"b64": _warmup_image()}}]}
        assert self._client is not None
        for _ in range(requests):
            try:
                async with self._client.post(url, json=body, allow_redirects=False) as r:
                    await r.read()
            except httpclient.FAILED:
                return

    async def set_percent(self, percent: int) -> None:
        if len(self.revisions) < 2:
            raise BadInput("no canary revision: start one with a bundle first")
        self.canary_percent = percent
        self._apply_split()

    async def promote(self) -> None:
        """canaryTrafficPercent removed: latest takes 100% and becomes the rolled-out revision."""
        latest = self.revisions[-1]
        if latest.name == self.rolled_out:
            raise BadInput(f"nothing to promote: {latest.name} already serves all traffic")
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
            raise BadInput(f"percent must be an integer in 0..100, got {percent!r}")
        async with self._control_lock:
            if kind == "canary":
                if not action.get("bundle"):
                    raise BadInput("a canary needs a bundle")
                await self.start_canary(str(action["bundle"]), 10 if percent is None else percent,
                                        None if action.get("version") is None else str(action["version"]))
            elif kind == "percent":
                if percent is None:
                    raise BadInput("action percent needs a percent")
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
                    raise BadInput("no shadow revision is running: start one with a bundle")
                elif percent is None:
                    raise BadInput("action shadow needs a bundle (start) or a percent (re-weight)")
                else:
                    self.shadow.percent = percent
            elif kind == "shadow_stop":
                await self.stop_shadow()
            else:
                raise BadInput(f"unknown action {kind!r}; use canary, percent, promote, rollback, "
                                "shadow or shadow_stop")
            self.save_state()
            log.warning("rollout %s: %s", kind, [(r.name, r.percent, r.tag) for r in self.revisions])
            return self.status()

    def targets(self) -> list[dict]:
        """Prometheus HTTP service discovery: every revision's transformer and Triton metrics."""
        return http_sd_targets([*self.revisions, *([self.shadow.revision] if self.shadow.revision else [])])

    # -- HTTP ----------------------------------------------------------------------------
    def control_routes(self) -> list[Route]:
        return [
            Route(f"{CONTROL_PREFIX}/rollout", self._rollout_endpoint, methods=["GET", "POST"]),
            Route(f"{CONTROL_PREFIX}/targets", self._targets_endpoint, methods=["GET"]),
            Route(f"{CONTROL_PREFIX}/shadow", self._shadow_endpoint, methods=["GET"]),
        ]

    async def _rollout_endpoint(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(self.status())
        refused = policy.refuse(request.headers, self.control_token)
        if refused is not None:
            return refused
        body = await bodylimit.read_body(request, policy.MAX_CONTROL_BODY_BYTES)  # 413 past the limit
        try:
            action = json.loads(body)
        except ValueError:
            raise BadInput("the body must be JSON: {\"action\": canary|percent|promote|rollback, ...}") from None
        if not isinstance(action, dict):
            raise BadInput("the body must be a JSON object")
        # bad input 400, a new revision that did not come up 503: the shared handler answers
        return JSONResponse(await self.control(action))

    async def _targets_endpoint(self, _request: Request) -> Response:
        return JSONResponse(self.targets())

    async def _shadow_endpoint(self, request: Request) -> Response:
        # The pairs are predictions on users' requests: behind the token, like tag routing.
        if not policy.authorized(request.headers, self.control_token):
            raise Unauthorized("the shadow's answers need the stack's control token "
                               "('Authorization: Bearer <token>'; `gourmetgram rollout shadow` sends it)")
        return JSONResponse({"shadow": self.shadow.status(), "pids": self.shadow_pids(),
                             "pairs": self.shadow.pairs()})


def _warmup_image() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 96, 64)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")

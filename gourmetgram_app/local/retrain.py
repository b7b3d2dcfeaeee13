"""Starting retrains, and the trigger receiver (Alertmanager webhook -> policy -> run).

Launchers (:class:`gourmetgram.retrain.trigger.Launcher`):

* :class:`LocalLauncher`: a detached process (``python -m gourmetgram_app.local.retrain_job``)
  that runs one turn of the loop (export, the training pipeline with ``kfp.local``, and with a
  production gateway the staging gate and the canary: :mod:`gourmetgram_app.local.cycle`),
  writes each step and the outcome to the history and frees the lock. The lock names that
  process's pid, so a kill -9 leaves a lock the next trigger sees as stale.
* :class:`KfpLauncher`: ``kfp.Client.create_run_from_pipeline_package`` with the compiled
  training pipeline (``pipeline.submit``) and the labelled production data
  (``run.production_dataset_uri``); the lock names the KFP run, free again when the
  backend reports a final state.

The receiver (:func:`create_app`): ``POST /alerts`` takes Alertmanager's webhook (v4); firing
alerts named in ``configs/retrain.yaml`` become reasons, the guard rails apply, and a run
starts (202) or not (200, with why). A malformed body is a 400, a body over 1 MiB a 413, a
missing/wrong token (when one is set) a 401; a launcher failure is a 503 so Alertmanager
retries. ``GET /status`` previews the decision and says what the last alert led to, ``GET /runs``
lists the last runs with their steps and outcome (the operator page reads it), ``GET /metrics``
exports the trigger counters and the production feedback counter the degradation rule reads.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from gourmetgram.constants import REPO_ROOT, RETRAIN_RECEIVER_PORT
from gourmetgram.environment import environment
from gourmetgram.retrain.alerts import PayloadError, reasons_from
from gourmetgram.retrain.history import History, retrain_home
from gourmetgram.retrain.lock import KFP, LOCAL, LockInfo, RunLock
from gourmetgram.retrain.settings import RetrainSettings
from gourmetgram.retrain.trigger import LaunchFailed, Outcome, Trigger

log = logging.getLogger("gourmetgram.retrain")
ENV_TOKEN = "GOURMETGRAM_RETRAIN_TOKEN"
MAX_BODY = 1024 * 1024
KFP_FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED")


def default_dataset(settings: RetrainSettings) -> str:
    from gourmetgram.tracking import home

    return settings.run.dataset_uri or str(home() / "data" / "demo")


class LocalLauncher:
    kind = LOCAL

    def __init__(self, log_dir: str | Path | None = None, command: list[str] | None = None,
                 db_url: str | None = None, gateway: str | None = None, prometheus: str | None = None,
                 retrain_config: str = "retrain"):
        self.log_dir = Path(log_dir) if log_dir else retrain_home() / "runs"
        self.command = command  # tests: a stand-in job (same arguments appended)
        self.db_url = db_url  # the loop store the job exports labelled production data from
        # The production stack a run stages and canaries its new version on (None: stop at register).
        self.gateway, self.prometheus = gateway, prometheus
        self.retrain_config = retrain_config  # the job reads its release section
        self._children: list[subprocess.Popen] = []

    def argv(self, run_id: str, settings: RetrainSettings, lock: RunLock, history: History) -> list[str]:
        job = self.command or [sys.executable, "-m", "gourmetgram_app.local.retrain_job"]
        return [*job, "--run-id", run_id, "--lock", str(lock.path), "--history", str(history.path),
                "--dataset", default_dataset(settings), "--config", settings.run.config,
                "--epochs", str(settings.run.epochs), "--retrain-config", self.retrain_config,
                *(["--db", self.db_url] if self.db_url else []),
                *(["--gateway", self.gateway] if self.gateway else []),
                *(["--prometheus", self.prometheus] if self.prometheus else [])]

    def start(self, run_id: str, reasons: tuple[str, ...], settings: RetrainSettings, lock: RunLock,
              history: History) -> dict[str, Any]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.log_dir / f"{run_id}.log"
        env = dict(os.environ, GOURMETGRAM_RETRAIN_REASONS=",".join(reasons), PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(self.argv(run_id, settings, lock, history), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self._children.append(proc)
        lock.hand_over(run_id, pid=proc.pid)  # False: it already ended (and freed the lock)
        return {"pid": proc.pid, "log": str(log_file)}

    def still_running(self, info: LockInfo) -> bool:
        self._children = [p for p in self._children if p.poll() is None]  # reap ours: no zombies
        return RunLock.default_still_running(info)


class KfpLauncher:
    kind = KFP

    def __init__(self, host: str, package: str | Path | None = None, namespace: str | None = None):
        from gourmetgram_app.pipeline_runs import DEFAULT_PACKAGE

        self.host, self.namespace = host, namespace
        self.package = Path(package) if package else DEFAULT_PACKAGE

    def start(self, run_id: str, reasons: tuple[str, ...], settings: RetrainSettings, lock: RunLock,
              history: History) -> dict[str, Any]:
        from gourmetgram_app.pipeline_runs import submit

        params = {"dataset_uri": settings.run.dataset_uri, "config": settings.run.config,
                  "epochs": settings.run.epochs}
        if settings.run.production_dataset_uri:  # the labelled production data, merged by the pipeline
            params["production_dataset_uri"] = settings.run.production_dataset_uri
        if not settings.run.dataset_uri:
            raise LaunchFailed("run.dataset_uri is empty in the retrain config: a cluster run needs a dataset URI")
        result = submit(self.host, self.package, settings.run.experiment, params,
                        run_name=f"{run_id} ({'+'.join(reasons)})", namespace=self.namespace)
        lock.hand_over(run_id, kind=KFP, external_id=result.run_id)
        return {"kfp_run_id": result.run_id, "host": self.host}

    def still_running(self, info: LockInfo) -> bool:
        if info.kind != KFP:
            return RunLock.default_still_running(info)
        if not info.external_id:
            return True  # submitted, id not recorded yet: the submitter still owns it
        try:
            import kfp

            client = kfp.Client(host=self.host, existing_token=environment().kfp_token)
            state = str(client.get_run(info.external_id).state or "")
        except Exception:  # noqa: BLE001 - backend unreachable: assume it runs (never start a second)
            return True
        return state.upper() not in KFP_FINAL_STATES


# -- the receiver ------------------------------------------------------------------------

class ReceiverMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.triggers = Counter("retrain_triggers", "Trigger evaluations by reason and outcome",
                                ["reason", "outcome"], registry=r)
        self.running = Gauge("retrain_running", "1 while a retrain holds the lock", registry=r)
        self.last_start = Gauge("retrain_last_start_timestamp_seconds", "When the last retrain started",
                                registry=r)
        # One series, the last run: why it started and how it ended (the Model quality dashboard).
        self.last_run = Gauge("retrain_last_run_info", "The last retrain: run id, reasons ('+'-joined), "
                              "status (running | started | registered | rejected | failed), registered "
                              "version; value 1", ["run_id", "reasons", "status", "version"], registry=r)
        # Production feedback answers (from the loop store): the degradation rule's input.
        self.feedback = Counter("loop_feedback_answers", "User feedback answers by stage, model version and "
                                "outcome (correct|wrong), synced from the loop store",
                                ["stage", "model_version", "outcome"], registry=r)
        self._seen: dict[tuple[str, str, str], int] = {}

    def sync_feedback(self, counts: dict[tuple[str, str, str], int]) -> None:
        """Advance the counter to the store's totals (a count that went down, an answer changed
        from correct to wrong, is not un-counted)."""
        for key, n in counts.items():
            delta = n - self._seen.get(key, 0)
            if delta > 0:
                self.feedback.labels(*key).inc(delta)
                self._seen[key] = n

    def set_last_run(self, run_id: str, reasons: tuple[str, ...], end: dict[str, Any] | None,
                     running: bool) -> None:
        # A KFP launcher writes no end record: "started" until the lock says running or it ends.
        status = str(end.get("status") or "finished") if end else ("running" if running else "started")
        version = str(end.get("version") or "") if end else ""
        self.last_run.clear()  # only the last run, never a growing set of series
        self.last_run.labels(run_id, "+".join(reasons) or "none", status, version).set(1)

    def record(self, outcome: Outcome) -> None:
        state = "started" if outcome.started else (outcome.decision.blocked_by or "not_needed")
        for reason in outcome.decision.reasons or ("none",):
            self.triggers.labels(reason, state).inc()


def _token() -> str | None:
    return environment().retrain_token


def create_app(trigger: Trigger, token: str | None = None, feedback_counts=None):
    """The receiver's ASGI app. ``feedback_counts``: ``() -> {(stage, version, outcome): n}``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from gourmetgram.bodylimit import BodyTooLarge, read_body

    metrics = ReceiverMetrics()
    last_alert: dict[str, Any] = {}  # what the last alert that named a trigger led to (GET /status)

    def authorized(request: Request) -> bool:
        if not token:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    async def alerts(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        try:
            body = await read_body(request, MAX_BODY)
        except BodyTooLarge as exc:
            return JSONResponse({"error": str(exc)}, status_code=413)
        try:
            payload = json.loads(body)
        except ValueError:
            return JSONResponse({"error": "the body is not JSON (expected Alertmanager's webhook payload)"},
                                status_code=400)
        try:
            reasons, names = reasons_from(payload, trigger.settings.triggers)
        except PayloadError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if not reasons:
            return JSONResponse({"started": False, "message": "no firing alert that triggers a retrain"})
        received = datetime.now(timezone.utc).isoformat()
        try:
            outcome = await run_in_threadpool(trigger.fire, reasons, f"alertmanager:{','.join(names)}")
        except LaunchFailed as exc:
            last_alert.update(at=received, alerts=names, started=False, message=str(exc))
            return JSONResponse({"started": False, "error": str(exc)}, status_code=503)
        metrics.record(outcome)
        last_alert.clear()
        last_alert.update(at=received, alerts=names, started=outcome.started, run_id=outcome.run_id,
                          blocked_by=outcome.decision.blocked_by, message=outcome.decision.message)
        body_out = {"started": outcome.started, "run_id": outcome.run_id, "reasons": list(outcome.decision.reasons),
                    "blocked_by": outcome.decision.blocked_by, "message": outcome.decision.message,
                    **outcome.details}
        return JSONResponse(body_out, status_code=202 if outcome.started else 200)

    async def status(request: Request) -> Response:
        decision = await run_in_threadpool(trigger.evaluate)
        holder = await run_in_threadpool(trigger.lock.current)
        return JSONResponse({"running": holder.run_id if holder else None, "start": decision.start,
                             "reasons": list(decision.reasons),
                             "blocked_by": decision.blocked_by, "message": decision.message,
                             "last_alert": dict(last_alert) or None})

    async def runs(request: Request) -> Response:
        try:
            limit = max(1, min(50, int(request.query_params.get("limit", "5"))))
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, status_code=400)
        found = await run_in_threadpool(trigger.history.runs, limit)
        return JSONResponse({"runs": found})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def prometheus(request: Request) -> Response:
        def refresh() -> None:
            holder = trigger.lock.current()
            metrics.running.set(1 if holder else 0)
            last = trigger.history.last_started()
            if last is not None:
                metrics.last_start.set(last.started_at.timestamp())
                metrics.set_last_run(last.run_id, last.reasons, trigger.history.finished(last.run_id),
                                     running=holder is not None and holder.run_id == last.run_id)
            if feedback_counts is not None:
                try:
                    metrics.sync_feedback(feedback_counts())
                except Exception as exc:  # noqa: BLE001 - a store hiccup never fails the scrape
                    log.warning("feedback counts unavailable: %s", exc)
        await run_in_threadpool(refresh)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(routes=[Route("/alerts", alerts, methods=["POST"]), Route("/status", status),
                            Route("/runs", runs),
                            Route("/healthz", healthz), Route("/metrics", prometheus)])
    app.state.metrics = metrics
    return app


def serve(trigger: Trigger, host: str = "127.0.0.1", port: int = RETRAIN_RECEIVER_PORT, token: str | None = None,
          feedback_counts=None) -> None:
    import uvicorn

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    uvicorn.run(create_app(trigger, token or _token(), feedback_counts), host=host, port=port,
                log_level="warning", access_log=False)


__all__ = ["LocalLauncher", "KfpLauncher", "create_app", "serve"]


# -- wiring (the CLI and the local stack) -------------------------------------------------

def build_trigger(settings: RetrainSettings, db_url: str | None = None, kfp_host: str | None = None,
                  kfp_package: str | Path | None = None, namespace: str | None = None,
                  state_dir: str | Path | None = None, gateway: str | None = None,
                  prometheus: str | None = None, retrain_config: str = "retrain") -> tuple[Trigger, Any]:
    """A trigger over the loop store, with the kfp.local launcher (or KFP when ``kfp_host``);
    returns it and the store's signal source (whose ``feedback_counts`` the receiver exports).
    ``gateway``/``prometheus``: the local production stack a local run releases its version on."""
    from gourmetgram.loop.store import open_store
    from gourmetgram.retrain.signals import StoreSignals

    state = Path(state_dir) if state_dir else retrain_home()
    launcher: LocalLauncher | KfpLauncher = (
        KfpLauncher(kfp_host, kfp_package, namespace) if kfp_host
        else LocalLauncher(state / "runs", db_url=db_url, gateway=gateway, prometheus=prometheus,
                           retrain_config=retrain_config))
    signals = StoreSignals(open_store(db_url))
    trigger = Trigger(settings, signals, launcher, RunLock(state / "lock.json", launcher.still_running),
                      History(state / "history.jsonl"))
    return trigger, signals

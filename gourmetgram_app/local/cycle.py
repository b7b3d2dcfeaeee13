"""One turn of the closed loop on the local stack: what a triggered retrain runs, step by step.

    loop export (labelled production data: annotators' labels, else users' corrections)
    -> retrain (the training pipeline on kfp.local, with the production data merged in)
    -> differential gate (in the pipeline: v2 vs production v1 on the original and production sets)
    -> register (alias staging)
    -> staging: v2 on its own staging stack, warm-up requests, then the COMPILED staging-gate
       pipeline (pipelines/staging_gate_pipeline.yaml) on kfp.local: Locust against the SLOs
    -> canary on the production stack at the first of the rollout config's steps, then
       ``rollout auto --feedback`` raising it through the rest, judged on the SLOs and on what
       users say about each revision (the loop store)
    -> promote, or roll back (also when no decision came within the timeout)

Who runs it: the retrain receiver's job (:mod:`gourmetgram_app.local.retrain_job`), started by an
alert through Alertmanager (``gourmetgram serve --loop``); or ``gourmetgram loop cycle``, the
same turn by hand in the foreground (optionally with simulated users, :mod:`.simulate`). Both
take the run lock and write the run and each step to the retrain history (``loop status``, the
operator page and the demo read it). Without a production gateway a run stops after register
(what a run on a KFP backend does: there the staging gate and the canary are their own steps).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Callable

from gourmetgram.constants import PRODUCTION, REGISTERED_MODEL_NAME, STAGING
from gourmetgram.errors import BadInput, ConfigError
from gourmetgram.retrain.history import History
from gourmetgram.retrain.settings import ReleaseSettings
from gourmetgram_app.local.simulate import Behaviour, Judge, Population, SimulatedUsers

PROMOTED, ROLLED_BACK, REJECTED, BLOCKED, REGISTERED, FAILED = (
    "promoted", "rolled back", "rejected", "blocked", "registered", "failed")
# The steps a run records, in order (the history's "step" records; the demo prints them).
EXPORT, RETRAIN, GATE, REGISTER, STAGING_GATE, CANARY, DECISION = (
    "export", "retrain", "gate", "register", "staging", "canary", "decision")


@dataclasses.dataclass(frozen=True)
class UserSettings:
    """Simulated production users for ``loop cycle --simulate-users`` (see simulate.py)."""

    before: int = 240  # uploads before the cycle starts (drift onset: the first drifted one)
    photos: int = 300  # distinct photos (from the base dataset's training split), each also as a night shot
    behaviour: Behaviour = Behaviour(drifted_share=0.5)
    seed: int = 0
    workers: int = 2
    judge: Judge | None = None  # script the feedback (tests); None: honest users


@dataclasses.dataclass(frozen=True)
class CycleSettings:
    base: str | Path  # the dataset v1 was trained on (a folder, or a URI the pipeline reads)
    gateway: str | None = None  # the production stack to stage and canary on; None: stop after register
    prometheus: str | None = None  # its Prometheus (None: `rollout auto` starts one)
    train_config: str = "demo"
    epochs: int = -1
    release: ReleaseSettings = ReleaseSettings()
    db: str | None = None
    objects: str | None = None
    loop_config: str = "loop"
    workdir: Path | None = None  # the run's files (export, load test, rollout config); None: a new one
    users: UserSettings | None = None


@dataclasses.dataclass
class CycleResult:
    outcome: str = ""
    labels: dict[str, int] = dataclasses.field(default_factory=dict)  # by label source
    exported: dict[str, int] = dataclasses.field(default_factory=dict)  # by split
    production_dataset: str = ""
    v1: str | None = None
    v2: str | None = None
    accuracy: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # set -> v1/v2/n
    feedback: dict[str, dict] = dataclasses.field(default_factory=dict)  # revision -> figures
    reasons: list[str] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    mlflow_run_id: str = ""
    drift_to_promotion_s: float | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.outcome in (PROMOTED, REGISTERED) else 1


StepHook = Callable[[str, dict], None]


class Cycle:
    def __init__(self, settings: CycleSettings, out: Callable[[str], None] = print,
                 on_step: StepHook | None = None) -> None:
        self.s, self.out = settings, out
        self.on_step = on_step or (lambda step, data: None)
        self.result = CycleResult()
        self.home = _home()
        self.workdir = Path(settings.workdir) if settings.workdir else self.home / "retrain" / "cycle"
        self.drift_onset: float | None = None  # monotonic
        self.population: Population | None = None
        self.class_names: list[str] = []

    # -- helpers ---------------------------------------------------------------------------------
    def _heading(self, title: str) -> None:
        self.out(f"\n=== cycle: {title}")

    def _record(self, step: str, **data: Any) -> None:
        self.on_step(step, data)

    def _time(self, name: str, started: float) -> None:
        self.result.timings[name] = time.monotonic() - started

    def _store(self):
        from gourmetgram.loop.store import open_store

        return open_store(self.s.db)

    def _users(self, judge: Judge | None = None) -> SimulatedUsers:
        u = self.s.users
        assert u is not None and self.population is not None
        return SimulatedUsers(self.s.gateway or "", self.population, u.behaviour, seed=u.seed, judge=judge,
                              workers=u.workers)

    def rollout_config(self):
        """The rollout config the canary is judged by: the named file with the release's canary
        fields over it; its ``auto.steps`` must name at least the first canary percentage."""
        config = self.s.release.canary.rollout()
        if not config.auto.steps:
            raise ConfigError(f"{config.source}: auto.steps is empty; a staged canary needs at least one "
                              "percentage to start at (e.g. [10, 50])")
        return config

    # -- the steps -------------------------------------------------------------------------------
    def run(self) -> CycleResult:
        from gourmetgram import registry

        started = time.monotonic()
        v1 = registry.version_for(PRODUCTION)
        if v1 is None and self.s.gateway:
            raise BadInput("no model has the registry alias 'production': serve one first "
                            "(`gourmetgram pipeline run --stage production` + `gourmetgram serve --loop`)")
        self.result.v1 = None if v1 is None else str(v1)
        config = self.rollout_config() if self.s.gateway else None  # a bad one fails before training
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.s.users is not None:
            self.drift()
        export = self.export()
        run = self.retrain(export)
        if run is None:
            return self._finish(started)
        if not self.s.gateway:
            self.result.outcome = REGISTERED
            return self._finish(started)
        assert config is not None
        bundle, version = Path(run.outcome.bundle_uri), int(run.outcome.version)
        if self.staging(bundle, version, config.auto.steps[0]):
            self.canary(version, config)
        return self._finish(started)

    @property
    def base_dir(self) -> Path | None:
        """The base dataset as a local folder (None: a URI only the pipeline reads)."""
        path = Path(self.s.base)
        return path if "://" not in str(self.s.base) and path.is_dir() else None

    def _classes(self) -> list[str]:
        from gourmetgram import registry
        from gourmetgram.data.layout import validate_dataset
        from gourmetgram.loop.settings import class_names_from

        if not self.class_names:
            v1 = self.result.v1
            self.class_names = (class_names_from(registry.bundle_for(int(v1)).removeprefix("file://")) if v1
                                else list(validate_dataset(Path(self.s.base), progress=False).class_names))
        return self.class_names

    def drift(self) -> None:
        """Simulated production users, with the drifted sub-population from the first upload."""
        u, base = self.s.users, self.base_dir
        assert u is not None
        if base is None:
            raise BadInput(f"simulated users upload photos of the base dataset: {self.s.base} is not a local folder")
        self._heading(f"production traffic: {u.before} uploads by simulated users, "
                      f"{u.behaviour.drifted_share:.0%} of them night shots (drift onset)")
        t0 = time.monotonic()
        self.population = Population.from_split(base / "training", self._classes(), u.photos)
        users = self._users()
        report = users.run(u.before)
        self.drift_onset = users.drift_started_at
        self.out(report.format())
        self._time("users (drift)", t0)

    def export(self) -> str:
        """The labelled production data next to a copy of the base; "" when nothing is labelled
        yet (the retrain then trains on the base alone, and says so)."""
        from gourmetgram.loop.export import export_dataset
        from gourmetgram.loop.settings import load_loop_settings
        from gourmetgram.objectstore import ObjectStore

        self._heading("loop export: labelled production data (annotators' labels, else users' corrections)")
        t0 = time.monotonic()
        if self.base_dir is None:
            self.out(f"not exported: the base dataset {self.s.base} is not a local folder to add it to")
            self._record(EXPORT, labels={}, exported={}, production_dataset=None)
            return ""
        out = self.workdir / "production-data"
        report = export_dataset(self._store(), ObjectStore(self.s.objects), out, self._classes(),
                                load_loop_settings(self.s.loop_config).export, base=self.base_dir, overwrite=True)
        self.result.labels, self.result.exported = dict(report.labels), dict(report.per_split)
        self._time("export", t0)
        used = ", ".join(f"{k} {v}" for k, v in sorted(self.result.labels.items())) or "none"
        if not report.files:
            self.out("no labelled production sample yet: the retrain trains on the base dataset alone")
            self._record(EXPORT, labels={}, exported={}, production_dataset=None)
            return ""
        self.out(f"exported to {out}: {report.summary()}\nlabels used: {used}")
        self.result.production_dataset = str(out)
        self._record(EXPORT, labels=self.result.labels, exported=self.result.exported, production_dataset=str(out))
        return str(out)

    def retrain(self, export: str):
        from gourmetgram.evaluation.differential import format_comparison
        from gourmetgram_app.pipeline_runs import run_local

        self._heading(f"retrain: the training pipeline (kfp.local, config {self.s.train_config}) on "
                      f"{self.s.base}" + (f" + production data {export}" if export else ""))
        t0 = time.monotonic()
        self._record(RETRAIN, status="started", config=self.s.train_config)
        run = run_local(str(self.s.base), self.s.train_config, self.s.epochs, stage=STAGING,
                        production_dataset_uri=export)
        self._time("retrain", t0)
        self.result.mlflow_run_id = run.mlflow_run_id
        comparison = run.evaluation.comparison
        self._heading("differential gate: v2 vs production v1 on the original and production evaluation sets")
        if comparison:
            self.out(format_comparison(comparison))
            for row in comparison.get("sets", []):
                # the accuracies, and the gate's own figures where it gives them (the paired
                # difference, its interval, the test and its verdict)
                self.result.accuracy[row["name"]] = {
                    "v1": row["production"], "v2": row["candidate"], "n": row["n_images"],
                    **{k: row[k] for k in ("delta", "interval", "p_value", "test", "passed") if k in row}}
        self.result.reasons = [] if run.registered else list(run.outcome.reasons or run.reasons)
        self._record(GATE, passed=run.registered, seconds=round(run.seconds, 1), sets=self.result.accuracy,
                     reasons=self.result.reasons, mlflow_run_id=run.mlflow_run_id)
        if not run.registered:
            self.result.outcome = REJECTED
            self.out("v2 REJECTED by the evaluation gate: " + "; ".join(self.result.reasons))
            return None
        self.result.v2 = str(run.outcome.version)
        self._heading(f"register: {REGISTERED_MODEL_NAME} version {self.result.v2} (alias {STAGING}), "
                      f"bundle {run.outcome.bundle_uri}")
        self._record(REGISTER, version=int(run.outcome.version), bundle=run.outcome.bundle_uri)
        return run

    def staging(self, bundle: Path, version: int, canary_percent: int) -> bool:
        """v2 on a staging stack; warm-up requests; the compiled staging-gate pipeline on kfp.local."""
        from gourmetgram_app.local.ports import Ports
        from gourmetgram_app.local.stack import LocalStack
        from gourmetgram_app.pipeline_runs import run_staging_gate_local

        r, base = self.s.release.staging, self.base_dir
        if base is None:
            raise BadInput(f"the staging gate loads the staging stack with the base dataset's evaluation images: "
                            f"{self.s.base} is not a local folder")
        self._heading(f"staging: version {version} on a staging stack, {r.warmup_requests} warm-up requests, "
                      f"then the staging-gate pipeline (compiled, kfp.local: Locust {r.users} users for "
                      f"{r.run_time}, SLOs {r.slo})")
        t0 = time.monotonic()
        images = base / "evaluation"
        with LocalStack(bundle, STAGING, Ports.free(), logger_url="", model_version=version,
                        log_dir=self.workdir / "staging-stack") as staging:
            self.out(f"staging gateway {staging.gateway_url}")
            warm = warm_up(staging.gateway_url, images, r.warmup_requests)
            self.out(f"warm-up: {warm['ok']}/{warm['sent']} answered 200")
            gate = run_staging_gate_local(staging.gateway_url, version, images, r.slo, r.users, r.run_time,
                                          canary_percent=canary_percent,
                                          pipeline_root=self.workdir / "staging-gate")
        self._time("staging + gate", t0)
        self.out(gate.summary)
        self._record(STAGING_GATE, passed=gate.passed, summary=gate.summary, reasons=gate.outcome.reasons,
                     warmup=warm, seconds=round(gate.seconds, 1))
        if not gate.passed:
            self.result.outcome, self.result.reasons = BLOCKED, list(gate.outcome.reasons)
            self.out("v2 BLOCKED by the staging gate: " + "; ".join(self.result.reasons))
            return False
        return True

    def canary(self, version: int, config) -> None:
        """The canary at the first step, then raised and judged with the users' feedback: the
        release steps ``rollout canary`` and ``rollout auto --feedback`` run
        (:mod:`gourmetgram.rollout.release`), with the simulated users, if any."""
        from gourmetgram.rollout import release
        from gourmetgram.rollout.config import save_config
        from gourmetgram.rollout.feedback import StoreFeedback
        from gourmetgram.rollout.local import LocalRollout

        assert self.s.gateway is not None
        first, later = config.auto.steps[0], list(config.auto.steps[1:])
        self._heading(f"canary: version {version} at {first}% of production, raised through {later or '-'} by "
                      f"`rollout auto --feedback` (>= {config.analysis.min_feedback} answers per revision), "
                      "then promote or roll back")
        t0 = time.monotonic()
        save_config(config, self.workdir / "rollout.yaml")  # what this run's canary is judged by, kept with the run
        backend = LocalRollout(self.s.gateway)
        release.start_canary(backend, first, version, out=self.out)
        state = backend.state()
        self._record(CANARY, percent=first, revision=state.canary, stable=state.stable, version=version)
        watcher = _PercentWatcher(backend, first, lambda p: self._record(CANARY, percent=p, revision=state.canary))
        users = self._users(self.s.users.judge) if self.s.users is not None else None
        with watcher, release.prometheus_for(self.s.prometheus, self.s.gateway, out=self.out) as client:
            if users is not None:
                users.__enter__()
            try:
                promoted = release.auto(backend, client, config, feedback=StoreFeedback(self._store()), out=self.out)
            finally:
                if users is not None:
                    users.__exit__(None, None, None)
        after = backend.state()
        if promoted:
            outcome, why = PROMOTED, f"{state.canary} serves all traffic"
        elif after.canary and after.canary_percent:  # no decision within the timeout: the safe side
            release.rollback(backend, out=self.out)
            outcome, why = ROLLED_BACK, f"no decision within {config.auto.timeout_s:g} s: rolled back"
        else:
            outcome, why = ROLLED_BACK, "the canary analysis failed it"
        self._time("canary + analysis", t0)
        said = StoreFeedback(self._store())(state)
        self.result.feedback = {name: {"served": f.served, "answers": f.answers, "accuracy": f.accuracy}
                                for name, f in said.items()}
        if users is not None:
            self.out("simulated users during the canary:\n" + users.report.format())
        self.result.outcome = outcome
        if outcome != PROMOTED:
            self.result.reasons = [why]
        self._record(DECISION, outcome=outcome, detail=why, feedback=self.result.feedback)
        if outcome == PROMOTED and self.drift_onset is not None:
            self.result.drift_to_promotion_s = time.monotonic() - self.drift_onset

    def _finish(self, started: float) -> CycleResult:
        r = self.result
        r.timings["total"] = time.monotonic() - started
        self._heading(f"result: {r.outcome.upper()}")
        self.out(format_result(r))
        return r


class _PercentWatcher:
    """Reports each change of the canary's percentage while ``rollout auto`` raises it."""

    def __init__(self, backend, start: int, on_change: Callable[[int], None], every_s: float = 0.5) -> None:
        self.backend, self.last, self.on_change, self.every_s = backend, start, on_change, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                percent = self.backend.state().canary_percent
            except Exception:  # noqa: BLE001 - a missed poll only delays the report
                continue
            if percent and percent != self.last:
                self.last = percent
                self.on_change(percent)

    def __enter__(self) -> "_PercentWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def warm_up(gateway: str, images: Path, n: int) -> dict[str, int]:
    """``n`` predictions through ``gateway`` (evaluation images, in a fixed order): the new
    stack's first requests pay one-time costs that a load test must not count."""
    import httpx

    from gourmetgram.data.layout import list_images
    from gourmetgram_app.local.traffic import predict

    items = list_images(images)[:n] if n else []
    ok = 0
    with httpx.Client(timeout=60) as client:
        for path, _ in items:
            try:
                ok += predict(client, gateway, path.read_bytes()).status_code == 200
            except httpx.HTTPError:
                pass
    return {"sent": len(items), "ok": ok}


def format_result(r: CycleResult) -> str:
    def f(v) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [f"v1 (production before) = version {r.v1 or '-'}, v2 (retrained) = version {r.v2 or '-'}"]
    if r.accuracy:
        lines.append(f"  {'evaluation set':<16} {'images':>6} {'v1':>7} {'v2':>7}")
        for name, a in r.accuracy.items():
            lines.append(f"  {name:<16} {a.get('n', 0):>6} {f(a.get('v1')):>7} {f(a.get('v2')):>7}")
    lines.append("labels used: " + (", ".join(f"{k} {v}" for k, v in sorted(r.labels.items())) or "none")
                 + ("; production images by split: " + ", ".join(f"{k} {v}" for k, v in r.exported.items())
                    if r.exported else ""))
    for name, fb in r.feedback.items():
        lines.append(f"  feedback during the canary, {name}: served {fb['served']}, answers {fb['answers']}, "
                     f"feedback accuracy {f(fb['accuracy'])}")
    if r.reasons:
        lines.append("reasons: " + "; ".join(r.reasons))
    lines.append("step times: " + ", ".join(f"{k} {v:.0f} s" for k, v in r.timings.items()))
    if r.drift_to_promotion_s is not None:
        lines.append(f"time from drift onset (first night shot uploaded) to v2 promoted: {r.drift_to_promotion_s:.0f} s")
    return "\n".join(lines)


def _home() -> Path:
    from gourmetgram.tracking import home

    return home()


def run_recorded(settings: CycleSettings, run_id: str, history: History,
                 out: Callable[[str], None] = print) -> CycleResult | None:
    """Run one turn (the job's and ``loop cycle``'s), recording each step and the end of
    ``run_id`` in ``history``; None when it failed (the error is recorded and printed)."""
    import sys
    from datetime import datetime, timezone

    record: dict = {"event": "finished", "run_id": run_id}
    result = None
    try:
        def on_step(step: str, data: dict) -> None:
            history.step(run_id, step, **data)

        result = Cycle(settings, out=out, on_step=on_step).run()
        record.update(status=result.outcome, version=int(result.v2) if result.v2 else None,
                      production_version_before=result.v1, mlflow_run_id=result.mlflow_run_id or None,
                      production_dataset=result.production_dataset or None, labels=result.labels,
                      reasons=result.reasons)
    except BaseException as exc:  # noqa: BLE001 - record any failure, then let the caller clean up
        record.update(status=FAILED, error=f"{type(exc).__name__}: {exc}")
        print(f"retrain {run_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        if not isinstance(exc, Exception):
            raise
    finally:
        record["finished_at"] = datetime.now(timezone.utc).isoformat()
        history.append(record)
    return result


# -- the command: `gourmetgram loop cycle` ---------------------------------------------------------

def _run(args) -> int:
    import os
    import uuid
    from datetime import datetime, timezone

    from gourmetgram.constants import GATEWAY_PORT, HOST
    from gourmetgram.loop.store import open_store
    from gourmetgram.retrain.history import retrain_home
    from gourmetgram.retrain.lock import Busy, RunLock
    from gourmetgram.retrain.policy import MANUAL
    from gourmetgram.retrain.settings import load_retrain_settings
    from gourmetgram.retrain.signals import StoreSignals

    base = Path(args.base) if args.base else _home() / "data" / "demo"
    if not (base / "training").is_dir():
        raise BadInput(f"--base {base}: not a dataset in the Food-11 layout (the one v1 was trained on)")
    users = None
    if args.simulate_users is not None:
        if args.simulate_users < 0:
            raise BadInput("--simulate-users must be >= 0")
        try:
            behaviour = Behaviour(drifted_share=args.drifted_share)
        except ValueError as exc:
            raise BadInput(f"--drifted-share: {exc}") from None
        users = UserSettings(before=args.simulate_users, behaviour=behaviour)
    retrain = load_retrain_settings(args.retrain_config)
    state = Path(args.state_dir) if args.state_dir else retrain_home()
    now = datetime.now(timezone.utc)
    run_id = f"cycle-{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    settings = CycleSettings(
        base=base, gateway=args.gateway or f"http://{HOST}:{GATEWAY_PORT}", prometheus=args.prometheus,
        train_config=args.train_config or retrain.run.config, epochs=args.epochs, release=retrain.release,
        db=args.db, objects=args.objects, loop_config=args.config, workdir=state / "runs" / run_id, users=users)
    lock, history = RunLock(state / "lock.json"), History(state / "history.jsonl")
    try:  # never beside a triggered run: the same lock
        lock.acquire(run_id, (MANUAL,), now.isoformat())
    except Busy as exc:
        raise BadInput(f"a retrain is running: {exc}; wait for it (`gourmetgram loop status`)") from None
    try:
        history.append({"event": "started", "run_id": run_id, "reasons": [MANUAL], "started_at": now.isoformat(),
                        "labels_at_start": StoreSignals(open_store(args.db)).labels_total(), "launcher": "local",
                        "source": "cli:loop cycle", "pid": os.getpid(),
                        "message": "start: manual: `gourmetgram loop cycle`"})
        result = run_recorded(settings, run_id, history, out=lambda line: print(line, flush=True))
    finally:
        lock.release(run_id)
    return 1 if result is None else result.exit_code


def add_cycle_parser(sub, common) -> None:
    p = sub.add_parser(
        "cycle", help="one turn of the loop by hand: export -> retrain -> gates -> staging -> canary -> promote",
        description="What a triggered retrain runs, in the foreground: export the labelled production data, "
        "retrain with it (training pipeline on kfp.local, differential gate against production), register, "
        "the staging gate (a staging stack, then the compiled staging-gate pipeline on kfp.local), the canary "
        "on the running production stack (`serve --stage production --loop`) raised through the rollout "
        "config's steps by `rollout auto --feedback`, then promote or roll back; settings from the retrain "
        "config's release section. It takes the retrain lock and is recorded in the retrain history like a "
        "triggered run. Exit 0 promoted; 1 rejected, blocked or rolled back.")
    common(p)
    p.add_argument("--gateway", help="production gateway URL (default: the local stack's)")
    p.add_argument("--prometheus", help="its Prometheus (default: `rollout auto` starts one)")
    p.add_argument("--base", help="the dataset v1 was trained on (default: $GOURMETGRAM_HOME/data/demo)")
    p.add_argument("--train-config", help="training config (default: the retrain config's run.config)")
    p.add_argument("--epochs", type=int, default=-1, help="-1: from the training config")
    p.add_argument("--retrain-config", default="retrain",
                   help="retrain config: its release section sets the staging gate and the canary (default: %(default)s)")
    p.add_argument("--state-dir", help="the retrain lock and history (default: $GOURMETGRAM_HOME/retrain)")
    p.add_argument("--simulate-users", type=int, metavar="N", help="simulated production users: N uploads "
                   "with a drifted sub-population before the cycle, and users throughout the canary")
    p.add_argument("--drifted-share", type=float, default=0.5, help="with --simulate-users: share of night "
                   "shots among the uploads (default: %(default)s)")
    p.set_defaults(func=_run)

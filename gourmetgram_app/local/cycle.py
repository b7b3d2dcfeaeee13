"""``gourmetgram loop cycle``: one turn of the closed loop on the local stack, step by step.

    (simulated users: drift onset, feedback) -> loop export (labelled production data)
    -> retrain (the training pipeline with the production dataset merged in)
    -> differential gate (v2 vs production v1 on the original and production evaluation sets)
    -> register (alias staging) -> staging (a staging stack with v2) -> staging gate (Locust, SLOs)
    -> canary at N% of production -> analysis with user feedback -> promote or roll back

Every step prints what it did and its figures; the run ends with v1 vs v2 accuracy on both
evaluation sets, the labels used, per-revision feedback during the canary, and the time from
the drift onset (the first drifted upload) to the promoted v2. It drives a running production
stack with the loop (``gourmetgram serve --stage production --loop``: the capture sink keeps
predictions and feedback in the loop store this command reads). With ``users`` (simulated users,
:mod:`gourmetgram_app.local.simulate`) the production traffic and feedback are simulated: first
``users.before`` uploads with the drifted sub-population, then users throughout the canary;
without, the canary waits for real users' feedback (``--timeout``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from gourmetgram.constants import PRODUCTION, REGISTERED_MODEL_NAME, STAGING
from gourmetgram.errors import UserError
from gourmetgram_app.local.simulate import Behaviour, Judge, Population, SimulatedUsers

PROMOTED, ROLLED_BACK, HELD, REJECTED, BLOCKED = "promoted", "rolled back", "held", "rejected", "blocked"


@dataclasses.dataclass(frozen=True)
class UserSettings:
    """Simulated production users (see gourmetgram_app/local/simulate.py)."""

    before: int = 240  # uploads before the cycle starts (drift onset: the first drifted one)
    photos: int = 300  # distinct photos (from the base dataset's training split), each also as a night shot
    behaviour: Behaviour = Behaviour(drifted_share=0.5)
    seed: int = 0
    workers: int = 2
    judge: Judge | None = None  # script the feedback (tests); None: honest users


@dataclasses.dataclass(frozen=True)
class CycleSettings:
    gateway: str
    base: Path  # the dataset v1 was trained on
    train_config: str = "demo"
    epochs: int = -1
    canary_percent: int = 30
    slo: str = "slo"
    staging_users: int = 4
    staging_run_time: str = "20s"
    rollout_config: str | None = None
    window: str = "15s"
    min_requests: int = 15
    min_feedback: int = 15
    interval_s: float = 4.0
    timeout_s: float = 600.0
    db: str | None = None
    objects: str | None = None
    loop_config: str = "loop"
    users: UserSettings | None = None


@dataclasses.dataclass
class CycleResult:
    outcome: str = ""
    labels: dict[str, int] = dataclasses.field(default_factory=dict)  # by label source
    exported: dict[str, int] = dataclasses.field(default_factory=dict)  # by split
    v1: str | None = None
    v2: str | None = None
    accuracy: dict[str, dict[str, float | None]] = dataclasses.field(default_factory=dict)  # set -> v1/v2
    feedback: dict[str, dict] = dataclasses.field(default_factory=dict)  # revision -> figures
    reasons: list[str] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    drift_to_promotion_s: float | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.outcome == PROMOTED else 1


class Cycle:
    def __init__(self, settings: CycleSettings, out: Callable[[str], None] = print) -> None:
        self.s, self.out = settings, out
        self.result = CycleResult()
        self.home = _home()
        self.drift_onset: float | None = None  # monotonic
        self.population: Population | None = None
        self.class_names: list[str] = []

    # -- helpers ---------------------------------------------------------------------------------
    def _step(self, title: str) -> None:
        self.out(f"\n=== cycle: {title}")

    def _time(self, name: str, started: float) -> None:
        self.result.timings[name] = time.monotonic() - started

    def _store(self):
        from gourmetgram.loop.store import open_store

        return open_store(self.s.db)

    def _users(self, judge: Judge | None = None) -> SimulatedUsers:
        u = self.s.users
        assert u is not None and self.population is not None
        return SimulatedUsers(self.s.gateway, self.population, u.behaviour, seed=u.seed, judge=judge,
                              workers=u.workers)

    # -- the steps -------------------------------------------------------------------------------
    def run(self) -> CycleResult:
        from gourmetgram import registry

        started = time.monotonic()
        v1 = registry.version_for(PRODUCTION)
        if v1 is None:
            raise UserError("no model has the registry alias 'production': serve one first "
                            "(`gourmetgram pipeline run --stage production` + `gourmetgram serve --loop`)")
        self.result.v1 = str(v1)
        from gourmetgram.loop.settings import class_names_from

        self.class_names = class_names_from(registry.bundle_for(v1).removeprefix("file://"))
        if self.s.users is not None:
            self.drift()
        export = self.export()
        run = self.retrain(export)
        if run is None:
            return self._finish(started)
        bundle, version = Path(run.outcome.bundle_uri), run.outcome.version
        if not self.staging(bundle, version):
            return self._finish(started)
        self.canary(bundle, version)
        return self._finish(started)

    def drift(self) -> None:
        """Simulated production users, with the drifted sub-population from the first upload."""
        u = self.s.users
        assert u is not None
        self._step(f"production traffic: {u.before} uploads by simulated users, "
                   f"{u.behaviour.drifted_share:.0%} of them night shots (drift onset)")
        t0 = time.monotonic()
        self.population = Population.from_split(self.s.base / "training", self.class_names, u.photos)
        users = self._users()
        report = users.run(u.before)
        self.drift_onset = users.drift_started_at
        self.out(report.format())
        self._time("users (drift)", t0)

    def export(self) -> Path:
        from gourmetgram.loop.export import export_dataset
        from gourmetgram.loop.settings import load_loop_settings
        from gourmetgram.objectstore import ObjectStore

        self._step("loop export: labelled production data (annotators' labels, else users' corrections)")
        t0 = time.monotonic()
        out = self.home / "data" / "production-cycle"
        report = export_dataset(self._store(), ObjectStore(self.s.objects), out,
                                self.class_names,
                                load_loop_settings(self.s.loop_config).export, base=self.s.base, overwrite=True)
        self.result.labels = dict(report.labels)
        self.result.exported = dict(report.per_split)
        self.out(f"exported to {out}: {report.summary()}")
        self.out("labels used: " + (", ".join(f"{k} {v}" for k, v in sorted(self.result.labels.items())) or "none"))
        self._time("export", t0)
        if not report.files:
            raise UserError("no labelled production sample to retrain with: collect feedback/annotations first")
        return out

    def retrain(self, export: Path):
        from gourmetgram.evaluation.differential import format_comparison
        from gourmetgram_app.cli.commands.pipeline import run_local

        self._step(f"retrain: the training pipeline (kfp.local, config {self.s.train_config}) on {self.s.base} "
                   f"+ production data {export}")
        t0 = time.monotonic()
        run = run_local(str(self.s.base), self.s.train_config, self.s.epochs, stage=STAGING,
                        production_dataset_uri=str(export))
        self._time("retrain", t0)
        comparison = run.evaluation.comparison
        self._step("differential gate: v2 vs production v1 on the original and production evaluation sets")
        if comparison:
            self.out(format_comparison(comparison))
            for row in comparison.get("sets", []):
                self.result.accuracy[row["name"]] = {"v1": row["production"], "v2": row["candidate"],
                                                     "n": row["n_images"]}
        if not run.registered:
            self.result.outcome = REJECTED
            self.result.reasons = list(run.outcome.reasons or run.reasons)
            self.out("v2 REJECTED by the evaluation gate: " + "; ".join(self.result.reasons))
            return None
        self.result.v2 = str(run.outcome.version)
        self._step(f"register: {REGISTERED_MODEL_NAME} version {self.result.v2} (alias {STAGING}), "
                   f"bundle {run.outcome.bundle_uri}")
        return run

    def staging(self, bundle: Path, version: int) -> bool:
        from components.steps import block_step, loadtest_step, promote_step
        from gourmetgram_app.local.stack import LocalStack, Ports

        self._step(f"staging: version {version} on a staging stack, then the staging gate "
                   f"(Locust, {self.s.staging_users} users for {self.s.staging_run_time}, SLOs {self.s.slo})")
        t0 = time.monotonic()
        images = self.s.base / "evaluation"
        with LocalStack(bundle, STAGING, Ports.free(), logger_url="", model_version=version,
                        log_dir=self.home / "logs" / "cycle-staging") as staging:
            self.out(f"staging gateway {staging.gateway_url}")
            summary = loadtest_step(staging.gateway_url, images, self.home / "loadtests" / f"cycle-v{version}",
                                    self.s.slo, self.s.staging_users, self.s.staging_run_time, quiet=True)
        self._time("staging + gate", t0)
        if not summary.passed:
            block_step(version, REGISTERED_MODEL_NAME, summary.reasons, summary.format())
            self.result.outcome, self.result.reasons = BLOCKED, list(summary.reasons)
            return False
        promote_step(version, REGISTERED_MODEL_NAME, self.s.canary_percent, summary.format())
        return True

    def _rollout_config(self):
        from gourmetgram.config import override
        from gourmetgram.rollout.analysis import load_config

        config = load_config(self.s.rollout_config)
        config = override(config, "analysis", window=self.s.window, min_requests=self.s.min_requests,
                          min_feedback=self.s.min_feedback, require_feedback=True)
        return override(config, "auto", steps=(), passes_per_step=2, interval_s=self.s.interval_s,
                        timeout_s=self.s.timeout_s)

    def canary(self, bundle: Path, version: int) -> None:
        from gourmetgram.rollout.analysis import PROMOTE, ROLLBACK, run_auto
        from gourmetgram.rollout.feedback import StoreFeedback
        from gourmetgram.rollout.local import LocalRollout
        from gourmetgram.rollout.prometheus import LocalPrometheus
        from gourmetgram_app.cli.commands.rollout import _aliases_after

        self._step(f"canary: version {version} at {self.s.canary_percent}% of production, analysed with "
                   f"user feedback (>= {self.s.min_feedback} answers per revision)")
        t0 = time.monotonic()
        backend = LocalRollout(self.s.gateway)
        backend.canary(str(bundle), self.s.canary_percent, version)
        state = backend.state()
        self.out(f"stable {state.stable} (v{self.result.v1}), canary {state.canary} (v{version}) at "
                 f"{state.canary_percent}%")
        feedback = StoreFeedback(self._store())
        config = self._rollout_config()
        with LocalPrometheus(self.s.gateway) as prom:
            users = self._users(self.s.users.judge) if self.s.users is not None else None
            if users is not None:
                users.__enter__()
            try:
                decision = run_auto(backend, prom.client(), config, out=self.out,
                                    on_promote=lambda: _aliases_after(PROMOTE, str(version), self.out),
                                    on_rollback=lambda: _aliases_after(ROLLBACK, str(version), self.out),
                                    feedback=feedback)
            finally:
                if users is not None:
                    users.__exit__(None, None, None)
        self._time("canary + analysis", t0)
        said = feedback(state)
        self.result.feedback = {name: {"served": f.served, "answers": f.answers, "accuracy": f.accuracy}
                                for name, f in said.items()}
        if users is not None:
            self.out("simulated users during the canary:\n" + users.report.format())
        self.result.outcome = {PROMOTE: PROMOTED, ROLLBACK: ROLLED_BACK}.get(decision, HELD)
        if decision == PROMOTE and self.drift_onset is not None:
            self.result.drift_to_promotion_s = time.monotonic() - self.drift_onset

    def _finish(self, started: float) -> CycleResult:
        r = self.result
        self.result.timings["total"] = time.monotonic() - started
        self._step(f"result: {r.outcome.upper()}")
        self.out(format_result(r))
        return r


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


# -- the command ------------------------------------------------------------------------------------

def _run(args) -> int:
    from gourmetgram.constants import GATEWAY_PORT, HOST

    base = Path(args.base) if args.base else _home() / "data" / "demo"
    if not (base / "training").is_dir():
        raise UserError(f"--base {base}: not a dataset in the Food-11 layout (the one v1 was trained on)")
    if not 1 <= args.canary_percent <= 99:
        raise UserError(f"--canary-percent must be within 1..99, got {args.canary_percent}")
    users = None
    if args.simulate_users is not None:
        if args.simulate_users < 0:
            raise UserError("--simulate-users must be >= 0")
        try:
            behaviour = Behaviour(drifted_share=args.drifted_share)
        except ValueError as exc:
            raise UserError(f"--drifted-share: {exc}") from None
        users = UserSettings(before=args.simulate_users, behaviour=behaviour)
    settings = CycleSettings(
        gateway=args.gateway or f"http://{HOST}:{GATEWAY_PORT}", base=base, train_config=args.train_config,
        epochs=args.epochs, canary_percent=args.canary_percent, slo=args.slo,
        staging_run_time=args.staging_run_time, rollout_config=args.rollout_config, window=args.window,
        min_requests=args.min_requests, min_feedback=args.min_feedback, timeout_s=args.timeout,
        db=args.db, objects=args.objects, loop_config=args.config, users=users)
    return Cycle(settings, out=lambda line: print(line, flush=True)).run().exit_code


def add_cycle_parser(sub, common) -> None:
    p = sub.add_parser(
        "cycle", help="one turn of the loop: export -> retrain -> gates -> staging -> canary with feedback",
        description="Export the labelled production data, retrain with it (training pipeline, differential "
        "gate against production on the original and production evaluation sets), register, load-test v2 "
        "on a staging stack against the SLOs, start it as a canary on the running production stack "
        "(`serve --stage production --loop`), analyse it with user feedback from the loop store, and "
        "promote or roll back. Exit 0 promoted; 1 rejected, blocked, rolled back or held.")
    common(p)
    p.add_argument("--gateway", help="production gateway URL (default: the local stack's)")
    p.add_argument("--base", help="the dataset v1 was trained on (default: $GOURMETGRAM_HOME/data/demo)")
    p.add_argument("--train-config", default="demo", help="training config (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=-1, help="-1: from the training config")
    p.add_argument("--canary-percent", type=int, default=30, help="(default: %(default)s)")
    p.add_argument("--slo", default="slo", help="staging gate SLOs (default: configs/slo.yaml)")
    p.add_argument("--staging-run-time", default="20s", help="staging load test duration (default: %(default)s)")
    p.add_argument("--rollout-config", help="canary analysis thresholds (default: configs/rollout.yaml)")
    p.add_argument("--window", default="15s", help="canary analysis window (default: %(default)s)")
    p.add_argument("--min-requests", type=int, default=15, help="(default: %(default)s)")
    p.add_argument("--min-feedback", type=int, default=15,
                   help="feedback answers per revision before the canary is judged (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=600.0, help="give the canary up after this many "
                   "seconds without a decision (default: %(default)s)")
    p.add_argument("--simulate-users", type=int, metavar="N", help="simulated production users: N uploads "
                   "with a drifted sub-population before the cycle, and users throughout the canary")
    p.add_argument("--drifted-share", type=float, default=0.5, help="with --simulate-users: share of night "
                   "shots among the uploads (default: %(default)s)")
    p.set_defaults(func=_run)

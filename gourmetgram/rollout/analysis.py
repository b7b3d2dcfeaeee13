"""Canary analysis: collect the figures, decide, and walk the canary through its steps.

The parts live by concern: settings in :mod:`~gourmetgram.rollout.config`, the PromQL and the
figures in :mod:`~gourmetgram.rollout.queries`, the always-valid statistics in
:mod:`~gourmetgram.rollout.sequential`, the pure decision in :mod:`~gourmetgram.rollout.decision`.
This module joins them: :func:`analyze` (one look) and :func:`run_auto` (the staged rollout that
``rollout auto``, the demo and the loop's canary run). Its names below are the entry points the
callers import.

User feedback (``rollout analyze|auto --feedback``: the loop store, where the capture sink keeps
every served prediction and ``POST /v1/feedback`` what users said about it) adds two checks: the
feedback accuracy and the marked-wrong rate, canary vs stable over the same period.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from gourmetgram.errors import BadInput
from gourmetgram.rollout.config import RolloutConfig, Thresholds, load_config
from gourmetgram.rollout.decision import HOLD, PROMOTE, ROLLBACK, Verdict, decide
from gourmetgram.rollout.prometheus import PrometheusClient
from gourmetgram.rollout.queries import FeedbackFigures, FeedbackSource, collect, queries, since_range
from gourmetgram.rollout.state import RolloutBackend, RolloutState

__all__ = ["HOLD", "PROMOTE", "RAISE", "ROLLBACK", "RolloutState", "StagedRollout", "analyze", "load_config",
           "queries", "run_auto"]
RAISE = "raise"


@dataclasses.dataclass
class StagedRollout:
    """What ``rollout auto`` does after each verdict: roll back on ROLLBACK; hold on HOLD (and start
    counting passes again); after ``passes_per_step`` PROMOTE verdicts in a row raise the canary to
    the next of ``steps``, or promote it after the last."""

    steps: list[int]
    passes_per_step: int
    passes: int = 0

    def after(self, decision: str) -> tuple[str, int | None]:
        """``(ROLLBACK|HOLD|RAISE|PROMOTE, the new percentage for RAISE)``."""
        if decision == ROLLBACK:
            return ROLLBACK, None
        if decision == HOLD:
            self.passes = 0
            return HOLD, None
        self.passes += 1
        if self.passes < self.passes_per_step:
            return HOLD, None
        self.passes = 0
        if self.steps:
            return RAISE, self.steps.pop(0)
        return PROMOTE, None


def analyze(client: PrometheusClient, state: RolloutState, thresholds: Thresholds,
            window: str | None = None, feedback: FeedbackSource | None = None,
            started: float | None = None, now: Callable[[], float] = time.time) -> Verdict:
    """Collect the figures for the current canary since it started (``state.canary_started``,
    else ``started``, else only the recent window) and, with ``feedback``, what users said about
    each revision; decide."""
    if not state.canary or not state.stable or state.canary == state.stable:
        raise BadInput(f"{state.inferenceservice} has no canary to analyse (revisions: "
                        f"{[r.get('name') for r in state.revisions]})")
    window = window or thresholds.window
    start = state.canary_started or started
    since = since_range(now() - start) if start else None
    figures = collect(client, state, window, since)
    if feedback is not None:
        said = feedback(state)
        for name, fig in figures.items():
            fig.feedback = said.get(name, FeedbackFigures())
    return decide(figures[state.stable], figures[state.canary], thresholds, window, since)


def run_auto(backend: RolloutBackend, client: PrometheusClient, config: RolloutConfig,
             out: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
             on_promote: Callable[[], None] | None = None,
             on_rollback: Callable[[], None] | None = None,
             feedback: FeedbackSource | None = None) -> str:
    """The staged rollout driven by the evidence, one analysis every ``interval_s``.

    Rolls back as soon as an analysis shows the canary worse; holds while the evidence is
    inconclusive; after ``passes_per_step`` analyses in a row that show it no worse, raises its
    share to the next of ``auto.steps`` (the bounds: never past the last step before the
    promotion), and promotes it after the last step. The counts accumulate from the canary's
    start (or, where the backend does not know it, from this call), so each raise rests on all
    the evidence so far, taken at always-valid levels. Gives up after ``timeout_s`` (returns
    ``hold``, the canary left as it is).
    """
    auto, t = config.auto, config.analysis
    state = backend.state()
    if state.canary_percent is None or not state.canary:
        raise BadInput(f"{state.inferenceservice} has no canary; start one with `rollout canary`")
    steps = [s for s in auto.steps if s > state.canary_percent]
    called = time.time()
    counted = "since the canary started" if state.canary_started else "from now on"
    out(f"auto rollout of {state.canary} (now {state.canary_percent}%), steps {steps or '-'}, then promote; "
        f"analysis every {auto.interval_s:g} s on counts {counted} (always-valid tests, alpha {t.alpha:g}; "
        f"p95 over {t.window})")
    started = time.monotonic()
    staged = StagedRollout(steps, auto.passes_per_step)
    while time.monotonic() - started < auto.timeout_s:
        sleep(auto.interval_s)
        state = backend.state()
        verdict = analyze(client, state, t, feedback=feedback, started=called)
        out(f"[{time.monotonic() - started:6.1f} s] canary at {state.canary_percent}%")
        out(verdict.report())
        action, step = staged.after(verdict.decision)
        if action == ROLLBACK:
            backend.rollback()
            if on_rollback:
                on_rollback()
            out(f"rolled back: all traffic to {state.stable}")
            return ROLLBACK
        if action == HOLD:
            continue
        if action == RAISE:
            assert step is not None
            backend.set_percent(step)
            out(f"canary raised to {step}% (no worse on the evidence so far)")
            continue
        backend.promote()
        if on_promote:
            on_promote()
        out(f"promoted: {state.canary} serves all traffic")
        return PROMOTE
    out(f"no decision within {auto.timeout_s:g} s; the canary stays at its percentage")
    return HOLD

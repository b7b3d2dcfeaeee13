"""When to re-train: a pure function of the settings, the signals and the alerts received.

Nothing here reads a clock, a file or a database: the caller gathers :class:`Signals` (from
the loop store, the run history, the lock) and the policy answers with a :class:`Decision`
that says whether to start and why (or why not), so every rule is unit-testable.

Triggers (any one is enough): ``schedule`` (the last retrain is older than
``triggers.schedule_every``, or there never was one), ``drift`` (a drift alert arrived),
``degradation`` (a degradation alert arrived, or production accuracy from feedback over the
window is under the threshold with enough answers), ``manual`` (asked for by name).
Guard rails, checked in this order: never two runs at once; not within the cool-down after
the last start; not with fewer than ``guards.min_new_labels`` labels since the last retrain
(there would be nothing new to learn from).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime

from gourmetgram.retrain.settings import RetrainSettings, duration_s

SCHEDULE, DRIFT, DEGRADATION, MANUAL = "schedule", "drift", "degradation", "manual"
REASONS = (SCHEDULE, DRIFT, DEGRADATION, MANUAL)


@dataclasses.dataclass(frozen=True)
class LastRun:
    """The most recent retrain that was started (from the run history)."""

    run_id: str
    started_at: datetime
    labels_at_start: int
    reasons: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Signals:
    now: datetime
    labels_total: int  # labelled production samples in the loop store, all time
    last_run: LastRun | None = None
    running: str | None = None  # id of a run in progress (from the lock), if any
    feedback_correct: int = 0  # production feedback in the degradation window
    feedback_total: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.feedback_correct / self.feedback_total if self.feedback_total else None

    @property
    def new_labels(self) -> int:
        return self.labels_total - (self.last_run.labels_at_start if self.last_run else 0)


@dataclasses.dataclass(frozen=True)
class Decision:
    start: bool
    reasons: tuple[str, ...]  # the triggers that fired (empty: not needed)
    blocked_by: str | None  # the guard rail that held a fired trigger back
    message: str


def fired(settings: RetrainSettings, signals: Signals, alerts: Iterable[str] = ()) -> tuple[tuple[str, ...], list[str]]:
    """The reasons that fired and one line of why for each (what gets logged)."""
    reasons: list[str] = []
    why: list[str] = []
    alerts = set(alerts)
    for reason in REASONS:
        if reason in alerts and reason in (DRIFT, MANUAL):
            reasons.append(reason)
            why.append(f"{reason}: {'drift alert received' if reason == DRIFT else 'requested'}")
    every = duration_s(settings.triggers.schedule_every)
    last = signals.last_run
    if last is None:
        reasons.append(SCHEDULE)
        why.append("schedule: no retrain on record")
    elif (signals.now - last.started_at).total_seconds() >= every:
        reasons.append(SCHEDULE)
        why.append(f"schedule: last retrain {last.run_id} started {_ago(signals.now, last.started_at)} ago "
                   f"(every {settings.triggers.schedule_every})")
    d = settings.degradation
    acc = signals.accuracy
    if DEGRADATION in alerts:
        reasons.append(DEGRADATION)
        why.append("degradation: alert received")
    elif acc is not None and signals.feedback_total >= d.min_feedback and acc < d.threshold:
        reasons.append(DEGRADATION)
        why.append(f"degradation: {d.stage} accuracy {acc:.3f} over the last {d.window} "
                   f"({signals.feedback_correct}/{signals.feedback_total}) < {d.threshold}")
    return tuple(reasons), why


def decide(settings: RetrainSettings, signals: Signals, alerts: Iterable[str] = ()) -> Decision:
    reasons, why = fired(settings, signals, alerts)
    if not reasons:
        acc = signals.accuracy
        detail = (f"{settings.degradation.stage} accuracy {acc:.3f} on {signals.feedback_total} answer(s)"
                  if acc is not None else f"no {settings.degradation.stage} feedback in the window")
        return Decision(False, (), None, f"not needed: no trigger fired ({detail}; "
                                          f"last retrain {_last(signals)})")
    fired_line = "; ".join(why)
    if signals.running:
        return Decision(False, reasons, "running",
                        f"held back: retrain {signals.running} is still running (fired: {fired_line})")
    last = signals.last_run
    cooldown = duration_s(settings.guards.cooldown)
    if last is not None and (signals.now - last.started_at).total_seconds() < cooldown:
        return Decision(False, reasons, "cooldown",
                        f"held back: cool-down, last retrain {last.run_id} started "
                        f"{_ago(signals.now, last.started_at)} ago (cool-down {settings.guards.cooldown}; "
                        f"fired: {fired_line})")
    need = settings.guards.min_new_labels
    if signals.new_labels < need:
        return Decision(False, reasons, "min_new_labels",
                        f"held back: {signals.new_labels} new label(s) since the last retrain, "
                        f"{need} needed (fired: {fired_line})")
    return Decision(True, reasons, None, f"start: {fired_line}; {signals.new_labels} new label(s)")


def _ago(now: datetime, then: datetime) -> str:
    s = int((now - then).total_seconds())
    return f"{s // 86400}d{s % 86400 // 3600}h" if s >= 86400 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def _last(signals: Signals) -> str:
    last = signals.last_run
    return "none" if last is None else f"{last.run_id}, {_ago(signals.now, last.started_at)} ago"

"""Apply the policy and start a run: what the receiver does per alert and what
``gourmetgram loop retrain --if-needed`` does on demand (the same code, the same rules).

The launcher is injected (a Protocol): kfp.local or kfp.Client live in the app layer
(:mod:`gourmetgram_app.local.retrain`). Every decision is logged with its reason, and every start
is written to the run history before anyone can see the lock freed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any, Protocol

from gourmetgram.retrain.history import History
from gourmetgram.retrain.lock import Busy, LockInfo, RunLock
from gourmetgram.retrain.policy import Decision, Signals, decide
from gourmetgram.retrain.settings import RetrainSettings, duration_s

log = logging.getLogger("gourmetgram.retrain")


class SignalSource(Protocol):
    """What the policy needs from the loop store."""

    def labels_total(self) -> int: ...

    def feedback_window(self, stage: str, since: datetime) -> tuple[int, int]:
        """``(correct, total)`` feedback answers for ``stage`` given at or after ``since``."""
        ...


class Launcher(Protocol):
    kind: str

    def start(self, run_id: str, reasons: tuple[str, ...], settings: RetrainSettings, lock: RunLock,
              history: History) -> dict[str, Any]:
        """Start the run and hand the lock over to it; returns what to log (pid, KFP run id, log file)."""
        ...

    def still_running(self, info: LockInfo) -> bool: ...


class LaunchFailed(Exception):
    """The launcher could not start the run (the lock was released; try again later)."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    decision: Decision
    run_id: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def started(self) -> bool:
        return self.run_id is not None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Trigger:
    def __init__(self, settings: RetrainSettings, signals: SignalSource, launcher: Launcher,
                 lock: RunLock, history: History, clock: Callable[[], datetime] = utcnow):
        self.settings, self.source, self.launcher = settings, signals, launcher
        self.lock, self.history, self.clock = lock, history, clock
        self._serial = threading.Lock()  # one decision at a time in this process

    def signals(self) -> Signals:
        now = self.clock()
        d = self.settings.degradation
        since = datetime.fromtimestamp(now.timestamp() - duration_s(d.window), timezone.utc)
        correct, total = self.source.feedback_window(d.stage, since)
        running = self.lock.current()
        return Signals(now=now, labels_total=self.source.labels_total(), last_run=self.history.last_started(),
                       running=running.run_id if running else None, feedback_correct=correct,
                       feedback_total=total)

    def evaluate(self, alerts: Iterable[str] = ()) -> Decision:
        """The decision, with no side effect."""
        return decide(self.settings, self.signals(), alerts)

    def fire(self, alerts: Iterable[str] = (), source: str = "cli") -> Outcome:
        alerts = tuple(alerts)
        with self._serial:
            decision = self.evaluate(alerts)
            if not decision.start:
                log.info("retrain %s [%s]", decision.message, source)
                return Outcome(decision)
            now = self.clock()
            run_id = f"retrain-{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
            try:
                self.lock.acquire(run_id, decision.reasons, now.isoformat())
            except Busy as exc:  # another process won the race
                held = Decision(False, decision.reasons, "running", f"held back: {exc}")
                log.info("retrain %s [%s]", held.message, source)
                return Outcome(held)
            # Holding the lock: decide again, so a run another process started and finished since
            # the first look counts for the cool-down and the label count.
            signals = dataclasses.replace(self.signals(), running=None)
            decision = decide(self.settings, signals, alerts)
            if not decision.start:
                self.lock.release(run_id)
                log.info("retrain %s [%s]", decision.message, source)
                return Outcome(decision)
            self.history.append({"event": "started", "run_id": run_id, "reasons": list(decision.reasons),
                                 "started_at": now.isoformat(), "labels_at_start": signals.labels_total,
                                 "launcher": self.launcher.kind, "source": source, "message": decision.message})
            try:
                details = self.launcher.start(run_id, decision.reasons, self.settings, self.lock, self.history)
            except Exception as exc:  # noqa: BLE001 - any launcher failure: free the lock, record, re-raise as one kind
                self.lock.release(run_id)
                self.history.append({"event": "failed_to_start", "run_id": run_id, "error": str(exc),
                                     "at": self.clock().isoformat()})
                log.error("retrain %s could not start: %s", run_id, exc)
                raise LaunchFailed(f"retrain {run_id} could not start: {exc}") from exc
            log.info("retrain %s started (%s) [%s] %s", run_id, decision.message, source,
                     " ".join(f"{k}={v}" for k, v in details.items()))
            return Outcome(decision, run_id, details)

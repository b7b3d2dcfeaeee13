"""Keep the local stack's processes running, as the kubelet keeps a pod's containers running.

One :class:`Supervisor` holds a list of components (any process with a readiness probe:
Triton, a revision's transformer, the gateway, the drift detector, Prometheus, and
whatever else the stack starts; each is ONE entry). From its FIRST start on, each is watched
by its own thread, and a first start is treated like any restart (one flaky start, e.g.
PyTriton's Python backend refusing its handshake, is retried, not fatal):

* when the process exits (crash, ``kill -9``, or a clean exit nobody asked for:
  ``restartPolicy: Always``) the exit code and the last lines of its log are reported, what
  is left of its process group is swept, and it is started again after an exponential
  back-off (``CrashLoopBackOff``: 1 s, 2 s, 4 s ... capped; the streak resets once the
  process has stayed ready for ``stable_after_s``);
* after each start the readiness probe is polled again; only then is it ``ready``;
* a start that never gets ready (exits first, or not ready within ``start_timeout_s``) is a
  failed start, reported and retried after the back-off; after ``max_failed_starts`` of them
  in a row the supervisor gives up on the component, says why, and sets
  :attr:`Supervisor.gave_up` (``serve`` then exits; :meth:`Supervisor.start` raises);
* **liveness** (the kubelet's ``livenessProbe``): a ready process whose ``live`` probe has
  failed for ``liveness_timeout_s`` in a row (it hangs: deadlocked, stopped, swapping) is
  killed and restarted like a crashed one. Readiness is not liveness: a transformer whose
  Triton is down is not ready, but it is alive and is not killed for it.

Nothing else is touched: the other components keep their processes (and pids). Whether
clients notice is the gateway's business (503 + ``Retry-After`` while a revision is not
ready, see :mod:`gourmetgram_app.local.readiness`).

Every state change is written to ``state_file`` (JSON), which the gateway serves in its
status, so ``gourmetgram rollout status`` shows each component's state and restarts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Protocol

from gourmetgram.errors import DependencyUnavailable

log = logging.getLogger("gourmetgram.supervisor")

STARTING, READY, BACKOFF, STOPPED, FAILED = "starting", "ready", "backoff", "stopped", "failed"
# Roles say what a component's absence means to clients (for people reading the status).
SERVING, SIDE, INGRESS = "serving", "side", "ingress"
POLL_S = 0.2  # how often a watcher looks at its process
PROBE_S = 0.3  # how often a starting process is probed
LOG_TAIL_LINES = 20


class Process(Protocol):
    """What the supervisor needs of a child (``gourmetgram_app.local.process.Service`` is one)."""

    name: str
    log_path: Path
    live: Callable[[], bool] | None  # the liveness probe (None: none, like a pod without one)

    @property
    def proc(self) -> subprocess.Popen | None: ...

    def start(self, cwd: Path) -> None: ...
    def alive(self) -> bool: ...
    def ready(self) -> bool: ...
    def stop(self, timeout_s: float = ...) -> None: ...
    def kill(self, timeout_s: float = ...) -> None: ...
    def log_tail(self, lines: int = ...) -> str: ...


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    """CrashLoopBackOff with local timings (the kubelet's are 10 s doubling to 5 min)."""

    initial_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_failed_starts: int = 5
    stable_after_s: float = 60.0
    start_timeout_s: float = 180.0  # tritonserver + model load on 2 busy cores
    # livenessProbe: probed every period; failing this long in a row = hung, killed (the
    # kubelet's periodSeconds x failureThreshold; generous, as busy cores answer slowly)
    liveness_period_s: float = 5.0
    liveness_timeout_s: float = 60.0

    def backoff(self, streak: int) -> float:
        """Delay before the restart that follows the ``streak``-th crash in a row (1-based)."""
        return min(self.initial_backoff_s * 2 ** max(0, streak - 1), self.max_backoff_s)

    def worst_recovery_s(self) -> float:
        """The longest a component that crashed once is away before it is ready again or given
        up on (first back-off + one start); the bound the fault-injection test waits on."""
        return self.backoff(1) + self.start_timeout_s + POLL_S + PROBE_S

    def worst_give_up_s(self) -> float:
        """The longest a first start can take before it is ready or given up on: every failed
        start runs to its timeout, each followed by its back-off; what a client that waits for a
        new canary pair must wait."""
        return sum(self.start_timeout_s + self.backoff(n) for n in range(1, self.max_failed_starts + 1))


@dataclasses.dataclass(frozen=True)
class Event:
    """One thing that happened to a component (``kind``: crashed, restarting, ready, gave-up),
    with the exit code and the log tail when it exited."""

    time: float
    component: str
    kind: str
    message: str
    exit_code: int | None = None
    log_tail: str = ""
    pid: int | None = None


def describe_exit(code: int | None) -> str:
    """``-9`` -> ``exit code -9 (SIGKILL)``."""
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"exit code {code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"exit code {code}"


class Component:
    """One supervised process and its restart bookkeeping."""

    def __init__(self, service: Process, cwd: Path, role: str, revision: str | None,
                 policy: RestartPolicy, supervisor: "Supervisor") -> None:
        self.service, self.cwd, self.role, self.revision = service, Path(cwd), role, revision
        self.policy, self.supervisor = policy, supervisor
        self.state = STARTING  # its first start, watched like any other
        self.restarts = 0
        self.streak = 0  # crashes in a row (back-off exponent)
        self.failed_starts = 0  # starts in a row that never got ready
        self.since = time.time()
        self.ready_since: float | None = None
        self.last_exit: int | None = None
        self.backoff_s: float | None = None
        self.failure: str | None = None  # why it was given up on
        self.stopping = False
        self._first_outcome = threading.Event()  # ready once, or given up on
        self._liveness_due = 0.0
        self._unresponsive_since: float | None = None
        self.thread = threading.Thread(target=self._watch, name=f"supervise-{self.key}", daemon=True)

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def key(self) -> str:
        return f"{self.revision}/{self.name}" if self.revision else self.name

    @property
    def pid(self) -> int | None:
        proc = self.service.proc
        return getattr(proc, "pid", None)

    def wait_ready(self) -> None:
        """Block until the first start (retries included) got ready; raise
        :class:`DependencyUnavailable` saying why when the supervisor gave up on it, or when
        it was stopped first."""
        while not self._first_outcome.wait(POLL_S):
            if self._halted() or self.state == STOPPED:
                raise DependencyUnavailable(f"{self.key} was stopped before it got ready")
        if self.failure is not None:
            raise DependencyUnavailable(self.failure)

    def snapshot(self) -> dict:
        return {"name": self.name, "revision": self.revision, "role": self.role, "state": self.state,
                "restarts": self.restarts, "pid": self.pid, "since": round(self.since, 3),
                "last_exit_code": self.last_exit, "backoff_s": self.backoff_s,
                "failed_starts": self.failed_starts}

    # -- the watcher thread ------------------------------------------------------------------
    def _set(self, state: str) -> None:
        with self.supervisor.lock:
            if self.state == STOPPED:  # forgotten: the watcher's late news no longer counts
                return
            self.state, self.since = state, time.time()
        self.supervisor._changed()

    def _halted(self) -> bool:
        return self.stopping or self.supervisor.halted.is_set()

    def _watch(self) -> None:
        """Runs until the supervisor stops. Restarted processes are spawned on this thread, so
        it must live as long as they should (PR_SET_PDEATHSIG fires when it ends)."""
        started_at = time.monotonic()
        while not self._halted():
            if self.service.alive():
                if self.state == STARTING:
                    if self._probe():
                        self._became_ready(started_at)
                    elif time.monotonic() - started_at > self.policy.start_timeout_s:
                        self._exited(f"was not ready {self.policy.start_timeout_s:g} s after its start")
                        started_at = self._restart()
                        continue
                    self.supervisor.halted.wait(PROBE_S)
                elif self._hung():
                    self._exited(f"did not answer its liveness probe for {self.policy.liveness_timeout_s:g} s "
                                 "(hung); killed", kill=True)
                    started_at = self._restart()
                else:
                    self.supervisor.halted.wait(POLL_S)
                continue
            self._exited(None)
            started_at = self._restart()

    def _probe(self) -> bool:
        try:
            return bool(self.service.ready())
        except Exception:  # noqa: BLE001 - a probe that raises (connection refused...) is "not yet"
            return False

    def _hung(self) -> bool:
        """The liveness probe, every ``liveness_period_s``: True once it has failed for
        ``liveness_timeout_s`` in a row."""
        live = getattr(self.service, "live", None)
        now = time.monotonic()
        if live is None or now < self._liveness_due:
            return False
        self._liveness_due = now + self.policy.liveness_period_s
        try:
            answered = bool(live())
        except Exception:  # noqa: BLE001 - a probe that raises (timeout, refused) failed
            answered = False
        if answered:
            self._unresponsive_since = None
            return False
        if self._unresponsive_since is None:
            self._unresponsive_since = now
            log.warning("%s (pid %s) did not answer its liveness probe", self.key, self.pid)
        return now - self._unresponsive_since >= self.policy.liveness_timeout_s

    def _became_ready(self, started_at: float) -> None:
        self.ready_since = time.monotonic()
        self.failed_starts = 0
        self.backoff_s = None
        self._unresponsive_since, self._liveness_due = None, 0.0
        self._set(READY)
        self._first_outcome.set()
        if self.restarts:  # a first start that got ready at once is no news
            self.supervisor._emit(Event(time.time(), self.key, "ready",
                                        f"{self.key} ready again {time.monotonic() - started_at:.1f} s after "
                                        f"restart {self.restarts} (pid {self.pid})", pid=self.pid))

    def _exited(self, reason: str | None, kill: bool = False) -> None:
        """Report the exit (or the failed start, or the hang), sweep the process group, count it."""
        with self.supervisor.lock:
            if self._halted():
                return
        pid = self.pid
        proc = self.service.proc
        # What is left of the process group (tritonserver's stubs...) must not keep its ports: a
        # process that exited takes its group with it at once; one that hung in its start gets
        # the usual SIGTERM first.
        if reason is None or kill:
            self.service.kill(timeout_s=5.0)
        else:
            self.service.stop(timeout_s=5.0)
        code = getattr(proc, "returncode", None)
        tail = self.service.log_tail(LOG_TAIL_LINES)
        was_ready = self.state == READY
        if self.ready_since is not None and time.monotonic() - self.ready_since >= self.policy.stable_after_s:
            self.streak = 0
        self.streak += 1
        self.ready_since = None
        self.last_exit = code
        if not was_ready:
            self.failed_starts += 1
        what = reason or (f"exited with {describe_exit(code)} while starting" if not was_ready else
                          f"crashed: {describe_exit(code)}")
        if not was_ready and self.failed_starts >= self.policy.max_failed_starts:
            self._set(FAILED)
            message = (f"{self.key} {what}; {self.failed_starts} starts in a row failed, giving up "
                       f"(log {self.service.log_path})")
            self.failure = message
            self.supervisor._emit(Event(time.time(), self.key, "gave-up", message, code, tail, pid))
            self.supervisor._give_up(message)
            self._first_outcome.set()
            return
        self.backoff_s = self.policy.backoff(self.streak)
        self._set(BACKOFF)
        self.supervisor._emit(Event(
            time.time(), self.key, "crashed",
            f"{self.key} (pid {pid}) {what}; restart {self.restarts + 1} in {self.backoff_s:g} s "
            f"(log {self.service.log_path})", code, tail, pid))

    def _restart(self) -> float:
        """Sleep the back-off, then start the process again (unless halted or given up)."""
        if self.state == FAILED:
            self.stopping = True
            return time.monotonic()
        self.supervisor.halted.wait(self.backoff_s or 0)
        with self.supervisor.lock:  # stop() takes the lock: nothing is spawned after it
            if self._halted():
                return time.monotonic()
            self.restarts += 1
            _mark_log(self.service.log_path, f"restart {self.restarts} by the supervisor "
                      f"(last {describe_exit(self.last_exit)})")
            try:
                self.service.start(cwd=self.cwd)
            except OSError as exc:  # cannot even spawn: a failed start like any other
                log.error("%s could not be started: %s", self.key, exc)
        self._set(STARTING)
        self.supervisor._emit(Event(time.time(), self.key, "restarting",
                                    f"{self.key} restarted (restart {self.restarts}, pid {self.pid}); "
                                    "waiting for readiness", pid=self.pid))
        return time.monotonic()


def _mark_log(path: Path, text: str) -> None:
    """A line in the component's own log, so its log reads as one story across restarts."""
    try:
        with open(path, "a") as f:
            f.write(f"----- {time.strftime('%Y-%m-%d %H:%M:%S')} {text} -----\n")
    except OSError:
        pass


class Supervisor:
    """Components started once, restarted when they exit; see the module docstring."""

    def __init__(self, policy: RestartPolicy | None = None,
                 on_event: Callable[[Event], None] | None = None,
                 state_file: str | Path | None = None) -> None:
        self.policy = policy or RestartPolicy()
        self.on_event = on_event
        self.state_file = Path(state_file) if state_file else None
        self.lock = threading.RLock()
        self.halted = threading.Event()
        self.gave_up = threading.Event()
        self.failure: str | None = None
        self.events: list[Event] = []
        self._components: list[Component] = []

    # -- adding components -----------------------------------------------------------------
    def launch(self, service: Process, cwd: Path, role: str = SERVING,
               revision: str | None = None) -> Component:
        """Start ``service`` on the calling thread and watch it from this first start on: a start
        that fails (exits, or is not ready within ``start_timeout_s``) is reported and retried
        with back-off like a restart. Returns at once; :meth:`Component.wait_ready` waits.

        The calling thread must outlive the process (PR_SET_PDEATHSIG fires when it ends):
        the main thread, or the gateway's event loop; restarts are spawned by the watcher."""
        component = Component(service, cwd, role, revision, self.policy, self)
        with self.lock:  # stop() takes the lock: nothing is spawned after halt()
            if self.halted.is_set():
                raise DependencyUnavailable(f"{component.key}: the stack is stopping")
            self._components.append(component)
            try:
                service.start(cwd=cwd)
            except OSError as exc:  # cannot even spawn: a failed start like any other
                log.error("%s could not be started: %s", component.key, exc)
        component.thread.start()
        self._changed()
        return component

    def start(self, service: Process, cwd: Path, role: str = SERVING,
              revision: str | None = None) -> Component:
        """:meth:`launch`, then wait until it is ready (retries included); raises
        :class:`DependencyUnavailable` with the reason when the supervisor gives up on it."""
        component = self.launch(service, cwd, role, revision)
        component.wait_ready()
        return component

    def forget(self, service: Process) -> None:
        """Stop watching ``service`` (the caller stops it: a retired revision, ``stop_service``)."""
        with self.lock:
            for component in self._components:
                if component.service is service and component.state != STOPPED:
                    component.stopping = True
                    component.state, component.since = STOPPED, time.time()
        self._changed()

    # -- reading -----------------------------------------------------------------------------
    def components(self) -> list[Component]:
        with self.lock:
            return list(self._components)

    def component(self, name: str, revision: str | None = None) -> Component:
        for c in self.components():
            if c.name == name and (revision is None or c.revision == revision) and c.state != STOPPED:
                return c
        raise KeyError(name)

    def states(self) -> list[dict]:
        return [c.snapshot() for c in self.components()]

    def status_line(self) -> str:
        """``triton ready (restarts 1) | transformer ready | detector backoff 2s (restarts 3)``."""
        parts = []
        for c in self.components():
            if c.state == STOPPED:
                continue
            text = f"{c.key} {c.state}"
            if c.state == BACKOFF and c.backoff_s is not None:
                text += f" {c.backoff_s:g}s"
            if c.restarts:
                text += f" (restarts {c.restarts})"
            parts.append(text)
        return " | ".join(parts)

    # -- stopping ----------------------------------------------------------------------------
    def halt(self) -> None:
        """Stop restarting (before the caller stops the processes); no spawn happens after this."""
        with self.lock:
            self.halted.set()

    def join(self, timeout_s: float = 10.0) -> None:
        for c in self.components():
            if c.thread.is_alive() and c.thread is not threading.current_thread():
                c.thread.join(timeout_s)

    # -- internals (called by the watcher threads) -------------------------------------------
    def _emit(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)
        level = logging.ERROR if event.kind in ("crashed", "gave-up") else logging.WARNING
        log.log(level, "%s%s", event.message,
                f"\n--- last lines of its log ---\n{event.log_tail}" if event.log_tail else "")
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # noqa: BLE001 - a printing callback must not stop supervision
                log.exception("on_event callback failed")

    def _give_up(self, message: str) -> None:
        with self.lock:
            if self.failure is None:
                self.failure = message
        self.gave_up.set()

    def _changed(self) -> None:
        if self.state_file is None:
            return
        data = {"updated": time.time(), "pid": os.getpid(), "components": self.states(),
                "failure": self.failure}
        tmp = self.state_file.with_name(f".{self.state_file.name}.{threading.get_ident()}.tmp")
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.state_file)
        except OSError as exc:  # status is for people; supervision goes on without it
            log.warning("could not write %s: %s", self.state_file, exc)


def read_state_file(path: str | Path) -> list[dict]:
    """The components a supervisor wrote to ``path`` ([] when there is none or it is unreadable)."""
    try:
        return list(json.loads(Path(path).read_text()).get("components", []))
    except (OSError, ValueError, AttributeError):
        return []

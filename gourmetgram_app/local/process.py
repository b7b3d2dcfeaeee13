"""One supervised child process of the local stack (:class:`Service`): started in its own
process group (session), so stopping it reaches everything it started, dying with its parent,
with a readiness probe and a kubelet-style liveness probe; and the helpers those need."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import httpx

from gourmetgram.errors import DependencyUnavailable

LIVENESS_TIMEOUT_S = 5.0  # one liveness probe (the supervisor decides how many may fail)
STOP_TIMEOUT_S = 30.0  # PyTriton unloads the model and waits for in-flight requests


def load_libc():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


# Loaded once here: after fork in a threaded parent (the supervisor restarts processes from its
# watcher threads) the child must not dlopen, which could deadlock on the loader's lock.
LIBC = load_libc()


def die_with_parent() -> None:
    """In the child: get SIGTERM if the supervisor dies, so a killed supervisor leaves no orphans.

    The kernel sends it when the THREAD that started the child ends, so supervisors keep
    their starting threads alive as long as the children should live."""
    if LIBC is not None:
        LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclasses.dataclass
class Service:
    """One supervised child process, with its log file, readiness probe and liveness probe
    (``live``: does it answer at all; None: not probed)."""

    name: str
    argv: list[str]
    log_path: Path
    ready: Callable[[], bool]
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    live: Callable[[], bool] | None = None

    def start(self, cwd: Path) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=cwd, env=self.env, start_new_session=True, preexec_fn=die_with_parent)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise DependencyUnavailable(f"{self.name} exited with code {code} while starting; "
                                            f"log {self.log_path}:\n{self.log_tail()}")
            try:
                if self.ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise DependencyUnavailable(f"{self.name} was not ready after {timeout_s:.0f} s; log {self.log_path}:\n"
                        f"{self.log_tail()}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout_s``, reap the leader."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        signal_group(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            signal_group(pgid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # The leader is gone; sweep anything of its group it left behind.
        deadline = time.monotonic() + 5
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if group_alive(pgid):
            signal_group(pgid, signal.SIGKILL)


    def kill(self, timeout_s: float = 5.0) -> None:
        """SIGKILL the whole process group at once and wait (up to ``timeout_s``) until it is
        gone: what is left of a crashed process must not keep its ports (a container runtime
        does the same when a container's main process exits)."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def get_ok(url: str, check: Callable[[httpx.Response], bool] = lambda r: True) -> bool:
    r = httpx.get(url, timeout=2.0)
    return r.status_code == 200 and check(r)


def answers(url: str) -> Callable[[], bool]:
    """A liveness probe as a kubelet's ``httpGet``: the server answers ``url`` with a status
    below 400 within :data:`LIVENESS_TIMEOUT_S` (a hung process answers nothing)."""
    def probe() -> bool:
        return httpx.get(url, timeout=LIVENESS_TIMEOUT_S).status_code < 400
    return probe


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")
    return env

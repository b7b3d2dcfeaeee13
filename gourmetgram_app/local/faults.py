"""Fault injection for the local stack: ``kill -9`` of a component's main process.

Used by the fault-injection test and ``benchmarks/fault_recovery.py``. For Triton the main
process is the ``tritonserver`` binary PyTriton runs (what an operator would kill), not the
Python wrapper around it; for every other component it is the process the stack started.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

# component name -> the executable name (``/proc/<pid>/comm``) of its main process, when that
# is not the process the stack started itself
MAIN_PROCESS = {"triton": "tritonserver"}


def group_members(pgid: int) -> list[tuple[int, str]]:
    """``(pid, comm)`` of every live process in process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid:
                out.append((int(entry.name), (entry / "comm").read_text().strip()))
        except (OSError, ProcessLookupError):
            continue
    return out


def main_pid(name: str, leader_pid: int) -> int:
    """The pid to kill for component ``name`` whose started process is ``leader_pid``."""
    comm = MAIN_PROCESS.get(name)
    if comm is None:
        return leader_pid
    for pid, got in group_members(leader_pid):  # the stack starts each service as a group leader
        if got == comm:
            return pid
    raise LookupError(f"no {comm} process in {name}'s process group {leader_pid}")


def kill9(name: str, leader_pid: int) -> int:
    """SIGKILL component ``name``'s main process; returns the pid killed."""
    pid = main_pid(name, leader_pid)
    os.kill(pid, signal.SIGKILL)
    return pid

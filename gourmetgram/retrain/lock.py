"""One retrain at a time: a lock file that names its run and survives a crash.

The lock is a JSON file created with ``O_CREAT | O_EXCL`` (atomic on a local filesystem: of
two processes racing, exactly one creates it). It holds the run id, who owns it (``pid`` +
``host`` for a local run, or the KFP run id for a cluster run) and why the run started.
A crash leaves the file behind; it is *stale* when its owner is gone (the pid is not alive
on this host, or the KFP run reached a final state: the caller's ``still_running``), and
the next :meth:`RunLock.acquire` removes it and takes the lock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOCAL, KFP = "local", "kfp"  # owner kinds


@dataclasses.dataclass(frozen=True)
class LockInfo:
    run_id: str
    pid: int
    host: str
    kind: str = LOCAL
    reasons: tuple[str, ...] = ()
    started_at: str = ""
    external_id: str = ""  # the KFP run id when kind == "kfp"

    @classmethod
    def from_json(cls, text: str) -> LockInfo:
        data: dict[str, Any] = json.loads(text)
        data["reasons"] = tuple(data.get("reasons") or ())
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


class Busy(Exception):
    """Another retrain holds the lock."""

    def __init__(self, holder: LockInfo):
        super().__init__(f"retrain {holder.run_id} is running ({holder.kind}, pid {holder.pid} on {holder.host})")
        self.holder = holder


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def local_owner_alive(info: LockInfo) -> bool:
    if info.host != socket.gethostname():
        return True  # cannot tell from here: only its own host may clear it
    return pid_alive(info.pid)


class RunLock:
    def __init__(self, path: str | Path, still_running: Callable[[LockInfo], bool] | None = None):
        self.path = Path(path)
        self.still_running = still_running or self.default_still_running

    @staticmethod
    def default_still_running(info: LockInfo) -> bool:
        return local_owner_alive(info) if info.kind == LOCAL else True

    def current(self) -> LockInfo | None:
        """The live holder, or None (a stale lock counts as free; it is not removed here)."""
        info = self._read()
        return info if info is not None and self.still_running(info) else None

    def acquire(self, run_id: str, reasons: tuple[str, ...] = (), started_at: str = "") -> LockInfo:
        """Take the lock for ``run_id`` (owned by this process until :meth:`hand_over`); :class:`Busy`
        when a live run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = LockInfo(run_id, os.getpid(), socket.gethostname(), LOCAL, tuple(reasons), started_at)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder is not None and self.still_running(holder):
                    raise Busy(holder) from None
                self._remove_if(holder)  # stale (its owner died) or unreadable (died mid-write)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(dataclasses.asdict(info)))
                f.flush()
                os.fsync(f.fileno())
            return info
        holder = self._read()
        raise Busy(holder or info)

    def hand_over(self, run_id: str, pid: int | None = None, kind: str = LOCAL, external_id: str = "") -> bool:
        """Make another owner (the pipeline's process, or a KFP run) the holder of our lock.
        False when the lock is no longer ours (the run already ended and released it)."""
        info = self._read()
        if info is None or info.run_id != run_id:
            return False
        moved = dataclasses.replace(info, pid=pid if pid is not None else info.pid, kind=kind,
                                    external_id=external_id or info.external_id)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(moved)))
        os.replace(tmp, self.path)
        return True

    def release(self, run_id: str) -> bool:
        """Remove the lock if ``run_id`` holds it (a late release never frees someone else's lock)."""
        info = self._read()
        if info is None or info.run_id != run_id:
            return False
        return self._remove_if(info)

    def _read(self) -> LockInfo | None:
        try:
            return LockInfo.from_json(self.path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError):
            return None  # torn write from a crash: treated as stale

    def _remove_if(self, holder: LockInfo | None) -> bool:
        # Re-read just before removing so that a lock taken in between by someone else survives.
        if self._read() != holder:
            return False
        try:
            self.path.unlink()
            return True
        except FileNotFoundError:
            return False

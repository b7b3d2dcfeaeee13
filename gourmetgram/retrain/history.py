"""The retrain history: one JSON line per started run (what the cool-down and the "new labels
since the last retrain" guard read), one per step a local run takes (export, retrain, gate,
register, staging, canary ...: what ``loop status``, the operator page and the demo show as it
happens), and its outcome when the run ends."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gourmetgram.retrain.policy import LastRun
from gourmetgram.tracking import home


def retrain_home() -> Path:
    path = home() / "retrain"
    path.mkdir(parents=True, exist_ok=True)
    return path


class History:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else retrain_home() / "history.jsonl"

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, default=str) + "\n"
        with open(self.path, "a") as f:  # one write per line: lines from two processes never interleave
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line from a crash
        return out

    def last_started(self) -> LastRun | None:
        records = self.records()
        failed = {r.get("run_id") for r in records if r.get("event") == "failed_to_start"}
        starts = [r for r in records if r.get("event") == "started" and r.get("run_id") not in failed]
        if not starts:
            return None
        r = starts[-1]
        return LastRun(run_id=r["run_id"], started_at=parse_time(r["started_at"]),
                       labels_at_start=int(r.get("labels_at_start", 0)), reasons=tuple(r.get("reasons", ())))


    def step(self, run_id: str, step: str, **data: Any) -> dict[str, Any]:
        """Record one step of a run (``at``: now, UTC); returns the record."""
        record = {"event": "step", "run_id": run_id, "step": step,
                  "at": datetime.now(timezone.utc).isoformat(), **data}
        self.append(record)
        return record

    def runs(self, limit: int = 5) -> list[dict[str, Any]]:
        """The last ``limit`` started runs, newest first: the start record with ``steps`` (in
        order) and ``finished`` (the end record, or None while it runs) added."""
        records = self.records()
        starts = [r for r in records if r.get("event") == "started"][-limit:][::-1] if limit > 0 else []
        ids = {r.get("run_id") for r in starts}
        steps: dict[str, list[dict[str, Any]]] = {}
        ends: dict[str, dict[str, Any]] = {}
        for r in records:
            if r.get("run_id") not in ids:
                continue
            if r.get("event") == "step":
                steps.setdefault(r["run_id"], []).append(r)
            elif r.get("event") in ("finished", "failed_to_start"):
                ends[r["run_id"]] = r
        return [{**r, "steps": steps.get(r["run_id"], []), "finished": ends.get(r["run_id"])} for r in starts]

    def finished(self, run_id: str) -> dict[str, Any] | None:
        """The run's end record (status registered | rejected | failed, version), if it ended."""
        ends = [r for r in self.records() if r.get("event") == "finished" and r.get("run_id") == run_id]
        return ends[-1] if ends else None


def parse_time(value: str) -> datetime:
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)

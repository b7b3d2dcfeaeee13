"""The local broker's durable store: every accepted event, and which triggers still owe it.

The broker answers 202 only after the event and one ``pending`` row per matching trigger are
committed here, and delivers from here: a broker killed with ``kill -9`` (or stopped with
events still queued) finds them again when it starts and delivers them then. A delivered,
rejected or finally dropped copy deletes its ``pending`` row; the event goes with its last one.

SQLite in WAL mode with ``synchronous=NORMAL``, as the loop store: a committed transaction
survives the process being killed; ``GOURMETGRAM_LOOP_DB_SYNC=FULL`` makes it survive a power
loss too (an fsync per commit). One connection, used from worker threads under a lock (the
broker calls it through ``asyncio.to_thread`` so the event loop never waits on the disk).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from pathlib import Path

from gourmetgram.environment import environment

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    headers TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS pending (
    trigger TEXT NOT NULL,
    seq INTEGER NOT NULL REFERENCES events(seq),
    PRIMARY KEY (trigger, seq)
) WITHOUT ROWID;
"""


class EventStore:
    """Accepted events and their pending deliveries, in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        sync = "FULL" if (environment().loop_db_sync or "NORMAL").upper() == "FULL" else "NORMAL"
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={sync}")
            self._db.executescript(SCHEMA)

    def journal_mode(self) -> str:
        with self._lock:
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def put(self, headers: dict[str, str], body: bytes, triggers: list[str]) -> int:
        """Store one event owed to ``triggers``, committed before this returns; its sequence number."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                seq = self._db.execute("INSERT INTO events (headers, body) VALUES (?, ?)",
                                       (json.dumps(headers), body)).lastrowid
                self._db.executemany("INSERT INTO pending (trigger, seq) VALUES (?, ?)",
                                     [(t, seq) for t in triggers])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        assert seq is not None
        return seq

    def get(self, seq: int) -> tuple[dict[str, str], bytes] | None:
        with self._lock:
            row = self._db.execute("SELECT headers, body FROM events WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else (json.loads(row[0]), bytes(row[1]))

    def done(self, trigger: str, seq: int) -> None:
        """``trigger`` owes ``seq`` nothing more; the event goes when nobody does."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute("DELETE FROM pending WHERE trigger = ? AND seq = ?", (trigger, seq))
                self._db.execute("DELETE FROM events WHERE seq = ? AND NOT EXISTS "
                                 "(SELECT 1 FROM pending WHERE seq = ?)", (seq, seq))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def pending(self) -> dict[str, list[int]]:
        """Every trigger's undelivered events, oldest first (what a starting broker delivers)."""
        out: dict[str, list[int]] = {}
        with self._lock:
            for trigger, seq in self._db.execute("SELECT trigger, seq FROM pending ORDER BY seq"):
                out.setdefault(trigger, []).append(seq)
        return out

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(dict(self._db.execute("SELECT trigger, COUNT(*) FROM pending GROUP BY trigger")))

    def forget_trigger(self, trigger: str) -> int:
        """Drop what a trigger that is no longer configured was owed; how many."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                n = self._db.execute("DELETE FROM pending WHERE trigger = ?", (trigger,)).rowcount
                self._db.execute("DELETE FROM events WHERE NOT EXISTS "
                                 "(SELECT 1 FROM pending WHERE pending.seq = events.seq)")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return n

    def close(self) -> None:
        with self._lock:
            self._db.close()

"""What the self-driving loop does, as events with their times (the demo's stage 8 prints them).

Read from where the system records it, never from the code that does it: the alerts the local
Prometheus has (``/api/v1/alerts``), what the retrain receiver made of the last alert
Alertmanager delivered (its ``GET /status``), and each run's start, steps and end (the retrain
history the receiver and its job write).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

import httpx

from gourmetgram.retrain.history import History, parse_time


@dataclasses.dataclass(frozen=True)
class LoopEvent:
    at: datetime
    kind: str  # alert | receiver | started | step | finished
    text: str
    record: dict[str, Any] = dataclasses.field(default_factory=dict)


def describe_step(r: dict[str, Any]) -> str:
    """One line for a history record (a run's start, one of its steps, its end)."""
    event, step = r.get("event"), r.get("step")
    if event == "started":
        return (f"run {r['run_id']} started by {r.get('source', '?')} (reasons: {', '.join(r.get('reasons', []))}; "
                f"{r.get('labels_at_start', '?')} labels in the loop store)")
    if event == "finished":
        extra = f": {r['error']}" if r.get("error") else ("; " + "; ".join(r["reasons"]) if r.get("reasons") else "")
        version = f" (version {r['version']})" if r.get("version") else ""
        return f"run {r['run_id']} finished: {str(r.get('status', '?')).upper()}{version}{extra}"
    if event == "failed_to_start":
        return f"run {r['run_id']} could not start: {r.get('error')}"
    if step == "export":
        labels = ", ".join(f"{k} {v}" for k, v in sorted((r.get("labels") or {}).items())) or "none"
        return f"loop export: labels used {labels}; production images by split {r.get('exported') or {}}"
    if step == "retrain":
        return f"retrain: the training pipeline started (kfp.local, config {r.get('config')})"
    if step == "gate":
        sets = "; ".join(f"{name} ({a.get('n')} images) v1 {_f(a.get('v1'))} -> v2 {_f(a.get('v2'))}{_paired(a)}"
                         for name, a in (r.get("sets") or {}).items())
        verdict = "PASSED" if r.get("passed") else "REJECTED: " + "; ".join(r.get("reasons") or [])
        return f"differential gate (pipeline done in {r.get('seconds', '?')} s): {verdict}" + (f"; {sets}" if sets else "")
    if step == "register":
        return f"registered version {r.get('version')} (alias staging)"
    if step == "staging":
        first = (r.get("summary") or "").strip().splitlines()[:1]
        verdict = "PASSED" if r.get("passed") else "BLOCKED: " + "; ".join(r.get("reasons") or [])
        warm = r.get("warmup") or {}
        return (f"staging gate (compiled pipeline on kfp.local, {warm.get('ok', 0)}/{warm.get('sent', 0)} warm-up "
                f"requests first): {verdict}" + (f" ({first[0]})" if first else ""))
    if step == "canary":
        return f"canary at {r.get('percent')}% ({r.get('revision') or 'new revision'})"
    if step == "decision":
        return f"decision: {str(r.get('outcome', '?')).upper()} ({r.get('detail', '')})"
    return f"{step or event}: {r}"


def _f(v) -> str:
    return "-" if v is None else f"{float(v):.3f}"


def _paired(a: dict[str, Any]) -> str:
    """The gate's paired figures for one set, when it gives them: difference, interval, test."""
    if a.get("interval") is None or a.get("delta") is None:
        return ""
    low, high = a["interval"]
    test = f", {a['test']}: {'pass' if a.get('passed') else 'FAIL'}" if a.get("test") else ""
    return f" (difference {float(a['delta']):+.3f}, interval [{float(low):+.3f}, {float(high):+.3f}]{test})"


class LoopWatcher:
    """``poll()`` returns what is new since the last poll (the first poll: since ``since``)."""

    def __init__(self, history: History, prometheus_url: str | None = None, receiver_url: str | None = None,
                 since: datetime | None = None, alerts: tuple[str, ...] = ()) -> None:
        self.history, self.alerts = history, set(alerts)
        self.prometheus_url = prometheus_url.rstrip("/") if prometheus_url else None
        self.receiver_url = receiver_url.rstrip("/") if receiver_url else None
        self.since = since or datetime.now(timezone.utc)
        self._seen_records = 0
        self._seen_alerts: set[tuple[str, str]] = set()
        self._last_receiver: dict[str, str] = {}  # alert names -> the last kind of answer said
        self.runs: dict[str, dict[str, Any]] = {}  # run id -> {"started":..., "steps": [...], "finished":...}

    def poll(self) -> list[LoopEvent]:
        events = self._alerts() + self._receiver() + self._history()
        return sorted(events, key=lambda e: e.at)

    def _alerts(self) -> list[LoopEvent]:
        if not self.prometheus_url:
            return []
        try:
            found = httpx.get(f"{self.prometheus_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        except (httpx.HTTPError, ValueError, KeyError):
            return []
        out = []
        for a in found:
            name = a.get("labels", {}).get("alertname", "")
            if a.get("state") != "firing" or (self.alerts and name not in self.alerts):
                continue
            key = (name, a.get("activeAt", ""))
            if key in self._seen_alerts:
                continue
            self._seen_alerts.add(key)
            since = parse_time(a["activeAt"]) if a.get("activeAt") else datetime.now(timezone.utc)
            out.append(LoopEvent(since, "alert", f"Prometheus: alert {name} firing", a))
        return out

    def _receiver(self) -> list[LoopEvent]:
        if not self.receiver_url:
            return []
        try:
            last = httpx.get(f"{self.receiver_url}/status", timeout=5).json().get("last_alert")
        except (httpx.HTTPError, ValueError):
            return []
        if not last or parse_time(last["at"]) < self.since:
            return []
        names = ", ".join(last.get("alerts", []))
        # Alertmanager repeats a firing alert: say each kind of answer once (a run started, or
        # which guard rail held it back), not every repeat with its new figures
        answer = str(last.get("run_id") if last.get("started") else last.get("blocked_by"))
        if self._last_receiver.get(names) == answer:
            return []
        self._last_receiver[names] = answer
        verdict = f"started run {last['run_id']}" if last.get("started") else str(last.get("message"))
        return [LoopEvent(parse_time(last["at"]), "receiver",
                          f"Alertmanager -> retrain receiver: {names}: {verdict}", last)]

    def _history(self) -> list[LoopEvent]:
        records = self.history.records()
        new, self._seen_records = records[self._seen_records:], len(records)
        out = []
        for r in new:
            at = parse_time(r.get("at") or r.get("started_at") or r.get("finished_at")
                            or datetime.now(timezone.utc).isoformat())
            if at < self.since:
                continue
            run = self.runs.setdefault(r.get("run_id", "?"), {"steps": []})
            kind = r.get("event", "?")
            if kind == "started":
                run["started"] = r
            elif kind == "step":
                run["steps"].append(r)
            elif kind in ("finished", "failed_to_start"):
                run["finished"] = r
            out.append(LoopEvent(at, kind if kind != "failed_to_start" else "finished", describe_step(r), r))
        return out

    def finished_run(self) -> dict[str, Any] | None:
        """The first run since ``since`` that has ended (its start, steps and end), if any."""
        for run in self.runs.values():
            if "started" in run and "finished" in run:
                return run
        return None

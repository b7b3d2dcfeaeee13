"""Re-training triggers: the policy (each trigger fires when it should; the guard rails hold it
back: cool-down, minimum new labels, one run at a time), the signals from a real loop store
(SQLite), the crash-safe run lock with real processes, the Alertmanager receiver (4xx for
malformed payloads), the KFP launcher up to the wire, the job that runs the pipeline, and
``gourmetgram loop retrain --if-needed``. No training runs here (the pipeline has its own tests).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import ThreadingHTTPServer

import pytest
import yaml
from helpers import FakeKFPApi
from starlette.testclient import TestClient

from gourmetgram.errors import ConfigError
from gourmetgram.loop.models import ANNOTATOR, PENDING, USER, Feedback, Label, Sample
from gourmetgram.loop.store import Store
from gourmetgram.retrain.alerts import PayloadError, reasons_from
from gourmetgram.retrain.history import History
from gourmetgram.retrain.lock import Busy, RunLock, pid_alive
from gourmetgram.retrain.policy import DEGRADATION, DRIFT, SCHEDULE, LastRun, Signals, decide
from gourmetgram.retrain.settings import (
    DegradationSettings,
    GuardSettings,
    RetrainSettings,
    TriggerSettings,
    load_retrain_settings,
)
from gourmetgram.retrain.signals import StoreSignals
from gourmetgram.retrain.trigger import Trigger
from gourmetgram_app.cli.main import main
from gourmetgram_app.local.retrain import KfpLauncher, LocalLauncher, build_trigger, create_app

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
SETTINGS = RetrainSettings(
    triggers=TriggerSettings(schedule_every="7d"),
    degradation=DegradationSettings(threshold=0.7, window="1h", min_feedback=20),
    guards=GuardSettings(min_new_labels=50, cooldown="6h"),
)


def _signals(**kw) -> Signals:
    base = dict(now=NOW, labels_total=500,
                last_run=LastRun("r0", NOW - timedelta(days=1), labels_at_start=100))
    base.update(kw)
    return Signals(**base)


# -- the policy ------------------------------------------------------------------------------

def test_nothing_fires_when_all_is_well():
    d = decide(SETTINGS, _signals(feedback_correct=95, feedback_total=100))
    assert not d.start and d.reasons == () and "not needed" in d.message


def test_schedule_fires_when_the_last_retrain_is_older_than_the_interval():
    d = decide(SETTINGS, _signals(last_run=LastRun("r0", NOW - timedelta(days=8), 100)))
    assert d.start and d.reasons == (SCHEDULE,)
    assert decide(SETTINGS, _signals(last_run=None)).reasons == (SCHEDULE,)  # never retrained
    assert not decide(SETTINGS, _signals(last_run=LastRun("r0", NOW - timedelta(days=6), 100))).start


def test_drift_alert_fires():
    d = decide(SETTINGS, _signals(), alerts=[DRIFT])
    assert d.start and d.reasons == (DRIFT,) and "drift alert received" in d.message


def test_degradation_fires_below_the_threshold_with_enough_feedback():
    d = decide(SETTINGS, _signals(feedback_correct=12, feedback_total=20))
    assert d.start and d.reasons == (DEGRADATION,) and "accuracy 0.600" in d.message
    assert not decide(SETTINGS, _signals(feedback_correct=5, feedback_total=10)).start  # too few answers
    assert not decide(SETTINGS, _signals(feedback_correct=15, feedback_total=20)).start  # 0.75 >= 0.7
    assert decide(SETTINGS, _signals(), alerts=[DEGRADATION]).reasons == (DEGRADATION,)  # the alert itself


def test_not_in_the_cooldown():
    d = decide(SETTINGS, _signals(last_run=LastRun("r0", NOW - timedelta(hours=5), 100)), alerts=[DRIFT])
    assert not d.start and d.reasons == (DRIFT,) and d.blocked_by == "cooldown" and "cool-down 6h" in d.message
    assert decide(SETTINGS, _signals(last_run=LastRun("r0", NOW - timedelta(hours=7), 100)), alerts=[DRIFT]).start


def test_not_below_the_minimum_new_labels():
    d = decide(SETTINGS, _signals(labels_total=149), alerts=[DRIFT])  # 49 since r0 started
    assert not d.start and d.blocked_by == "min_new_labels" and "49 new label(s)" in d.message
    assert decide(SETTINGS, _signals(labels_total=150), alerts=[DRIFT]).start


def test_never_while_a_run_is_running():
    d = decide(SETTINGS, _signals(running="r1"), alerts=[DRIFT])
    assert not d.start and d.blocked_by == "running" and "r1" in d.message


def test_config_is_validated(tmp_path):
    s = load_retrain_settings()
    assert s.guards.min_new_labels >= 1 and s.degradation.stage == "production"
    for bad, says in (({"guards": {"cooldown": "6 hours"}}, "guards.cooldown"),
                      ({"guards": {"min_new_labels": -1}}, "guards.min_new_labels"),
                      ({"degradation": {"threshold": 1.5}}, "degradation.threshold"),
                      ({"degradation": {"stage": "prod"}}, "degradation.stage"),
                      ({"triggers": {"cron": "0 3 * * 1"}}, "six-field cron"),
                      ({"gaurds": {}}, "unknown key 'gaurds'")):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=says.replace(".", r"\.")):
            load_retrain_settings(path)


def test_degradation_rule_and_config_agree():
    """The alert the receiver maps to "degradation" exists, with the config's threshold and window."""
    from gourmetgram import manifests

    rules = {r.get("alert") or r.get("record"): r for g in yaml.safe_load(manifests.RULES_FILE.read_text())["groups"]
             for r in g["rules"]}
    s = load_retrain_settings()
    for name in (*s.triggers.degradation_alerts, *s.triggers.drift_alerts):
        assert name in rules
    expr = rules[s.triggers.degradation_alerts[0]]["expr"]
    assert f"< {s.degradation.threshold}" in expr and f">= {s.degradation.min_feedback}" in expr
    assert f"ratio_{s.degradation.window}" in expr


# -- signals from the loop store -----------------------------------------------------------

@pytest.fixture()
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'loop.db'}")
    yield s
    s.dispose()


def _seed(store, n, stage="production", version="1", correct=True, labelled=False, at=None, start=0):
    at = at or datetime.now(timezone.utc)
    with store.write() as s:
        for i in range(start, start + n):
            sid = f"{stage}-{version}-{i}"
            s.add(Sample(sample_id=sid, inference_id=sid, label="two", model_version=version, stage=stage,
                         object_key=f"k/{sid}", captured_at=at))
            s.flush()
            s.add(Feedback(sample_id=sid, correct=correct, created_at=at, updated_at=at, updates=0))
            if labelled:
                s.add(Label(sample_id=sid, label_source=ANNOTATOR, label="one", labelled_at=at))


def test_store_signals_count_labels_and_windowed_production_accuracy(store):
    old = datetime.now(timezone.utc) - timedelta(hours=3)
    _seed(store, 10, correct=True, at=old)  # outside a 1h window
    _seed(store, 6, correct=True, start=10, labelled=True)
    _seed(store, 4, correct=False, start=16, labelled=True)
    _seed(store, 7, stage="staging", correct=False)
    with store.write() as s:  # user corrections: one a label at once, one waiting for an annotator
        s.add(Label(sample_id="staging-1-0", label_source=USER, label="one", labelled_at=old))
        s.add(Label(sample_id="staging-1-1", label_source=USER, label="one", labelled_at=old, review=PENDING))
    sig = StoreSignals(store)
    assert sig.labels_total() == 11  # the pending correction is no label yet
    assert sig.feedback_window("production", datetime.now(timezone.utc) - timedelta(hours=1)) == (6, 10)
    assert sig.feedback_window("production", old - timedelta(minutes=1)) == (16, 20)
    assert sig.feedback_counts() == {("production", "1", "correct"): 16, ("production", "1", "wrong"): 4,
                                     ("staging", "1", "wrong"): 7}


# -- the run lock ----------------------------------------------------------------------------

def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def test_lock_is_exclusive_and_a_crashed_owner_frees_it(tmp_path):
    lock = RunLock(tmp_path / "lock.json")
    lock.acquire("r1")
    child = _sleeper()
    try:
        assert lock.hand_over("r1", pid=child.pid)
        with pytest.raises(Busy, match="r1"):
            RunLock(lock.path).acquire("r2")  # another process's view: the same file
        assert lock.current().run_id == "r1"
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert not pid_alive(child.pid)
        assert lock.current() is None  # stale: its owner is gone
        assert RunLock(lock.path).acquire("r3").run_id == "r3"
        assert not lock.release("r1")  # a late release never frees someone else's lock
        assert lock.current().run_id == "r3"
    finally:
        child.kill()
        child.wait()


def test_a_torn_lock_file_counts_as_stale(tmp_path):
    path = tmp_path / "lock.json"
    path.write_text('{"run_id": "r1", "pi')  # crashed mid-write
    assert RunLock(path).acquire("r2").run_id == "r2"


def test_only_one_of_many_racing_processes_gets_the_lock(tmp_path):
    # The winner holds the lock until the others have answered (no sleep: a loaded machine may
    # start the last process seconds late, and it must still find the lock held).
    done = tmp_path / "done"
    code = ("import os, sys, time; from gourmetgram.retrain.lock import RunLock, Busy\n"
            "try:\n RunLock(sys.argv[1]).acquire(sys.argv[2]); print('got', flush=True)\n"
            " while not os.path.exists(sys.argv[3]): time.sleep(0.05)\n"
            "except Busy: print('busy')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "lock.json"), f"r{i}", str(done)],
                              stdout=subprocess.PIPE, text=True, env=env) for i in range(4)]
    try:
        deadline = time.monotonic() + 120
        while sum(p.poll() is not None for p in procs) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        done.touch()
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(outs) == ["busy", "busy", "busy", "got"], outs


# -- the trigger with a real (stand-in) job process -----------------------------------------

# A stand-in for retrain_job: takes the same arguments, waits for a file, frees the lock.
STAND_IN = """
import argparse, os, sys, time
from gourmetgram.retrain.lock import RunLock
p = argparse.ArgumentParser(); [p.add_argument(a) for a in ("--run-id", "--lock", "--history", "--dataset",
                                                             "--config", "--epochs", "--retrain-config", "--db",
                                                             "--gateway", "--prometheus")]
a = p.parse_args()
go = os.environ["STAND_IN_GO"]
while not os.path.exists(go):
    time.sleep(0.05)
RunLock(a.lock).release(a.run_id)
"""


class FakeSignals:
    def __init__(self, labels=500, correct=0, total=0):
        self.labels, self.correct, self.total = labels, correct, total

    def labels_total(self) -> int:
        return self.labels

    def feedback_window(self, stage, since):
        return self.correct, self.total


@pytest.fixture()
def trigger(tmp_path, monkeypatch):
    monkeypatch.setenv("STAND_IN_GO", str(tmp_path / "go"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    launcher = LocalLauncher(tmp_path / "runs", command=[sys.executable, "-c", STAND_IN])
    settings = dataclasses.replace(SETTINGS, guards=GuardSettings(min_new_labels=50, cooldown="0s"))
    t = Trigger(settings, FakeSignals(), launcher, RunLock(tmp_path / "lock.json", launcher.still_running),
                History(tmp_path / "history.jsonl"))
    yield t
    (tmp_path / "go").touch()
    holder = t.lock._read()
    if holder is not None and pid_alive(holder.pid) and holder.pid != os.getpid():
        os.kill(holder.pid, signal.SIGKILL)


def _wait_free(lock: RunLock, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while lock.current() is not None:
        assert time.monotonic() < deadline, "the run never freed the lock"
        time.sleep(0.05)


def test_trigger_never_starts_two_runs_at_once(trigger, tmp_path):
    first = trigger.fire([DRIFT], source="test")
    assert first.started and first.decision.reasons[0] == DRIFT
    assert trigger.lock.current().pid == first.details["pid"]  # the job owns the lock
    second = trigger.fire([DRIFT], source="test")
    assert not second.started and second.decision.blocked_by == "running" and first.run_id in second.decision.message
    (tmp_path / "go").touch()  # the first run ends
    _wait_free(trigger.lock)
    trigger.source.labels += 50  # new labels since the first run
    third = trigger.fire([DRIFT], source="test")
    assert third.started and third.run_id != first.run_id
    started = [r for r in trigger.history.records() if r["event"] == "started"]
    assert [r["run_id"] for r in started] == [first.run_id, third.run_id]
    assert started[0]["reasons"] == [DRIFT, SCHEDULE] and started[0]["labels_at_start"] == 500


def test_a_killed_run_does_not_block_the_next(trigger):
    first = trigger.fire([DRIFT], source="test")
    os.kill(first.details["pid"], signal.SIGKILL)
    _wait_free(trigger.lock)
    trigger.source.labels += 50
    assert trigger.fire([DRIFT], source="test").started


def test_trigger_respects_cooldown_and_minimum_labels_across_runs(trigger, tmp_path):
    trigger.settings = dataclasses.replace(SETTINGS, guards=GuardSettings(min_new_labels=50, cooldown="1h"))
    first = trigger.fire([DRIFT], source="test")
    assert first.started
    (tmp_path / "go").touch()
    _wait_free(trigger.lock)
    held = trigger.fire([DRIFT], source="test")
    assert held.decision.blocked_by == "cooldown"
    trigger.settings = dataclasses.replace(SETTINGS, guards=GuardSettings(min_new_labels=50, cooldown="0s"))
    held = trigger.fire([DRIFT], source="test")  # no new labels since the first run
    assert held.decision.blocked_by == "min_new_labels" and "0 new label(s)" in held.decision.message
    trigger.source.labels += 50
    assert trigger.fire([DRIFT], source="test").started


# -- the receiver --------------------------------------------------------------------------

def _alert(name="GourmetGramDriftDetected", status="firing") -> dict:
    return {"version": "4", "status": status, "receiver": "gourmetgram-retrain", "groupLabels": {},
            "alerts": [{"status": status, "labels": {"alertname": name, "severity": "warning"},
                        "annotations": {}, "startsAt": "2026-12-01T12:00:00Z"}]}


def test_payload_parser_maps_firing_alerts():
    t = TriggerSettings()
    assert reasons_from(_alert(), t) == ([DRIFT], ["GourmetGramDriftDetected"])
    assert reasons_from(_alert("GourmetGramProductionAccuracyLow"), t)[0] == [DEGRADATION]
    assert reasons_from(_alert(status="resolved"), t) == ([], [])
    assert reasons_from(_alert("GourmetGramHighLatencyP95"), t) == ([], [])
    with pytest.raises(PayloadError, match="labels.alertname"):
        reasons_from({"alerts": [{"status": "firing", "labels": {}}]}, t)


def test_receiver_starts_a_run_on_a_drift_alert_and_refuses_a_second(trigger):
    client = TestClient(create_app(trigger, feedback_counts=lambda: {("production", "1", "wrong"): 3}))
    r = client.post("/alerts", json=_alert())
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["started"] and body["reasons"][0] == DRIFT and body["pid"]
    started = trigger.history.records()[0]
    assert started["source"] == "alertmanager:GourmetGramDriftDetected" and DRIFT in started["message"]
    r = client.post("/alerts", json=_alert())
    assert r.status_code == 200 and not r.json()["started"] and r.json()["blocked_by"] == "running"
    r = client.post("/alerts", json=_alert(status="resolved"))
    assert r.status_code == 200 and not r.json()["started"]
    metrics = client.get("/metrics").text
    assert 'retrain_triggers_total{outcome="started",reason="drift"} 1.0' in metrics
    assert 'retrain_triggers_total{outcome="running",reason="drift"} 1.0' in metrics
    assert "retrain_running 1.0" in metrics
    assert 'loop_feedback_answers_total{model_version="1",outcome="wrong",stage="production"} 3.0' in metrics
    assert client.get("/status").json()["running"] == body["run_id"]


def _sample_value(text: str, name: str) -> list[tuple[dict, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name]


def test_receiver_exports_the_last_retrain_its_reasons_and_outcome(trigger, tmp_path):
    """The Model quality dashboard's "last retrain" panels: one series, the last run only."""
    client = TestClient(create_app(trigger))
    assert _sample_value(client.get("/metrics").text, "retrain_last_run_info") == []  # none on record
    first = client.post("/alerts", json=_alert()).json()
    [(labels, value)] = _sample_value(client.get("/metrics").text, "retrain_last_run_info")  # none on record: schedule too
    assert value == 1 and labels == {"run_id": first["run_id"], "reasons": "drift+schedule", "status": "running",
                                     "version": ""}
    (tmp_path / "go").touch()
    _wait_free(trigger.lock)
    # the stand-in job wrote no end record: started (on KFP the launcher writes none either)
    [(labels, _)] = _sample_value(client.get("/metrics").text, "retrain_last_run_info")
    assert labels["status"] == "started"
    trigger.history.append({"event": "finished", "run_id": first["run_id"], "status": "registered", "version": "7"})
    trigger.source.labels += 50
    second = client.post("/alerts", json=_alert("GourmetGramProductionAccuracyLow")).json()
    assert second["started"]
    text = client.get("/metrics").text
    [(labels, _)] = _sample_value(text, "retrain_last_run_info")  # the first run's series is gone
    assert labels["run_id"] == second["run_id"] and labels["reasons"] == "degradation"
    [(_, started_at)] = _sample_value(text, "retrain_last_start_timestamp_seconds")
    assert started_at == datetime.fromisoformat(trigger.history.records()[-1]["started_at"]).timestamp()
    assert trigger.history.finished(first["run_id"])["version"] == "7"
    trigger.history.append({"event": "finished", "run_id": second["run_id"], "status": "rejected"})
    (tmp_path / "go").touch()
    _wait_free(trigger.lock)
    [(labels, _)] = _sample_value(client.get("/metrics").text, "retrain_last_run_info")
    assert (labels["status"], labels["version"]) == ("rejected", "")


@pytest.mark.parametrize("body, says", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"version": "3", "alerts": []}', "version"),
    (b'{"alerts": "GourmetGramDriftDetected"}', "'alerts' must be a list"),
    (b'{"alerts": [42]}', "alerts[0] must be an object"),
    (b'{"alerts": [{"status": "firing", "labels": {"severity": "x"}}]}', "alertname"),
    (b'{"alerts": [{"status": "burning", "labels": {"alertname": "GourmetGramDriftDetected"}}]}', "status"),
])
def test_receiver_rejects_malformed_payloads_with_400(trigger, body, says):
    client = TestClient(create_app(trigger))
    r = client.post("/alerts", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and says in r.json()["error"]
    assert trigger.history.records() == []  # nothing started


def test_receiver_limits_and_token(trigger):
    client = TestClient(create_app(trigger, token="s3cret"))
    assert client.post("/alerts", json=_alert()).status_code == 401
    assert client.post("/alerts", json=_alert(), headers={"Authorization": "Bearer nope"}).status_code == 401
    r = client.post("/alerts", content=b"x" * (2 * 1024 * 1024), headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 413
    assert trigger.history.records() == []


def test_receiver_answers_503_when_the_launch_fails(tmp_path):
    launcher = LocalLauncher(tmp_path / "runs", command=[str(tmp_path / "missing-binary")])
    t = Trigger(SETTINGS, FakeSignals(), launcher, RunLock(tmp_path / "lock.json"), History(tmp_path / "h.jsonl"))
    r = TestClient(create_app(t)).post("/alerts", json=_alert())
    assert r.status_code == 503 and "could not start" in r.json()["error"]
    assert t.lock.current() is None  # freed
    assert t.history.last_started() is None  # a failed start does not start the cool-down


# -- KFP launcher, up to the wire ------------------------------------------------------------

class _FakeKFP(FakeKFPApi):
    """The KFP v2beta1 REST calls kfp.Client makes for a run (create, then poll its state)."""

    state = "RUNNING"

    def get(self, path: str) -> dict | None:
        if path.startswith("/apis/v2beta1/runs/run-789"):
            return {"run_id": "run-789", "state": type(self).state}
        return None

    def post(self, path: str, body: dict) -> dict | None:
        if path == "/apis/v2beta1/runs":
            return {"run_id": "run-789", "display_name": body.get("display_name"), "state": "PENDING"}
        return None


@pytest.fixture()
def fake_kfp(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    _FakeKFP.requests, _FakeKFP.state = [], "RUNNING"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKFP)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_kfp_launcher_creates_the_run_and_locks_until_it_ends(fake_kfp, tmp_path):
    settings = dataclasses.replace(SETTINGS, run=dataclasses.replace(
        SETTINGS.run, dataset_uri="s3://data/food11", production_dataset_uri="s3://gourmetgram/production/latest"))
    launcher = KfpLauncher(fake_kfp)
    t = Trigger(settings, FakeSignals(), launcher, RunLock(tmp_path / "lock.json", launcher.still_running),
                History(tmp_path / "h.jsonl"))
    out = t.fire([DRIFT], source="test")
    assert out.started and out.details["kfp_run_id"] == "run-789"
    run = next(body for method, path, _, body in _FakeKFP.requests if method == "POST" and path == "/apis/v2beta1/runs")
    # the labelled production data goes with the run: the pipeline merges it and compares with production
    assert run["runtime_config"]["parameters"] == {"dataset_uri": "s3://data/food11", "config": "demo", "epochs": -1,
                                                   "production_dataset_uri": "s3://gourmetgram/production/latest"}
    declared = run["pipeline_spec"]["pipeline_spec"]["root"]["inputDefinitions"]["parameters"]
    assert set(run["runtime_config"]["parameters"]) <= set(declared)  # names the compiled pipeline knows
    assert "drift" in run["display_name"] and out.run_id in run["display_name"]
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "gourmetgram-training"
    assert t.fire([DRIFT]).decision.blocked_by == "running"  # the backend says RUNNING
    _FakeKFP.state = "SUCCEEDED"
    assert t.lock.current() is None


# -- the job and the CLI ---------------------------------------------------------------------

def test_job_runs_the_pipeline_records_the_outcome_and_frees_the_lock(session_home, tmp_path, monkeypatch):
    from gourmetgram_app import pipeline_runs as pipeline
    from gourmetgram_app.local import retrain_job

    calls = []

    from components.steps.outcomes import RegistrationOutcome
    from gourmetgram.evaluation.differential import NON_INFERIORITY, Comparison, SetComparison

    class Evaluation:  # the gate's report as the pipeline writes it
        comparison = Comparison("1", 0.02, 0.95, (SetComparison(
            "original", 100, 0.82, 0.8, gains=4, losses=2, interval=(-0.01, 0.05), p_value=0.69,
            test=NON_INFERIORITY, passed=True),), ()).to_dict()

    class Result:
        registered, reasons, mlflow_run_id, seconds, evaluation = True, [], "mlrun", 3.0, Evaluation()
        outcome = RegistrationOutcome(verdict="registered", version=2, bundle_uri="/models/2")

    def fake_run_local(dataset, config, epochs, stage="staging", production_dataset_uri=""):
        calls.append((dataset, config, epochs, stage, production_dataset_uri))
        return Result()

    monkeypatch.setattr(pipeline, "run_local", fake_run_local)
    lock, history = RunLock(tmp_path / "lock.json"), History(tmp_path / "h.jsonl")
    lock.acquire("r1")
    argv = ["--run-id", "r1", "--lock", str(lock.path), "--history", str(history.path), "--dataset", "/d",
            "--config", "demo", "--epochs", "1"]
    from gourmetgram import registry
    from gourmetgram.constants import PRODUCTION

    before = registry.version_for(PRODUCTION)  # the session's registry: what earlier tests left there
    assert retrain_job.main(argv) == 0
    # no local base folder to add production data to: the base alone (the export is tested in test_loop_store);
    # no production gateway: the run ends at register (a KFP run does the same)
    assert calls == [("/d", "demo", 1, "staging", "")] and lock.current() is None
    assert history.records()[-1] | {"finished_at": None} == {
        "event": "finished", "run_id": "r1", "status": "registered", "version": 2, "mlflow_run_id": "mlrun",
        "reasons": [], "finished_at": None, "production_dataset": None, "labels": {},
        "production_version_before": None if before is None else str(before)}
    # every step is on record, in order, with its figures
    steps = [r for r in history.records() if r["event"] == "step"]
    assert [r["step"] for r in steps] == ["export", "retrain", "gate", "register"]
    assert steps[2]["passed"] is True
    assert steps[2]["sets"]["original"] == {"v1": 0.8, "v2": 0.82, "n": 100, "delta": pytest.approx(0.02),
                                            "interval": [-0.01, 0.05], "p_value": 0.69, "test": NON_INFERIORITY,
                                            "passed": True}
    assert steps[3]["version"] == 2

    def broken(*a, **kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline, "run_local", broken)
    lock.acquire("r2")
    assert retrain_job.main([*argv[:1], "r2", *argv[2:]]) == 1
    assert lock.current() is None and history.records()[-1]["status"] == "failed"
    assert "disk full" in history.records()[-1]["error"]


def test_loop_retrain_if_needed_exit_codes(tmp_path, monkeypatch, capsys):
    db = f"sqlite:///{tmp_path / 'loop.db'}"
    store = Store(db)
    _seed(store, 30, correct=False, labelled=True)  # production accuracy 0 on 30 answers
    store.dispose()
    config = tmp_path / "retrain.yaml"
    config.write_text(yaml.safe_dump({"guards": {"min_new_labels": 10, "cooldown": "1h"},
                                      "run": {"dataset_uri": str(tmp_path / "data")}}))
    monkeypatch.setenv("STAND_IN_GO", str(tmp_path / "go"))
    (tmp_path / "go").touch()  # the stand-in job ends at once
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    real_init = LocalLauncher.__init__
    monkeypatch.setattr(LocalLauncher, "__init__", lambda self, log_dir=None, command=None, **kw: real_init(
        self, log_dir, [sys.executable, "-c", STAND_IN], **kw))
    args = ["loop", "retrain", "--db", db, "--retrain-config", str(config), "--state-dir", str(tmp_path / "st")]
    assert main([*args]) == 0  # preview: would start
    assert "would start" in capsys.readouterr().out
    assert main([*args, "--if-needed"]) == 0
    out = capsys.readouterr().out
    assert "started retrain" in out and "degradation: production accuracy 0.000" in out and "schedule" in out
    assert main([*args, "--if-needed"]) == 1  # within the cool-down (or still running)
    assert "no retrain: held back" in capsys.readouterr().out
    assert main([*args, "--if-needed", "--retrain-config", str(tmp_path / "nope.yaml")]) == 2


def test_build_trigger_uses_the_loop_store(tmp_path):
    db = f"sqlite:///{tmp_path / 'loop.db'}"
    trigger, signals = build_trigger(load_retrain_settings(), db, state_dir=tmp_path / "st")
    assert isinstance(trigger.launcher, LocalLauncher) and signals.labels_total() == 0
    d = trigger.evaluate([DRIFT])
    assert not d.start and d.blocked_by == "min_new_labels"


def test_chart_routes_the_trigger_alerts_to_the_receiver():
    from gourmetgram import manifests
    from gourmetgram.constants import PRODUCTION, RETRAIN_RECEIVER_PORT

    on = {"monitoring": {"retrainReceiver": {"enabled": True}}}
    (amc,) = [o for o in manifests.render_objects(PRODUCTION, on) if o["kind"] == "AlertmanagerConfig"]
    s = load_retrain_settings()
    route = amc["spec"]["route"]
    (matcher,) = route["matchers"]
    assert matcher["matchType"] == "=~"
    assert set(matcher["value"].split("|")) == {*s.triggers.drift_alerts, *s.triggers.degradation_alerts}
    (hook,) = amc["spec"]["receivers"][0]["webhookConfigs"]
    assert hook["url"].endswith(f":{RETRAIN_RECEIVER_PORT}/alerts") and route["receiver"] == "gourmetgram-retrain"
    assert hook["httpConfig"]["authorization"]["credentials"]["name"]  # token from a Secret, not in values
    assert not [o for o in manifests.render_objects(PRODUCTION) if o["kind"] == "AlertmanagerConfig"]  # opt-in


def test_local_launcher_hands_the_job_the_stack_it_releases_on(tmp_path):
    settings = load_retrain_settings()
    argv = LocalLauncher(tmp_path, command=["job"], gateway="http://127.0.0.1:8090", prometheus="http://127.0.0.1:9090",
                         retrain_config="/cfg/retrain.yaml").argv(
        "r1", settings, RunLock(tmp_path / "lock.json"), History(tmp_path / "h.jsonl"))
    assert argv[argv.index("--gateway") + 1] == "http://127.0.0.1:8090"
    assert argv[argv.index("--prometheus") + 1] == "http://127.0.0.1:9090"
    assert argv[argv.index("--retrain-config") + 1] == "/cfg/retrain.yaml"
    alone = LocalLauncher(tmp_path, command=["job"]).argv("r1", settings, RunLock(tmp_path / "l.json"),
                                                          History(tmp_path / "h.jsonl"))
    assert "--gateway" not in alone and "--prometheus" not in alone  # no stack: the run ends at register
    # the job takes every argument the launcher passes
    from gourmetgram_app.local import retrain_job

    with pytest.raises(SystemExit) as exc:
        retrain_job.main([*argv[1:], "--help"])
    assert exc.value.code == 0


def test_history_lists_runs_with_their_steps_and_the_receiver_serves_them(trigger, tmp_path):
    history = trigger.history
    history.append({"event": "started", "run_id": "r1", "reasons": ["drift"], "started_at": "2026-12-01T10:00:00+00:00",
                    "source": "alertmanager:GourmetGramDriftDetected", "labels_at_start": 60})
    history.step("r1", "gate", passed=True, sets={"original": {"v1": 0.8, "v2": 0.81, "n": 10}})
    history.step("r1", "canary", percent=10)
    history.append({"event": "started", "run_id": "r2", "reasons": ["schedule"], "started_at": "2026-12-02T10:00:00+00:00"})
    history.step("r1", "canary", percent=50)  # r1 still running while r2 was recorded (lines interleave)
    history.append({"event": "finished", "run_id": "r1", "status": "promoted", "version": 3})
    runs = history.runs(5)
    assert [r["run_id"] for r in runs] == ["r2", "r1"]  # newest first
    assert [(s["step"], s.get("percent")) for s in runs[1]["steps"]] == [("gate", None), ("canary", 10), ("canary", 50)]
    assert runs[1]["finished"]["status"] == "promoted" and runs[0]["finished"] is None
    assert [r["run_id"] for r in history.runs(1)] == ["r2"]
    client = TestClient(create_app(trigger))
    served = client.get("/runs", params={"limit": 1}).json()["runs"]
    assert [r["run_id"] for r in served] == ["r2"]
    assert client.get("/runs", params={"limit": "x"}).status_code == 400


def test_loop_status_shows_the_last_runs_trigger_steps_and_outcome(tmp_path, capsys):
    history = History(tmp_path / "retrain" / "history.jsonl")
    history.append({"event": "started", "run_id": "r1", "reasons": ["drift"], "started_at": "2026-12-01T10:00:00+00:00",
                    "source": "alertmanager:GourmetGramDriftDetected", "labels_at_start": 60})
    history.step("r1", "gate", passed=False, sets={"original": {"v1": 0.9, "v2": 0.7, "n": 10}},
                 reasons=["original: worse than production"])
    history.append({"event": "finished", "run_id": "r1", "status": "rejected", "reasons": ["original: worse"]})
    assert main(["loop", "status", "--db", f"sqlite:///{tmp_path / 'loop.db'}",
                 "--state-dir", str(tmp_path / "retrain")]) == 0
    out = capsys.readouterr().out
    assert "r1: started 2026-12-01T10:00:00+00:00 by alertmanager:GourmetGramDriftDetected (reasons: drift): REJECTED" in out
    assert "differential gate" in out and "REJECTED: original: worse than production" in out


def test_local_launcher_hands_the_job_the_loop_store_it_exports_from(tmp_path):
    settings = load_retrain_settings()
    argv = LocalLauncher(tmp_path, command=["job"], db_url="sqlite:////data/loop.db").argv(
        "r1", settings, RunLock(tmp_path / "lock.json"), History(tmp_path / "h.jsonl"))
    assert argv[argv.index("--db") + 1] == "sqlite:////data/loop.db"
    assert "--db" not in LocalLauncher(tmp_path, command=["job"]).argv(
        "r1", settings, RunLock(tmp_path / "lock.json"), History(tmp_path / "h.jsonl"))


def test_the_local_canary_is_judged_by_the_rollout_config_with_the_release_overrides(tmp_path, monkeypatch):
    """configs/retrain.yaml's release.canary over configs/rollout.yaml: the thin local traffic's
    windows and the 5xx and feedback margins a few minutes of it can show (0.02 would need ~650
    canary requests with no error at all); what it leaves unset stays the rollout config's."""
    from gourmetgram.retrain.settings import load_retrain_settings
    from gourmetgram.rollout.analysis import load_config
    from gourmetgram_app.local.cycle import Cycle, CycleSettings

    monkeypatch.setenv("GOURMETGRAM_HOME", str(tmp_path))
    release = load_retrain_settings().release
    config = Cycle(CycleSettings(base=str(tmp_path), release=release)).rollout_config()
    base = load_config()
    assert base.analysis.max_error_rate_increase == 0.02
    assert config.analysis.max_error_rate_increase == release.canary.max_error_rate_increase == 0.1
    # and the feedback checks' margins, for the same reason (0.05 needs several hundred answers)
    assert (base.analysis.max_feedback_accuracy_drop, base.analysis.max_wrong_rate_increase) == (0.05, 0.05)
    assert config.analysis.max_feedback_accuracy_drop == release.canary.max_feedback_accuracy_drop == 0.1
    assert config.analysis.max_wrong_rate_increase == release.canary.max_wrong_rate_increase == 0.1
    assert (config.analysis.window, config.analysis.min_feedback, config.auto.interval_s) == ("15s", 15, 4.0)
    assert config.auto.steps == base.auto.steps and config.analysis.alpha == base.analysis.alpha
    # the demo's stage 6 hands the same config to `rollout auto --config`: the file reads back equal
    from gourmetgram.rollout.config import save_config

    saved = load_config(save_config(release.canary.rollout(), tmp_path / "sub" / "rollout-local.yaml"))
    assert (saved.analysis, saved.auto, saved.shadow) == (config.analysis, config.auto, config.shadow)

"""The local stack's alerting: the chart's AlertmanagerConfig rendered into Debian's Alertmanager,
the chart's rules with their `for:` capped for a quick test, and the whole path a retrain takes
to start by itself: a real Prometheus evaluating the real rules -> a real Alertmanager routing
by the chart's route with the bearer token -> the real retrain receiver process -> the real job
process (which stops at once here: nothing is in production to release against; its full run is
tests/test_cycle.py's)."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from helpers import LocalHTTPServer, QuietHandler, wait_for

from gourmetgram import manifests
from gourmetgram.errors import BadInput
from gourmetgram.retrain.history import History
from gourmetgram.retrain.settings import duration_s, load_retrain_settings
from gourmetgram_app.local.alerting import (
    AMTOOL_BIN,
    NULL_RECEIVER,
    LocalAlerting,
    alertmanager_config,
    render_route,
    shortened_rules,
)


def test_the_local_route_is_the_charts_alertmanagerconfig(tmp_path):
    amc = render_route("http://127.0.0.1:8073/alerts")
    config = alertmanager_config(amc, tmp_path / "token")
    (route,) = config["route"]["routes"]
    assert config["route"]["receiver"] == NULL_RECEIVER  # anything else goes nowhere
    chart = amc["spec"]["route"]
    assert route["receiver"] == chart["receiver"] == "gourmetgram-retrain"
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == (
        chart["groupWait"], chart["groupInterval"], chart["repeatInterval"]) == ("30s", "5m", "4h")
    # every alert the retrain policy maps to a reason is routed, by the chart's own matcher
    (matcher,) = route["matchers"]
    name, _, pattern = matcher.partition("=~")
    settings = load_retrain_settings()
    assert name == "alertname" and set(json.loads(pattern).split("|")) == {
        *settings.triggers.drift_alerts, *settings.triggers.degradation_alerts}
    (hook,) = next(r for r in config["receivers"] if r["name"] == route["receiver"])["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:8073/alerts" and hook["send_resolved"] is False
    # the bearer token from a file (the cluster's Secret), never in the config itself
    assert hook["http_config"] == {"authorization": {"type": "Bearer", "credentials_file": str(tmp_path / "token")}}
    # the demo's timings are chart values, not a second routing
    fast = alertmanager_config(render_route("http://x/alerts", {"groupWait": "2s", "repeatInterval": "20s"}),
                               tmp_path / "token")["route"]["routes"][0]
    assert (fast["group_wait"], fast["group_interval"], fast["repeat_interval"]) == ("2s", "5m", "20s")
    with pytest.raises(BadInput, match="unknown Alertmanager timing"):
        render_route("http://x/alerts", {"repeat": "1s"})


def test_alertmanager_accepts_the_written_config(tmp_path):
    alerting = LocalAlerting(tmp_path / "state", tmp_path / "logs", "http://127.0.0.1:1")
    alerting.prepare()
    token = alerting.token_file.read_text()
    assert len(token) > 30 and (alerting.token_file.stat().st_mode & 0o777) == 0o600
    assert token not in alerting.config_file.read_text()
    check = subprocess.run([AMTOOL_BIN, "check-config", str(alerting.config_file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    # the receiver is told where to release a run and checks the same token
    argv = alerting.receiver.argv
    assert argv[argv.index("--token-file") + 1] == str(alerting.token_file)
    assert argv[argv.index("--gateway") + 1] == "http://127.0.0.1:1"
    assert "--cluster.listen-address=" in alerting.alertmanager.argv  # no gossip port to collide on


def test_the_translation_refuses_what_it_cannot_carry(tmp_path):
    amc = render_route("http://127.0.0.1:8073/alerts")
    nested = {**amc, "spec": {**amc["spec"], "route": {**amc["spec"]["route"], "routes": [{"receiver": "x"}]}}}
    with pytest.raises(BadInput, match="routes"):
        alertmanager_config(nested, tmp_path / "t")
    slack = {**amc, "spec": {**amc["spec"], "receivers": [{"name": "r", "slackConfigs": [{}]}]}}
    with pytest.raises(BadInput, match="slackConfigs"):
        alertmanager_config(slack, tmp_path / "t")
    with pytest.raises(BadInput, match="token file"):
        alertmanager_config(amc, None)


def test_shortened_rules_cap_every_for_and_change_nothing_else(tmp_path):
    variant = shortened_rules(manifests.RULES_FILE, tmp_path / "rules.yml", "0s")
    original = yaml.safe_load(manifests.RULES_FILE.read_text())
    short = yaml.safe_load(variant.read_text())
    pairs = [(a, b) for ga, gb in zip(original["groups"], short["groups"]) for a, b in zip(ga["rules"], gb["rules"])]
    assert len(pairs) == sum(len(g["rules"]) for g in original["groups"])
    assert any(duration_s(a["for"]) > 0 for a, _ in pairs if "for" in a)  # there is something to cap
    for a, b in pairs:
        assert {k: v for k, v in a.items() if k != "for"} == {k: v for k, v in b.items() if k != "for"}
        if "for" in a:
            assert duration_s(b["for"]) == 0, b
    check = subprocess.run(["promtool", "check", "rules", str(variant)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# -- the whole path, real processes ---------------------------------------------------------------

class _Metrics(QuietHandler):
    """The detector's drift metrics as a scrape target (what alibi-detect decides is tested in
    test_drift_detector.py): drift flagged, and a predicted-class mix far from the prior."""

    body = b"drift_state 1\ndrift_events_total 3\nlabel_drift_statistic 0.8\n"

    def do_GET(self):  # noqa: N802
        body = self.body if self.path.startswith("/metrics") else b"[]"  # http_sd: no revisions
        self.send_response(200)
        self.send_header("content-type", "text/plain" if self.path.startswith("/metrics") else "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.slow
def test_a_firing_rule_starts_a_retrain_through_alertmanager_and_the_receiver(session_home, tmp_path, monkeypatch):
    from gourmetgram.rollout.prometheus import LocalPrometheus

    metrics = LocalHTTPServer(_Metrics)
    retrain_config = tmp_path / "retrain.yaml"
    # The job starts, then stops at once (its whole run is test_cycle's): nothing is served here,
    # so the registry has no production version to stage a new one against. A home and registry of
    # its own: the session's may have a production version from another test (and MLflow's
    # set_tracking_uri leaves MLFLOW_TRACKING_URI in this process's environment for the job).
    monkeypatch.setenv("GOURMETGRAM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    missing = tmp_path / "no-such-dataset"
    retrain_config.write_text(yaml.safe_dump({"guards": {"min_new_labels": 0, "cooldown": "1h"},
                                              "run": {"dataset_uri": str(missing)}}))
    state = tmp_path / "retrain"
    alerting = LocalAlerting(tmp_path / "alerting", tmp_path / "logs", gateway_url="http://127.0.0.1:9",
                             db_url=f"sqlite:///{tmp_path / 'loop.db'}", retrain_config=str(retrain_config),
                             retrain_state_dir=state, timings={"groupWait": "1s", "groupInterval": "5s"})
    alerting.prepare()
    rules = shortened_rules(manifests.RULES_FILE, tmp_path / "rules.yml", "0s")  # GourmetGramLabelDrift: for 5m
    started = []
    try:
        for service in alerting.services():
            service.start(tmp_path)
            started.append(service)
            service.wait_ready(120)
        with LocalPrometheus(metrics.url, detector_url=metrics.url, rules=[rules],
                             alertmanager_url=alerting.alertmanager_url,
                             targets={"retrain-receiver": alerting.receiver_url}) as prom:
            history = History(state / "history.jsonl")
            run = wait_for(lambda: next((r for r in history.records() if r.get("event") == "started"), None),
                           120, "a retrain started by an alert")
            finished = wait_for(lambda: history.finished(run["run_id"]), 120, "the job's end record")
            firing = {a["labels"]["alertname"] for a in prom.client().alerts() if a["state"] == "firing"}
    finally:
        for service in reversed(started):
            service.stop()
        metrics.close()
    assert {"GourmetGramDriftDetected", "GourmetGramLabelDrift"} <= firing
    # Alertmanager delivered with the token (a 401 starts nothing) to the receiver, which started the job
    assert run["source"].startswith("alertmanager:") and "drift" in run["reasons"]
    assert run["launcher"] == "local"
    assert finished["status"] == "failed" and "production" in finished["error"], finished
    # one run: the second alert of the pair is held back (running, or the cool-down)
    assert [r["event"] for r in History(state / "history.jsonl").records()].count("started") == 1
    log = (tmp_path / "logs" / "retrain-receiver.log").read_text()
    assert "started" in log and run["run_id"] in log


def test_receiver_refuses_alertmanager_without_the_token(tmp_path):
    """What the bearer token buys: the same webhook body without it starts nothing (401)."""
    from starlette.testclient import TestClient

    from gourmetgram_app.local.retrain import build_trigger, create_app

    trigger, _ = build_trigger(load_retrain_settings(), f"sqlite:///{tmp_path / 'loop.db'}", state_dir=tmp_path)
    body = {"version": "4", "status": "firing", "alerts": [
        {"status": "firing", "labels": {"alertname": "GourmetGramDriftDetected"}}]}
    client = TestClient(create_app(trigger, token="s3cret"))
    assert client.post("/alerts", json=body).status_code == 401
    answer = client.post("/alerts", json=body, headers={"Authorization": "Bearer s3cret"})
    assert answer.status_code == 200 and answer.json()["blocked_by"] == "min_new_labels"
    last = client.get("/status").json()["last_alert"]
    assert last["alerts"] == ["GourmetGramDriftDetected"] and "new label(s)" in last["message"]
    assert client.get("/runs").json() == {"runs": []}


"""The local stack's supervisor and the gateway's readiness, with small real processes/servers.

Quick tests: the children are tiny Python processes and the "transformer" a stdlib HTTP
server, so crash, back-off, give-up and 503-while-not-ready are checked in seconds. The
real stack under ``kill -9`` is tests/test_fault_injection.py.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
from helpers import LocalHTTPServer, QuietHandler, free_port, wait_for

from gourmetgram.errors import DependencyUnavailable
from gourmetgram_app.local.process import Service
from gourmetgram_app.local.supervisor import (
    FAILED,
    READY,
    STOPPED,
    RestartPolicy,
    Supervisor,
    describe_exit,
    read_state_file,
)

# A child that says hello, records its pid (its readiness), and then either sleeps or, once
# the file ``<dir>/broken`` exists, fails at once with exit code 3.
CHILD = """
import os, sys, time
from pathlib import Path
d = Path(sys.argv[1])
print("hello from", sys.argv[2], os.getpid(), flush=True)
if (d / "broken").exists():
    print("boom: cannot start", flush=True)
    sys.exit(3)
(d / (sys.argv[2] + ".pid")).write_text(str(os.getpid()))
time.sleep(3600)
"""
FAST = RestartPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, max_failed_starts=3,
                     stable_after_s=3600, start_timeout_s=60)


def child(tmp_path: Path, name: str, ready=None) -> Service:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    svc = Service(name, [sys.executable, str(script), str(tmp_path), name], tmp_path / f"{name}.log",
                  ready=lambda: False)
    # Ready = this very process wrote its pid (so a restart is probed again, not remembered).
    svc.ready = ready or (lambda: (tmp_path / f"{name}.pid").is_file()
                          and (tmp_path / f"{name}.pid").read_text() == str(svc.pid))
    return svc


@pytest.fixture()
def supervisor(tmp_path):
    sup = Supervisor(FAST, state_file=tmp_path / "components.json")
    services: list[Service] = []
    yield sup, services
    sup.halt()
    for svc in services:
        svc.stop(timeout_s=5)
    sup.join()


def test_backoff_doubles_up_to_a_cap():
    policy = RestartPolicy(initial_backoff_s=1, max_backoff_s=30)
    assert [policy.backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert policy.worst_recovery_s() > policy.backoff(1) + policy.start_timeout_s
    assert describe_exit(-9) == "exit code -9 (SIGKILL)" and describe_exit(3) == "exit code 3"


def test_a_client_waits_for_a_canary_as_long_as_the_supervisor_retries_its_start():
    """The rollout client's wait for a new canary pair covers every failed start the gateway's
    supervisor retries before it gives up; a shorter one reported failures of pairs still coming up."""
    from gourmetgram.rollout.local import CANARY_START_TIMEOUT_S

    policy = RestartPolicy()
    assert policy.worst_give_up_s() == pytest.approx(5 * 180 + 1 + 2 + 4 + 8 + 16)
    assert policy.worst_give_up_s() <= CANARY_START_TIMEOUT_S


def test_killed_process_is_restarted_and_the_others_keep_their_pids(supervisor, tmp_path):
    sup, services = supervisor
    a, b = child(tmp_path, "a"), child(tmp_path, "b")
    services += [a, b]
    sup.start(a, tmp_path)
    sup.start(b, tmp_path)
    a_pid, b_pid = a.pid, b.pid
    os.kill(a_pid, signal.SIGKILL)

    wait_for(lambda: any(e.kind == "ready" for e in sup.events), what="a ready again")
    comp_a, comp_b = sup.component("a"), sup.component("b")
    assert comp_a.state == READY and comp_a.restarts == 1 and a.pid != a_pid and a.alive()
    assert comp_b.state == READY and comp_b.restarts == 0 and b.pid == b_pid
    crashed = [e for e in sup.events if e.kind == "crashed"]
    assert [(e.component, e.exit_code, e.pid) for e in crashed] == [("a", -9, a_pid)]
    assert "SIGKILL" in crashed[0].message and "restart 1 in 0.05 s" in crashed[0].message
    assert f"hello from a {a_pid}" in crashed[0].log_tail  # the crashed process's own log
    assert "restart 1 by the supervisor" in a.log_path.read_text()
    assert "a ready (restarts 1)" in sup.status_line() and "b ready" in sup.status_line()
    states = {c["name"]: c for c in read_state_file(tmp_path / "components.json")}
    assert states["a"]["restarts"] == 1 and states["a"]["last_exit_code"] == -9
    assert states["a"]["pid"] == a.pid and states["b"]["pid"] == b_pid


def test_failed_starts_back_off_then_give_up_with_the_reason(supervisor, tmp_path):
    sup, services = supervisor
    a, b = child(tmp_path, "a"), child(tmp_path, "b")
    services += [a, b]
    sup.start(a, tmp_path)
    sup.start(b, tmp_path)
    (tmp_path / "broken").touch()  # from now on a cannot start
    os.kill(a.pid, signal.SIGKILL)

    assert sup.gave_up.wait(60)
    comp = sup.component("a")
    assert comp.state == FAILED and comp.failed_starts == FAST.max_failed_starts
    crashed = [e for e in sup.events if e.kind == "crashed"]
    # the kill, then two failed starts, each after a doubled back-off; the third failure gives up
    assert [e.exit_code for e in crashed] == [-9, 3, 3]
    assert [f"in {FAST.backoff(n):g} s" in e.message for n, e in enumerate(crashed, 1)] == [True] * 3
    assert comp.restarts == FAST.max_failed_starts
    (gave_up,) = [e for e in sup.events if e.kind == "gave-up"]
    assert gave_up.exit_code == 3 and "boom: cannot start" in gave_up.log_tail
    assert "3 starts in a row failed, giving up" in sup.failure and "a.log" in sup.failure
    assert sup.component("b").state == READY and b.alive()  # nothing else touched


def test_a_start_that_never_gets_ready_counts_as_failed(tmp_path):
    policy = RestartPolicy(initial_backoff_s=0.01, max_backoff_s=0.01, max_failed_starts=2,
                           start_timeout_s=0.5)
    sup = Supervisor(policy)
    first = {}
    a = child(tmp_path, "a", ready=lambda: first.setdefault("pid", a.pid) == a.pid)
    try:
        sup.start(a, tmp_path)
        os.kill(a.pid, signal.SIGKILL)
        assert sup.gave_up.wait(60)
        msgs = [e.message for e in sup.events if e.kind in ("crashed", "gave-up")]
        assert "was not ready 0.5 s after its start" in msgs[-1] and "giving up" in msgs[-1]
        assert not a.alive()  # the hung start was killed, not left behind
    finally:
        sup.halt()
        a.stop(timeout_s=5)
        sup.join()


def test_a_first_start_that_fails_is_retried_and_reported(tmp_path):
    """A flaky first start (PyTriton's backend refusing its handshake, on another machine) is
    retried after the back-off like any restart, and reported; start() returns once it is up."""
    (tmp_path / "broken").touch()  # the first start fails with exit code 3

    def on_event(event):
        if event.kind == "crashed":  # the fault passes before the retry
            (tmp_path / "broken").unlink(missing_ok=True)

    sup = Supervisor(FAST, on_event=on_event, state_file=tmp_path / "components.json")
    a = child(tmp_path, "a")
    try:
        comp = sup.start(a, tmp_path)
        assert comp.state == READY and a.alive() and comp.restarts == 1 and comp.failed_starts == 0
        crashed, ready = [e for e in sup.events if e.kind == "crashed"], [e for e in sup.events if e.kind == "ready"]
        assert [e.exit_code for e in crashed] == [3] and len(ready) == 1
        assert "exited with exit code 3 while starting" in crashed[0].message
        assert "restart 1 in 0.05 s" in crashed[0].message and "boom: cannot start" in crashed[0].log_tail
        assert not sup.gave_up.is_set()
        assert read_state_file(tmp_path / "components.json")[0]["restarts"] == 1
    finally:
        sup.halt()
        a.stop(timeout_s=5)
        sup.join()


def test_a_first_start_that_keeps_failing_gives_up_with_the_reason(tmp_path):
    (tmp_path / "broken").touch()
    sup = Supervisor(FAST)
    a = child(tmp_path, "a")
    try:
        with pytest.raises(DependencyUnavailable, match="3 starts in a row failed, giving up") as err:
            sup.start(a, tmp_path)
        assert "a.log" in str(err.value) and sup.gave_up.is_set() and sup.failure == str(err.value)
        assert [e.exit_code for e in sup.events if e.kind == "crashed"] == [3, 3]
        assert sup.component("a").state == FAILED and not a.alive()
    finally:
        sup.halt()
        a.stop(timeout_s=5)
        sup.join()


# A tiny HTTP server: its liveness probe is a GET; SIGSTOP makes it hang (alive, answering nothing).
HTTP_CHILD = """
import http.server, os, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("serving", os.getpid(), flush=True)
server.serve_forever()
"""


def test_a_hung_process_is_killed_and_restarted_by_its_liveness_probe(tmp_path):
    script = tmp_path / "server.py"
    script.write_text(HTTP_CHILD)
    url = f"http://127.0.0.1:{free_port()}/"

    def answers() -> bool:
        return httpx.get(url, timeout=0.5).status_code == 200

    svc = Service("hangs", [sys.executable, str(script), url.rsplit(":", 1)[1].strip("/")],
                  tmp_path / "hangs.log", ready=answers, live=answers)
    policy = RestartPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, max_failed_starts=3,
                           stable_after_s=3600, start_timeout_s=60, liveness_period_s=0.2,
                           liveness_timeout_s=1.0)
    sup = Supervisor(policy)
    try:
        comp = sup.start(svc, tmp_path)
        hung_pid = svc.pid
        assert hung_pid is not None
        os.kill(hung_pid, signal.SIGSTOP)  # alive (its pid exists) and answering nothing
        wait_for(lambda: comp.restarts == 1 and comp.state == READY, 60, "the hung process replaced")
        assert svc.pid != hung_pid and answers()
        (crashed,) = [e for e in sup.events if e.kind == "crashed"]
        assert "did not answer its liveness probe for 1 s (hung); killed" in crashed.message
        assert crashed.pid == hung_pid and crashed.exit_code == -signal.SIGKILL
        with pytest.raises(ProcessLookupError):
            os.kill(hung_pid, 0)
    finally:
        sup.halt()
        svc.stop(timeout_s=5)
        sup.join()


def test_forgotten_or_halted_processes_are_not_restarted(supervisor, tmp_path):
    sup, services = supervisor
    a, b = child(tmp_path, "a"), child(tmp_path, "b")
    services += [a, b]
    comp_a = sup.start(a, tmp_path)
    comp_b = sup.start(b, tmp_path)
    sup.forget(a)
    a.stop(timeout_s=5)
    comp_a.thread.join(30)
    assert not comp_a.thread.is_alive() and comp_a.state == STOPPED and comp_a.restarts == 0
    sup.halt()
    b.stop(timeout_s=5)
    comp_b.thread.join(30)
    assert not comp_b.thread.is_alive() and comp_b.restarts == 0 and not b.alive()
    assert [e for e in sup.events if e.kind == "crashed"] == []


# -- the gateway's side: 503 + Retry-After while a revision is not ready ----------------------

class FakeTransformer(LocalHTTPServer):
    """A stdlib HTTP server answering like a transformer whose predictor is up or down."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.predicts = 0
        outer = self

        class Handler(QuietHandler):
            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 - readiness probe
                self._reply(200 if outer.mode == "ok" else 503, {"ready": outer.mode == "ok"})

            def do_POST(self):  # noqa: N802 - a prediction
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.predicts += 1
                if outer.mode == "ok":
                    self._reply(200, {"predictions": [{"label": "soup"}]})
                else:
                    self._reply(503, {"error": "predictor unavailable: cannot reach triton"})

        super().__init__(Handler)


def gateway_client(*transformers: FakeTransformer, percent: int | None = None, state_file: Path | None = None):
    from starlette.testclient import TestClient

    from gourmetgram_app.local.gateway import Gateway, Revision
    from gourmetgram_app.local.manifests import load_stage_manifest

    manifest = load_stage_manifest("staging")
    revisions = [Revision(f"rev-{i}", t.url, percent=100 if i == 0 else 0) for i, t in enumerate(transformers)]
    gateway = Gateway(manifest, revisions, logger_enabled=False, seed=0, state_file=state_file)
    if percent is not None:
        gateway.canary_percent = percent
        gateway._apply_split()
    return gateway, TestClient(gateway.app())


PREDICT = "/v1/models/food11:predict"
BODY = {"instances": [{"image": {"b64": "aGk="}}]}


def test_a_down_revision_gets_503_retry_after_until_its_probe_passes():
    fake = FakeTransformer()
    gateway, tc = gateway_client(fake)
    try:
        with tc:
            assert tc.post(PREDICT, json=BODY).status_code == 200
            fake.mode = "down"
            r = tc.post(PREDICT, json=BODY)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "predictor unavailable" in r.json()["error"] and fake.predicts == 2
            # Not ready now: answered by the gateway at once, nothing forwarded.
            r = tc.post(PREDICT, json=BODY)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "is not ready" in r.json()["error"] and fake.predicts == 2
            status = tc.get("/_gourmetgram/rollout").json()
            assert status["revisions"][0]["ready"] is False
            assert tc.get("/v2/health/ready").status_code == 503
            fake.mode = "ok"  # the predictor is back: the probe finds it
            wait_for(lambda: tc.post(PREDICT, json=BODY).status_code == 200, what="revision ready")
            assert tc.get("/_gourmetgram/rollout").json()["revisions"][0]["ready"] is True
            fake.close()  # the transformer itself is gone: connection refused -> 503 too
            r = tc.post(PREDICT, json=BODY)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "not reachable" in r.json()["error"]
            # every 503 is counted for the revision, as queue-proxy would (canary analysis sees it)
            from gourmetgram import metric_names as qp

            assert gateway.registry.get_sample_value(
                qp.REQUEST_COUNT, {qp.REVISION: "rev-0", qp.STATUS_CODE: "503", qp.NAMESPACE: gateway.manifest.namespace,
                                   qp.CONFIGURATION: gateway.configuration}) >= 3
    finally:
        fake.close()  # again is harmless: the socket is closed once more


def test_a_down_canary_answers_503_for_its_share_and_the_split_stays():
    stable, canary = FakeTransformer(), FakeTransformer()
    gateway, tc = gateway_client(stable, canary, percent=50)
    try:
        with tc:
            canary.close()
            got = {}
            for _ in range(40):
                r = tc.post(PREDICT, json=BODY)
                got.setdefault(r.headers.get("x-gourmetgram-revision"), set()).add(r.status_code)
            assert got == {"rev-0": {200}, "rev-1": {503}}
            percents = {r["name"]: r["percent"] for r in tc.get("/_gourmetgram/rollout").json()["revisions"]}
            assert percents == {"rev-0": 50, "rev-1": 50}
    finally:
        stable.close()


def test_the_rollout_is_saved_and_a_restarted_gateway_routes_by_it(tmp_path):
    """The split lives in the stack's state folder, not only in the gateway's memory (the
    real stack, with a canary pair started again, is tests/test_fault_injection.py)."""
    from gourmetgram import control

    stable, canary = FakeTransformer(), FakeTransformer()
    state_file = tmp_path / "rollout.json"
    try:
        gateway, tc = gateway_client(stable, canary, state_file=state_file)
        with tc:
            r = tc.post("/_gourmetgram/rollout", json={"action": "percent", "percent": 50},
                        headers=control.bearer(gateway.control_token))
            assert r.status_code == 200, r.text
        saved = json.loads(state_file.read_text())
        assert saved["canary_traffic_percent"] == 50 and saved["latest_rolledout_revision"] == "rev-0"
        assert [r["name"] for r in saved["revisions"]] == ["rev-0", "rev-1"]
        assert state_file.stat().st_mode & 0o077 == 0

        _, restarted = gateway_client(stable, canary, state_file=state_file)  # starts at 100/0 ...
        with restarted:  # ... and routes by the saved state
            revisions = restarted.get("/_gourmetgram/rollout").json()["revisions"]
            assert {r["name"]: (r["percent"], r["tag"]) for r in revisions} == {
                "rev-0": (50, "prev"), "rev-1": (50, "latest")}
            served = {restarted.post(PREDICT, json=BODY).headers["x-gourmetgram-revision"] for _ in range(40)}
            assert served == {"rev-0", "rev-1"}
    finally:
        stable.close()
        canary.close()


def test_a_rollout_state_that_is_not_this_gateways_is_ignored(tmp_path, caplog):
    from gourmetgram_app.local.gateway.state import RolloutState, SavedRevision, save

    stable, canary = FakeTransformer(), FakeTransformer()
    state_file = tmp_path / "rollout.json"
    try:
        save(state_file, RolloutState("another-isvc", (SavedRevision("rev-0"), SavedRevision("rev-1")), "rev-0", 50))
        _, tc = gateway_client(stable, canary, state_file=state_file)
        with tc:
            assert [r["percent"] for r in tc.get("/_gourmetgram/rollout").json()["revisions"]] == [100, 0]
        assert "it is another-isvc's" in caplog.text
        state_file.write_text("{not json")
        _, tc = gateway_client(stable, canary, state_file=state_file)
        with tc:
            assert [r["percent"] for r in tc.get("/_gourmetgram/rollout").json()["revisions"]] == [100, 0]
        assert "ignoring the rollout state" in caplog.text
        assert json.loads(state_file.read_text())["canary_traffic_percent"] is None  # rewritten whole
    finally:
        stable.close()
        canary.close()


def test_shared_memory_of_a_crashed_pytriton_is_swept(tmp_path):
    import subprocess

    from gourmetgram_app.local.triton_server import sweep_stale_shm

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / f"pytrtion{gone.pid}-abc-123").write_bytes(b"x")  # its owner crashed
    (tmp_path / f"pytrtion{os.getpid()}-def-456").write_bytes(b"x")  # a live owner's
    (tmp_path / "psm_other").write_bytes(b"x")  # not PyTriton's
    assert sweep_stale_shm(tmp_path) == [f"pytrtion{gone.pid}-abc-123"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"pytrtion{os.getpid()}-def-456", "psm_other"])

"""Fault injection on the real local stack under steady load: ``kill -9`` each process in turn.

The stack runs Triton (PyTriton), the transformer, the drift detector, the loop's capture sink
and broker (``serve --loop``), the gateway and Prometheus, all supervised. Two users send
predictions the whole time. Every supervised process except the gateway (the entry point:
killing it is a refused connection by definition) is killed with SIGKILL, one after the
other, and each time:

* clients get only 200 or 503 (never a refused connection, never another 5xx);
* the killed component is restarted once and is ready again within the bound the restart
  policy states (first back-off + one start, ``RestartPolicy.worst_recovery_s``), and a
  serving one answers predictions again;
* every other process keeps its pid.

Side components are checked to do their job again (the detector receives events, the new
Prometheus scrapes the gateway, captures arrive again after the capture sink or the broker
came back) and, at the end, every prediction served was captured, with no event dropped on
the way. No wall-clock limit is asserted beyond that generous bound; waits are on events.
Targets are every supervised component, so a process added to the stack later is killed here too.

Then the faults the supervisor meets at a start (a first start that fails, the canary's
too), a broker killed again and again under load (nothing acknowledged is lost), and a
gateway killed during a 50% canary (it comes back with its rollout).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from helpers import wait_for

from gourmetgram.bundle import Bundle
from gourmetgram.config import ExportConfig
from gourmetgram.constants import PRODUCTION
from gourmetgram.data.demo import DEMO_CLASSES
from gourmetgram.data.layout import list_images
from gourmetgram.export import export_bundle
from gourmetgram.model import ModelSpec, build_model
from gourmetgram_app.local.faults import kill9
from gourmetgram_app.local.loop import account, captured_ids
from gourmetgram_app.local.ports import Ports
from gourmetgram_app.local.stack import DETECTOR, GATEWAY, PROMETHEUS, TRITON, LocalStack
from gourmetgram_app.local.supervisor import READY, SERVING
from gourmetgram_app.local.traffic import BackgroundTraffic, predict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(session_home, demo_dataset):
    from drift_detector.build import build_detector

    torch.manual_seed(0)
    model = build_model(ModelSpec(class_names=DEMO_CLASSES, image_size=64, width_mult=0.5)).eval()
    path = session_home / "models" / "faults-test"  # the model store: canaries come only from there
    export_bundle(model, path, ExportConfig(max_batch_size=16, preferred_batch_sizes=(4, 8)))
    # A small detector (the default settings take longer to build and say nothing more here).
    build_detector(path, demo_dataset, n_reference=200, window_size=20, ert=1000, n_bootstraps=4000)
    return path


class BrokenModel:
    """A copy of ``bundle`` in the model store whose ``model.onnx`` ONNX Runtime cannot read
    until :meth:`mend`: a Triton started on it exits at once (a real failed start, like
    PyTriton's backend refusing its handshake on another machine)."""

    def __init__(self, bundle: Path, name: str) -> None:
        self.path = bundle.parent / name
        shutil.rmtree(self.path, ignore_errors=True)
        shutil.copytree(bundle, self.path)
        self.onnx = Bundle(self.path).onnx_path
        self.good = self.onnx.read_bytes()
        self.onnx.write_bytes(b"not an onnx model")

    def mend(self) -> None:
        self.onnx.write_bytes(self.good)


def metric(url: str, name: str) -> float:
    text = httpx.get(url, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def detector_receives(stack: LocalStack) -> bool:
    try:
        return metric(f"{stack.detector_url}/metrics", "drift_events_received_total") > 0
    except httpx.HTTPError:
        return False


def prometheus_scrapes(stack: LocalStack) -> bool:
    from gourmetgram.rollout.prometheus import PrometheusClient

    try:
        return any(s.value == 1 for s in PrometheusClient(stack.prometheus_url).query('up{job="gateway"}'))
    except Exception:  # noqa: BLE001 - not yet
        return False


CAPTURE, BROKER = "capture-sink", "broker"  # gourmetgram_app.local.loop's service names
# After its restart a side component must do its job again (captures: checked in the test).
SIDE_CHECKS = {DETECTOR: detector_receives, PROMETHEUS: prometheus_scrapes}


def test_kill_9_each_component_under_load(bundle, demo_dataset, tmp_path):
    from gourmetgram_app.local.loop import LoopServices
    from gourmetgram_app.local.supervisor import SIDE

    images = [p.read_bytes() for p, _ in list_images(demo_dataset / "evaluation")[:20]]
    ports = Ports.free()
    db = f"sqlite:///{tmp_path / 'loop.db'}"
    loop = LoopServices(bundle, tmp_path / "logs", detector_url=f"http://127.0.0.1:{ports.detector}/",
                        db_url=db, objects_url=(tmp_path / "objects").as_uri())
    stack = LocalStack(bundle, "staging", ports, log_dir=tmp_path / "logs", detector=True, prometheus=True,
                       logger_url=loop.broker_url + "/", feedback_url=loop.capture_url,
                       extra_services=[(loop.capture, SIDE), (loop.broker, SIDE)])
    bound_s = stack.supervisor.policy.worst_recovery_s() + 10  # + the wrapper noticing Triton died
    with stack, BackgroundTraffic(stack.gateway_url, images, workers=2, pause_s=0.05) as load:
        wait_for(lambda: load.codes.count(200) >= 5, 120, "first predictions")
        targets = [c for c in stack.supervisor.components() if c.name != GATEWAY]
        assert [c.name for c in targets] == ["triton", "transformer", DETECTOR, CAPTURE, BROKER, PROMETHEUS]
        wait_for(lambda: captured_ids(db), 120, "first captures")
        for target in targets:
            pids = {c.key: c.pid for c in stack.supervisor.components()}
            mark = len(load.answers)
            acknowledged = captured_ids(db)  # stored = acknowledged to the broker
            killed = kill9(target.name, target.pid)

            wait_for(lambda t=target: t.restarts == 1 and t.state == READY, bound_s,
                     f"{target.key} restarted and ready")
            crash = next(e for e in stack.supervisor.events if e.kind == "crashed" and e.component == target.key)
            assert crash.exit_code is not None and crash.exit_code != 0, crash
            # the crash report carries the crashed process's own last log lines (up to the restart mark)
            log_text = target.service.log_path.read_text(errors="replace")
            mark_at = log_text.find(" restart 1 by the supervisor")
            before_restart = log_text[:log_text.rfind("\n", 0, mark_at) + 1] if mark_at >= 0 else log_text
            assert crash.log_tail.strip() == "\n".join(before_restart.splitlines()[-20:]).strip()
            if target.role == SERVING:  # the revision answers again
                back = time.monotonic()
                wait_for(lambda b=back, m=mark: any(t > b and c == 200 for t, c in load.answers[m:]), 60,
                         f"a good answer after {target.key} came back")
                if target.name == "triton":
                    assert killed != pids[target.key]  # the tritonserver binary, not the wrapper
                assert 503 in [c for _, c in load.answers[mark:]], "the gap was answered with 503"
            elif target.name in (CAPTURE, BROKER):  # captures flow again, none acknowledged is lost
                wait_for(lambda a=acknowledged: captured_ids(db) > a, 120, f"captures after {target.key}")
                assert acknowledged <= captured_ids(db)
            else:
                wait_for(lambda t=target: SIDE_CHECKS[t.name](stack), 60, f"{target.key} working again")
            after = {c.key: c.pid for c in stack.supervisor.components()}
            assert after[target.key] != pids[target.key]
            assert {k: v for k, v in after.items() if k != target.key} == \
                   {k: v for k, v in pids.items() if k != target.key}, "untouched processes kept their pids"

        codes = list(load.codes)
        load.stop()  # what it was served must all be captured
        books = account(load.served_ids, db, stack.gateway_url, loop.broker_url)
        print(f"\nkill -9 of each component under load: {books.line()}")
    assert -1 not in codes, "a client got a refused or broken connection"
    assert set(codes) <= {200, 503}, sorted(set(codes))
    assert all(c.restarts == (0 if c.name == GATEWAY else 1) for c in stack.supervisor.components())
    assert not stack.supervisor.gave_up.is_set()
    assert books.ok and books.captured == books.served > 0, books


def test_a_first_start_that_fails_is_retried_and_the_stack_comes_up(bundle, demo_dataset, tmp_path):
    """serve's first start used to be fatal on one flaky start; now it is retried like a restart."""
    broken = BrokenModel(bundle, "faults-first-start")

    def mend_on_first_failure(event) -> None:
        if event.kind == "crashed" and event.component.endswith(f"/{TRITON}"):
            broken.mend()  # the fault passes before the retry (after the first back-off)

    image = list_images(demo_dataset / "evaluation")[0][0].read_bytes()
    stack = LocalStack(broken.path, "staging", Ports.free(), logger_url="", log_dir=tmp_path / "logs",
                       on_event=mend_on_first_failure)
    with stack:  # comes up: no exception
        triton = stack.supervisor.component(TRITON)
        assert triton.state == READY and triton.restarts == 1
        (crash,) = [e for e in stack.supervisor.events if e.kind == "crashed"]
        assert "while starting" in crash.message and crash.exit_code not in (None, 0)
        assert "restart 1 in" in crash.message and crash.log_tail, crash
        with httpx.Client(timeout=60) as client:
            assert predict(client, stack.gateway_url, image).status_code == 200
        assert all(c.restarts == 0 for c in stack.supervisor.components() if c.name != TRITON)


def test_a_canary_survives_a_failed_start_a_crash_and_a_gateway_kill(bundle, demo_dataset, tmp_path, capsys):
    """A canary's processes belong to the gateway (it started them): its supervisor retries a
    failed start and restarts a crash; meanwhile the canary's share is answered 503, the stable
    share is untouched and the split stays (Knative does not move traffic by itself either).
    Then the gateway itself is killed: it comes back with the 50% split and starts the canary
    pair again, from the rollout it saved in the stack's state folder."""
    from gourmetgram_app.cli.main import main

    image = list_images(demo_dataset / "evaluation")[0][0].read_bytes()
    canary_bundle = BrokenModel(bundle, "faults-canary")
    stack = LocalStack(bundle, PRODUCTION, Ports.free(), logger_url="", log_dir=tmp_path / "logs")
    with stack:
        rollout = stack.rollout()
        stable = stack.revision

        def canary_component(name: str) -> dict | None:
            return next((c for c in rollout.raw_status()["components"]
                         if c["revision"] not in (None, stable) and c["name"] == name), None)

        # 1. the canary's first start fails (its Triton cannot read the model) and is retried
        started: dict = {}
        starter = threading.Thread(target=lambda: started.update(rollout.canary(str(canary_bundle.path), 50)))
        starter.start()
        wait_for(lambda: (c := canary_component(TRITON)) is not None
                 and (c["state"] == "backoff" or c["restarts"] > 0), 300, "the canary's Triton failed its first start")
        canary_bundle.mend()
        starter.join(600)
        assert started, "the canary start came back"
        canary = started["revisions"][-1]["name"]
        triton = canary_component(TRITON)
        assert triton is not None and triton["state"] == READY and triton["restarts"] >= 1

        # 2. the canary's transformer is killed: its share is 503 until it is back
        os.kill(canary_component("transformer")["pid"], signal.SIGKILL)
        seen: dict[str, list[int]] = {stable: [], canary: []}
        bound_s = stack.supervisor.policy.worst_recovery_s() + 60
        deadline = time.monotonic() + bound_s
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < deadline:
                r = predict(client, stack.gateway_url, image)
                seen[r.headers["x-gourmetgram-revision"]].append(r.status_code)
                back = canary_component("transformer")
                if back["restarts"] == 1 and back["state"] == READY and seen[canary][-1:] == [200]:
                    break
                time.sleep(0.1)
        assert set(seen[stable]) == {200}, seen
        assert 503 in seen[canary] and seen[canary][-1] == 200, seen[canary]
        assert set(seen[canary]) == {200, 503}
        assert {r["name"]: r["percent"] for r in rollout.raw_status()["revisions"]} == {stable: 50, canary: 50}

        components = {(c["revision"], c["name"]): c for c in rollout.raw_status()["components"]}
        assert components[(canary, "transformer")]["last_exit_code"] == -signal.SIGKILL
        assert {k: c["state"] for k, c in components.items()} == {
            (stable, "triton"): READY, (stable, "transformer"): READY, (None, GATEWAY): READY,
            (canary, "triton"): READY, (canary, "transformer"): READY}
        assert components[(canary, "transformer")]["restarts"] == 1
        # and people see the same in `rollout status`
        assert main(["rollout", "status", "--gateway", stack.gateway_url]) == 0
        out = capsys.readouterr().out
        assert "restarts" in out and "revisions not ready (answering 503): none" in out
        assert any(canary in ln and "transformer" in ln and "ready" in ln for ln in out.splitlines()), out

        # 3. kill -9 of the gateway during the 50% canary: back with the split and the canary pair
        old_pairs = [c["pid"] for c in components.values() if c["revision"] == canary]
        gateway = stack.supervisor.component(GATEWAY)
        os.kill(gateway.pid, signal.SIGKILL)
        wait_for(lambda: gateway.restarts == 1 and gateway.state == READY, bound_s, "the gateway restarted")
        revisions = rollout.raw_status()["revisions"]
        assert {r["name"]: (r["percent"], r["tag"]) for r in revisions} == {
            stable: (50, "prev"), canary: (50, "latest")}
        def canary_pair_ready() -> bool:
            components = rollout.raw_status()["components"]
            return (len([c for c in components if c["revision"] == canary]) == 2
                    and all(c["state"] == READY for c in components))

        wait_for(canary_pair_ready, bound_s, "the canary pair started again")
        new_pairs = [c["pid"] for c in rollout.raw_status()["components"] if c["revision"] == canary]
        assert len(new_pairs) == 2 and not set(new_pairs) & set(old_pairs)
        wait_for(lambda: not any(_alive(pid) for pid in old_pairs), 60, "the old canary pair gone with its gateway")
        answered: dict[str, set[int]] = {stable: set(), canary: set()}
        with httpx.Client(timeout=60) as client:
            wait_for(lambda: _answered_by_both(client, stack.gateway_url, image, answered), 120,
                     "both revisions answering")
        assert stack.supervisor.component(TRITON).restarts == 0  # the stable pair was never touched


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _answered_by_both(client: httpx.Client, url: str, image: bytes, answered: dict[str, set[int]]) -> bool:
    r = predict(client, url, image)
    answered[r.headers["x-gourmetgram-revision"]].add(r.status_code)
    return all(200 in codes for codes in answered.values())


def test_broker_killed_again_and_again_under_load_loses_no_event(bundle, demo_dataset, tmp_path):
    """The logger retries while the broker is away, the broker commits before it acknowledges:
    across three kill -9 of the broker under load, every prediction served is captured."""
    from gourmetgram_app.local.loop import LoopServices
    from gourmetgram_app.local.supervisor import SIDE

    images = [p.read_bytes() for p, _ in list_images(demo_dataset / "evaluation")[:20]]
    db = f"sqlite:///{tmp_path / 'loop.db'}"
    loop = LoopServices(bundle, tmp_path / "logs", db_url=db, objects_url=(tmp_path / "objects").as_uri())
    stack = LocalStack(bundle, "staging", Ports.free(), log_dir=tmp_path / "logs",
                       logger_url=loop.broker_url + "/", feedback_url=loop.capture_url,
                       extra_services=[(loop.capture, SIDE), (loop.broker, SIDE)])
    bound_s = stack.supervisor.policy.worst_recovery_s() + 10
    with stack, BackgroundTraffic(stack.gateway_url, images, workers=3) as load:
        broker = stack.supervisor.component("broker")
        for kill in range(1, 4):
            wait_for(lambda n=len(load.served_ids): len(load.served_ids) >= n + 30, 120, "load flowing")
            kill9(broker.name, broker.pid)
            wait_for(lambda k=kill: broker.restarts == k and broker.state == READY, bound_s, "broker back")
        wait_for(lambda n=len(load.served_ids): len(load.served_ids) >= n + 30, 120, "load after the last kill")
        load.stop()
        books = account(load.served_ids, db, stack.gateway_url, loop.broker_url)
        retried = metric(f"{stack.gateway_url}/metrics", "logger_events_retried_total")
        recovered = metric(f"{loop.broker_url}/metrics", "broker_events_recovered_total")
    print(f"\n3 x kill -9 of the broker under load: {books.line()}; logger retries {retried:.0f}, "
          f"events the last broker found stored at its start {recovered:.0f}")
    assert set(load.codes) == {200}, "a side path never reaches a prediction"
    assert books.ok and books.captured == books.served > 0, books
    assert retried > 0, "the logger had to retry: the broker was really away"

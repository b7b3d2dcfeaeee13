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
came back) and no capture the sink acknowledged before its kill is lost. No wall-clock limit
is asserted beyond that generous bound; waits are on events. Targets are every supervised
component, so a process added to the stack later is killed here too.
"""

from __future__ import annotations

import time

import httpx
import pytest
import torch
from helpers import wait_for

from gourmetgram.config import ExportConfig
from gourmetgram.data.demo import DEMO_CLASSES
from gourmetgram.data.layout import list_images
from gourmetgram.export import export_bundle
from gourmetgram.model import ModelSpec, build_model
from gourmetgram_app.local.faults import kill9
from gourmetgram_app.local.stack import DETECTOR, GATEWAY, PROMETHEUS, LocalStack, Ports
from gourmetgram_app.local.supervisor import READY, SERVING
from gourmetgram_app.local.traffic import BackgroundTraffic

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


def captured_ids(db: str) -> set[str]:
    from sqlalchemy import select

    from gourmetgram.loop.models import Sample
    from gourmetgram.loop.store import Store

    store = Store(db)
    try:
        with store.session() as s:
            return set(s.scalars(select(Sample.sample_id)))
    finally:
        store.dispose()


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
    assert -1 not in codes, "a client got a refused or broken connection"
    assert set(codes) <= {200, 503}, sorted(set(codes))
    assert all(c.restarts == (0 if c.name == GATEWAY else 1) for c in stack.supervisor.components())
    assert not stack.supervisor.gave_up.is_set()


def test_a_crashed_canary_is_restarted_and_only_its_share_sees_503(bundle, demo_dataset, tmp_path, capsys):
    """A canary's processes belong to the gateway (it started them); its supervisor restarts
    them. Meanwhile the canary's share is answered 503, the stable share is untouched and the
    split stays as it was (Knative does not move traffic by itself either)."""
    import os
    import signal

    from gourmetgram.constants import PRODUCTION
    from gourmetgram_app.cli.main import main
    from gourmetgram_app.local.traffic import predict

    image = list_images(demo_dataset / "evaluation")[0][0].read_bytes()
    stack = LocalStack(bundle, PRODUCTION, Ports.free(), logger_url="", log_dir=tmp_path / "logs")
    with stack:
        rollout = stack.rollout()
        canary = rollout.canary(str(bundle), 50)["revisions"][-1]["name"]
        stable = stack.revision

        def canary_transformer() -> dict:
            return next(c for c in rollout.raw_status()["components"]
                        if c["revision"] == canary and c["name"] == "transformer")

        os.kill(canary_transformer()["pid"], signal.SIGKILL)
        seen: dict[str, list[int]] = {stable: [], canary: []}
        bound_s = stack.supervisor.policy.worst_recovery_s() + 60
        deadline = time.monotonic() + bound_s
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < deadline:
                r = predict(client, stack.gateway_url, image)
                seen[r.headers["x-gourmetgram-revision"]].append(r.status_code)
                back = canary_transformer()
                if back["restarts"] == 1 and back["state"] == READY and seen[canary][-1:] == [200]:
                    break
                time.sleep(0.1)
        assert set(seen[stable]) == {200}, seen
        assert 503 in seen[canary] and seen[canary][-1] == 200, seen[canary]
        assert set(seen[canary]) == {200, 503}
        assert {r["name"]: r["percent"] for r in rollout.raw_status()["revisions"]} == {stable: 50, canary: 50}

        components = {(c["revision"], c["name"]): c for c in rollout.raw_status()["components"]}
        assert components[(canary, "transformer")]["last_exit_code"] == -signal.SIGKILL
        assert {k: (c["state"], c["restarts"]) for k, c in components.items()} == {
            (stable, "triton"): (READY, 0), (stable, "transformer"): (READY, 0), (None, GATEWAY): (READY, 0),
            (canary, "triton"): (READY, 0), (canary, "transformer"): (READY, 1)}
        # and people see the same in `rollout status`
        assert main(["rollout", "status", "--gateway", stack.gateway_url]) == 0
        out = capsys.readouterr().out
        assert "restarts" in out and "revisions not ready (answering 503): none" in out
        assert any(canary in ln and "transformer" in ln and "ready" in ln for ln in out.splitlines()), out

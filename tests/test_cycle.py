"""One turn of the loop (what a triggered retrain and `gourmetgram loop cycle` run) end to end, with
small numbers, on real processes: a production stack with the loop (gateway -> transformer ->
Triton; logger -> broker -> capture sink), simulated users uploading night shots and giving
feedback through the public API, `loop export`, the training pipeline under kfp.local with the
production data merged in (differential gate against production), the registry, a staging stack
warmed up and gated by the COMPILED staging-gate pipeline on kfp.local (Locust, SLOs), the canary
on the production gateway raised through the rollout config's steps (10 -> 50) by `rollout auto
--feedback`, a real Prometheus and the loop store feeding the analysis; every step recorded.

Training numerics differ between machines, so nothing here asserts an accuracy: the training
config's gates are opened (margin 1, no improvement required, minimum accuracies 0) and, during the canary, the users'
feedback is SCRIPTED (a judge): the canary's answers marked correct and stable's wrong -> the
cycle promotes v2; the reverse -> it rolls back. Latency, the proxies and the 5xx margin are
relaxed in the rollout config for the same reason and so that a few dozen canary requests suffice
(they are judged in test_rollout/test_canary_feedback/test_sequential).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch
import yaml

from gourmetgram.config import ExportConfig
from gourmetgram.constants import CANARY, PRODUCTION, REPO_ROOT, STAGING
from gourmetgram.data.demo import DEMO_CLASSES
from gourmetgram.export import export_bundle
from gourmetgram.model import ModelSpec, build_model
from gourmetgram.retrain.settings import CanarySettings, ReleaseSettings, StagingSettings
from gourmetgram_app.local.cycle import PROMOTED, ROLLED_BACK, Cycle, CycleSettings, UserSettings
from gourmetgram_app.local.simulate import Behaviour

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(small_demo_dataset) -> Path:
    """Every third image of the demo dataset: the same classes and layout, less to train on."""
    return small_demo_dataset


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cycle-configs")
    train = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())
    train["train"].update(epochs=1, patience=1)
    train["evaluation"] = {"min_overall_accuracy": 0.0, "min_per_class_accuracy": 0.0, "batch_size": 64,
                           "differential": {"stage": "production", "margin": 1.0, "require_improvement": False,
                                            "gated_sets": ["original", "production"], "min_images": 1}}
    (root / "train.yaml").write_text(yaml.safe_dump(train))
    (root / "slo.yaml").write_text("p95_ms: 600000\nmax_error_rate: 0.05\nmin_rps: 0.1\nmin_requests: 5\n")
    rollout = yaml.safe_load((REPO_ROOT / "configs" / "rollout.yaml").read_text())  # its steps: 10 -> 50
    rollout["analysis"].update(max_p95_latency_ratio=1000, p95_latency_slack_ms=600000, max_confidence_drop=1.0,
                               max_class_shift=1.0, max_error_rate_increase=1.0)
    (root / "rollout.yaml").write_text(yaml.safe_dump(rollout))
    return {"train": str(root / "train.yaml"), "slo": str(root / "slo.yaml"), "rollout": str(root / "rollout.yaml")}


@pytest.fixture(scope="module")
def production(session_home, tmp_path_factory):
    """v1 (an untrained model, registered, alias production) served with the loop."""
    from gourmetgram import registry
    from gourmetgram.tracking import configure_mlflow
    from gourmetgram_app.local.loop import LoopServices
    from gourmetgram_app.local.ports import Ports
    from gourmetgram_app.local.stack import LocalStack

    torch.manual_seed(0)
    model = build_model(ModelSpec(class_names=DEMO_CLASSES, image_size=64, width_mult=0.5)).eval()
    bundle = session_home / "models" / "cycle-v1"  # in the model store: canaries come only from there
    export_bundle(model, bundle, ExportConfig(max_batch_size=16), overwrite=True)
    mlflow = configure_mlflow()
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", pip_requirements=["torch"])
    tags = registry.version_tags(evaluation_passed=True, accuracy=0.1, dataset_fingerprint="t",
                                 bundle_uri=str(bundle))
    version = registry.register_model(info.model_uri, tags, alias=None)
    registry.set_stage(PRODUCTION, version)
    logs = tmp_path_factory.mktemp("cycle-logs")
    loop = LoopServices(bundle, logs).start()
    stack = LocalStack(bundle, PRODUCTION, Ports.free(), logger_url=loop.broker_url + "/",
                       feedback_url=loop.capture_url, model_version=version, log_dir=logs)
    try:
        stack.start()
        yield {"stack": stack, "v1": version}
    finally:
        stack.stop()
        loop.stop()


def _judge(gateway: str, favour_canary: bool):
    """Scripted users: the canary's answers are right (or wrong), the stable revision's the reverse."""
    canary: dict[str, str | None] = {}

    def judge(served) -> bool:
        if "name" not in canary:
            canary["name"] = httpx.get(f"{gateway}/_gourmetgram/rollout", timeout=10).json()["revisions"][-1]["name"]
        return (served.revision == canary["name"]) == favour_canary

    return judge


def _cycle(production, base, configs, favour_canary: bool, lines: list[str], steps: list[tuple[str, dict]]):
    gateway = production["stack"].gateway_url
    release = ReleaseSettings(
        staging=StagingSettings(slo=configs["slo"], users=2, run_time="8s", warmup_requests=5),
        canary=CanarySettings(rollout_config=configs["rollout"], window="15s", min_requests=5, min_feedback=10,
                              require_feedback=True, interval_s=3.0, timeout_s=400))
    settings = CycleSettings(
        gateway=gateway, base=base, train_config=configs["train"], epochs=1, release=release,
        users=UserSettings(before=60, photos=60, behaviour=Behaviour(drifted_share=0.5),
                           judge=_judge(gateway, favour_canary)))
    return Cycle(settings, out=lines.append, on_step=lambda step, data: steps.append((step, data))).run()


def test_cycle_promotes_v2_when_the_feedback_favours_it(production, base, configs, capsys):
    from gourmetgram import registry

    lines: list[str] = []
    steps: list[tuple[str, dict]] = []
    result = _cycle(production, base, configs, True, lines, steps)
    out = "\n".join(lines)
    assert result.outcome == PROMOTED, out
    # the record the history keeps: each step, the staging gate's verdict, the staged raise 10 -> 50
    assert [s for s, _ in steps] == ["export", "retrain", "gate", "register", "staging", "canary", "canary", "decision"]
    recorded = dict(steps)
    assert recorded["staging"]["passed"] is True and recorded["staging"]["warmup"] == {"sent": 5, "ok": 5}
    assert [d["percent"] for s, d in steps if s == "canary"] == [10, 50]
    assert recorded["decision"]["outcome"] == PROMOTED
    assert result.exit_code == 0
    # every step ran, in order
    steps = [line for line in lines if line.startswith("=== cycle: ")]
    for word, step in zip(["production traffic", "loop export", "retrain", "differential gate", "register",
                           "staging", "canary", "result"], steps):
        assert step.startswith(f"=== cycle: {word}"), steps
    assert result.labels and sum(result.labels.values()) > 0  # users' corrections
    assert set(result.accuracy) == {"original", "production"}
    assert all(a["v1"] is not None and a["v2"] is not None for a in result.accuracy.values()), result.accuracy
    v2 = int(result.v2 or 0)
    assert v2 > production["v1"]
    assert registry.version_for(PRODUCTION) == v2 and registry.version_for(CANARY) is None
    status = httpx.get(f"{production['stack'].gateway_url}/_gourmetgram/rollout").json()
    assert status["canary_traffic_percent"] is None and [r["version"] for r in status["revisions"]] == [str(v2)]
    # the analysis judged the users' feedback per revision (from the loop store)
    analysis = out  # the release steps' report (gourmetgram.rollout.release.auto), said through the cycle
    assert "feedback accuracy" in analysis and "decision: PROMOTE" in analysis and "canary raised to 50%" in analysis
    canary_fb = [fb for name, fb in result.feedback.items() if name == status["revisions"][0]["name"]][0]
    assert canary_fb["answers"] >= 10 and canary_fb["accuracy"] == 1.0
    assert result.drift_to_promotion_s is not None and "time from drift onset" in out
    print("\n" + out[-3000:])


def test_cycle_rolls_back_v2_when_its_users_mark_it_wrong(production, base, configs, capsys):
    from gourmetgram import registry

    before = registry.version_for(PRODUCTION)
    lines: list[str] = []
    steps: list[tuple[str, dict]] = []
    result = _cycle(production, base, configs, False, lines, steps)
    out = "\n".join(lines)
    assert result.outcome == ROLLED_BACK, out
    assert dict(steps)["decision"]["outcome"] == ROLLED_BACK and [d["percent"] for s, d in steps if s == "canary"] == [10]
    assert result.exit_code == 1
    analysis = out
    assert "decision: ROLLBACK" in analysis and "feedback accuracy failed" in analysis
    assert registry.version_for(PRODUCTION) == before and registry.version_for(CANARY) is None
    assert registry.version_for(STAGING) == int(result.v2 or 0)  # registered, staged, never promoted
    status = httpx.get(f"{production['stack'].gateway_url}/_gourmetgram/rollout").json()
    assert status["canary_traffic_percent"] == 0
    assert result.drift_to_promotion_s is None
    print("\n" + out[-2000:])

"""Staged rollout: the gateway's canary split, tag routing and revision pairing, the cluster
patch at the wire, canary analysis from a real Prometheus, and `rollout auto` deciding.

The end-to-end part runs ONE production stack for the module (real PyTriton/tritonserver,
kserve transformers, the gateway) and walks it through a rollout in file order:
canary of a good model at 30% -> split checks -> `rollout auto` promotes it -> canary of a
bad model -> `rollout auto` rolls it back. Models are untrained (no training in tests):
stable and the good canary share weights; the bad canary's head is zeroed with a bias
that makes it answer one other class for every image.
"""

from __future__ import annotations

import base64
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
import yaml

from gourmetgram import metric_names as qp
from gourmetgram.config import ExportConfig
from gourmetgram.constants import CANARY, PRODUCTION, REPO_ROOT
from gourmetgram.data.demo import DEMO_CLASSES
from gourmetgram.data.layout import list_images
from gourmetgram.errors import BadInput, ConfigError
from gourmetgram.export import export_bundle
from gourmetgram.model import ModelSpec, build_model, predict_logits
from gourmetgram.preprocessing import preprocess_bytes
from gourmetgram.rollout import analysis, shadow
from gourmetgram.rollout.analysis import RolloutState, queries
from gourmetgram.rollout.config import Thresholds
from gourmetgram.rollout.decision import decide
from gourmetgram.rollout.kube import KubeRollout, state_from_isvc
from gourmetgram.rollout.queries import Figures
from gourmetgram_app.cli.main import main
from gourmetgram_app.local.traffic import BackgroundTraffic

MODEL = "food11"
SPEC = ModelSpec(class_names=DEMO_CLASSES, image_size=64, width_mult=0.5)


# -- analysis: pure decisions ------------------------------------------------------------
# Counts since the canary started: enough for the always-valid tests to show an equal canary no
# worse (a few hundred requests on each revision at least; see test_sequential.py for the figures).
def _fig(name, requests=3000.0, errors=0.0, p95=40.0, conf=0.6, classes=None):
    return Figures(name, requests, errors, p95, conf, classes or {"a": 1500.0, "b": 1500.0})


T = Thresholds(window="1m", min_requests=50)


def test_decide_promotes_an_equal_canary():
    v = decide(_fig("s"), _fig("c", requests=1500, classes={"a": 760.0, "b": 740.0}), T, "1m")
    assert v.decision == analysis.PROMOTE and all(c.ok for c in v.checks)
    assert "decision: PROMOTE" in v.report()


@pytest.mark.parametrize("canary, failed", [
    (_fig("c", errors=60.0), "5xx rate"),
    (_fig("c", p95=400.0), "p95 latency ms"),
    (_fig("c", conf=0.3), "mean confidence"),
    (_fig("c", classes={"a": 3000.0}), "class mix shift (TVD)"),
])
def test_decide_rolls_back_on_each_check(canary, failed):
    v = decide(_fig("s"), canary, T, "1m")
    assert v.decision == analysis.ROLLBACK
    assert [c.name for c in v.checks if c.ok is False] == [failed]
    assert f"{failed} failed" in v.report()


def test_decide_holds_without_evidence():
    assert decide(_fig("s"), _fig("c", requests=5), T, "1m").decision == analysis.HOLD
    missing = decide(_fig("s"), _fig("c", conf=None), T, "1m")
    assert missing.decision == analysis.HOLD and "mean confidence" in missing.reasons[0]
    # latency within the absolute slack passes even at 2x of a fast stable
    assert decide(_fig("s", p95=20.0), _fig("c", p95=60.0), T, "1m").decision == analysis.PROMOTE


def test_class_shift_needs_significance():
    """A small canary sample differs from stable by chance: large TVD, but not significant."""
    stable = {c: 20.0 for c in "abcdefghij"}
    noisy = {"a": 5.0, "b": 0.0, "c": 3.0, "d": 1.0, "e": 2.0, "f": 4.0, "g": 1.0, "h": 2.0, "i": 1.0, "j": 1.0}
    v = decide(_fig("s", classes=stable), _fig("c", requests=60, classes=noisy), T, "1m")
    shift = [c for c in v.checks if c.name == "class mix shift (TVD)"][0]
    assert shadow.class_shift(_fig("s", classes=stable).class_shares(), _fig("c", classes=noisy).class_shares()) > 0.25
    assert shift.ok and shadow.class_shift_p_value(stable, noisy) > 0.01
    assert shadow.class_shift_p_value(stable, {"a": 60.0}) < 1e-6
    # the sequence for the TVD covers the observed shift: nothing shown beyond the tolerance yet
    lo, hi = shift.evidence.sequence()
    assert lo <= 0.25 < hi and "confidence sequence for the TVD" in v.report()


def test_class_shift_is_total_variation():
    assert shadow.class_shift({"a": 1.0}, {"a": 1.0}) == 0
    assert shadow.class_shift({"a": 1.0}, {"b": 1.0}) == 1
    assert shadow.class_shift({"a": 0.5, "b": 0.5}, {"a": 1.0}) == pytest.approx(0.5)
    assert shadow.class_shift({"a": 5.0, "b": 5.0}, {"a": 3.0}) == pytest.approx(0.5)  # counts too


def test_queries_select_both_revisions_of_the_transformer():
    state = RolloutState("food11", "ns", "food11-predictor", MODEL, "food11-predictor-00001",
                         "food11-predictor-00002", 30)
    q = queries(state, "2m")
    # Knative 1.21 queue-proxy names (gourmetgram/metric_names.py)
    sel = 'kn_revision_name=~"food11-predictor-00001|food11-predictor-00002"'
    assert sel in q["requests"] and 'kn_configuration_name="food11-predictor"' in q["requests"]
    assert 'k8s_namespace_name="ns"' in q["requests"]
    assert q["requests"].startswith("sum by (kn_revision_name) (increase(kn_serving_invocation_duration_seconds_count{")
    assert 'http_response_status_code=~"5.."' in q["errors"] and "[2m]" in q["errors"]
    # seconds on the wire, milliseconds in the thresholds
    assert q["p95_ms"].startswith("1000 * histogram_quantile(0.95,")
    assert "kn_serving_invocation_duration_seconds_bucket" in q["p95_ms"]
    assert 'model_name="food11"' in q["confidence_sum"] and "predicted_class_total" in q["classes"]
    # the sequential checks read counts since the canary started; the p95 reads the recent window
    since = queries(state, "2m", since="754s")
    assert all("[754s]" in since[k] for k in ("requests", "errors", "confidence_sum", "confidence_count",
                                                "classes"))
    assert "[2m]" in since["p95_ms"] and "[754s]" not in since["p95_ms"]
    with pytest.raises(ConfigError):
        queries(state, "two minutes")


def test_config_file_and_bad_config(tmp_path):
    config = analysis.load_config()
    assert config.analysis.max_class_shift > 0 and config.auto.steps == tuple(sorted(config.auto.steps))
    bad = tmp_path / "r.yaml"
    bad.write_text("analysis: {max_confidence_drop: lots}\n")
    with pytest.raises(ConfigError, match="max_confidence_drop"):
        analysis.load_config(bad)
    bad.write_text("auto: {steps: [50, 10]}\n")
    with pytest.raises(ConfigError, match="steps"):
        analysis.load_config(bad)
    assert main(["rollout", "analyze", "--config", str(bad), "--gateway", "http://127.0.0.1:9"]) == 2


# -- the cluster: KubeRollout up to the wire ---------------------------------------------
ISVC = {
    "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
    "metadata": {"name": "food11", "namespace": "gourmetgram-production"},
    "spec": {
        "predictor": {"model": {"storageUri": "s3://models/1"},
                      "containers": [{"name": "transformer-container", "image": "t:1",
                                      "args": ["--model_name", MODEL, "--protocol", "v2"]}]},
    },
    "status": {"components": {"predictor": {
        "latestRolledoutRevision": "food11-predictor-00001",
        "traffic": [{"revisionName": "food11-predictor-00002", "percent": 30, "latestRevision": True,
                     "tag": "latest"},
                    {"revisionName": "food11-predictor-00001", "percent": 70, "latestRevision": False,
                     "tag": "prev"}]}}},
}
# The drift detector as the chart renders it (a Knative Service with a storage initializer).
DETECTOR = {
    "apiVersion": "serving.knative.dev/v1", "kind": "Service",
    "metadata": {"name": "drift-detector", "namespace": "gourmetgram-production"},
    "spec": {"template": {"spec": {
        "initContainers": [{"name": "storage-initializer", "image": "kserve/storage-initializer:v0.20.0",
                            "args": ["s3://models/1", "/mnt/models"]}],
        "containers": [{"name": "drift-detector", "image": "d:1"}]}}},
}
ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/gourmetgram-production/inferenceservices/food11"
DETECTOR_PATH = "/apis/serving.knative.dev/v1/namespaces/gourmetgram-production/services/drift-detector"


# The capture sink as the chart renders it: a Deployment with the same storage initializer.
CAPTURE_SINK = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "capture-sink", "namespace": "gourmetgram-production"},
    "spec": {"selector": {"matchLabels": {"app": "c"}}, "template": {"metadata": {"labels": {"app": "c"}}, "spec": {
        "initContainers": [{"name": "storage-initializer", "image": "kserve/storage-initializer:v0.20.0",
                            "args": ["s3://models/1", "/mnt/models"]}],
        "containers": [{"name": "capture-sink", "image": "c:1"}]}}},
}
CAPTURE_PATH = "/apis/apps/v1/namespaces/gourmetgram-production/deployments/capture-sink"


@pytest.fixture()
def api_server(kube_api):
    return kube_api(ISVC, routes={"/services/drift-detector": DETECTOR, "/deployments/capture-sink": CAPTURE_SINK})


def test_kube_canary_is_one_merge_patch_of_the_collocated_predictor(api_server):
    api_client, calls = api_server
    kube = KubeRollout("food11", "gourmetgram-production", api_client)
    kube.canary("s3://models/7/triton", 20, version=7)
    patches = [c for c in calls if c[0] == "PATCH"]
    assert len(patches) == 1
    method, got_path, content_type, body = patches[0]
    assert got_path == ISVC_PATH and content_type == "application/merge-patch+json"
    # one component: the transformer is a container of the same revision (kserve#1669)
    assert body == {"spec": {"predictor": {"canaryTrafficPercent": 20, "model": {"storageUri": "s3://models/7"},
                                           "annotations": {"gourmetgram.io/model-version": "7"}}}}

    calls.clear()
    kube.rollback()
    kube.set_percent(50)
    kube.promote()
    patches = [c for c in calls if c[0] == "PATCH"]
    assert [p[1] for p in patches] == [ISVC_PATH, ISVC_PATH, ISVC_PATH, DETECTOR_PATH, CAPTURE_PATH]
    assert [p[3]["spec"]["predictor"]["canaryTrafficPercent"] for p in patches[:3]] == [0, 50, None]
    assert all(c[2] == "application/merge-patch+json" for c in patches[:4])
    # ... and the capture sink's bundle (its class names) with it
    sink = patches[4][3]["spec"]["template"]
    assert sink["spec"]["initContainers"][0]["args"] == ["s3://models/1", "/mnt/models"]
    assert sink["metadata"]["annotations"] == {"gourmetgram.io/reference-bundle": "s3://models/1"}
    # promote moves the detector's reference to the bundle the InferenceService now serves
    template = patches[3][3]["spec"]["template"]
    assert template["spec"]["initContainers"][0]["args"] == ["s3://models/1", "/mnt/models"]
    assert template["metadata"]["annotations"] == {"gourmetgram.io/reference-bundle": "s3://models/1"}
    with pytest.raises(BadInput):
        kube.canary("s3://models/8", 101)
    with pytest.raises(BadInput, match="object-store URI"):  # a local path never reaches the cluster
        kube.canary("/home/me/.gourmetgram/bundles/8", 10)


def test_local_state_knows_when_the_canary_started():
    from gourmetgram.rollout.local import state_from_status

    status = {"inferenceservice": "food11", "namespace": "ns", "configuration": "food11-predictor",
              "model": MODEL, "latest_rolledout_revision": "r1", "latest_revision": "r2",
              "canary_traffic_percent": 30,
              "revisions": [{"name": "r1", "started": None}, {"name": "r2", "started": 1234.5}]}
    assert state_from_status(status).canary_started == 1234.5
    promoted = {**status, "latest_rolledout_revision": "r2", "canary_traffic_percent": None}
    assert state_from_status(promoted).canary is None and state_from_status(promoted).canary_started is None


def test_the_gateway_keeps_the_canary_start_across_a_restart():
    from gourmetgram_app.local.gateway import state

    saved = state.RolloutState("food11", (state.SavedRevision("r1"), state.SavedRevision("r2", "b", "2", 1234.5)),
                               "r1", 30)
    assert state.RolloutState.from_json(saved.to_json()).revisions[1].started == 1234.5
    bad = saved.to_json()
    bad["revisions"][1]["started"] = "yesterday"
    with pytest.raises(ValueError, match="Unix time"):
        state.RolloutState.from_json(bad)


def test_kube_state_from_status():
    state = state_from_isvc({**ISVC, "spec": {**ISVC["spec"], "predictor": {
        **ISVC["spec"]["predictor"], "canaryTrafficPercent": 30}}})
    assert (state.stable, state.canary, state.canary_percent) == (
        "food11-predictor-00001", "food11-predictor-00002", 30)
    assert state.configuration == "food11-predictor" and state.model_name == MODEL


# -- end to end: local stack + real Prometheus -------------------------------------------
# The slow tests below are ONE scenario on one module-scoped stack, in file order: a good
# canary is started and split-tested, then promoted by `rollout auto`, then a bad canary is
# rolled back (starting a revision pair costs ~25 s, so they share it).
def _export(model, path):
    export_bundle(model, path, ExportConfig(max_batch_size=16, preferred_batch_sizes=(4, 8)))
    return path


@pytest.fixture(scope="module")
def images(demo_dataset) -> list[bytes]:
    return [p.read_bytes() for p, _ in list_images(demo_dataset / "evaluation")[::7][:40]]


@pytest.fixture(scope="module")
def bundles(session_home, images):
    """stable == good (same weights, separate exports); bad answers another class for everything.
    In the model store: the gateway starts canaries only from bundles there."""
    root = session_home / "models" / "rollout-test"
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    x = np.stack([preprocess_bytes(b, SPEC.image_size) for b in images])
    stable_classes = np.bincount(predict_logits(model, x).numpy().argmax(1), minlength=len(DEMO_CLASSES))
    bad = build_model(SPEC).eval()
    bad.load_state_dict(model.state_dict())
    head = bad.classifier[-1]
    target = int(stable_classes.argmin())  # a class the stable model (almost) never answers
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[target] = 0.5
    return {"stable": _export(model, root / "stable"), "good": _export(model, root / "good"),
            "bad": _export(bad, root / "bad"), "bad_class": DEMO_CLASSES[target]}


@pytest.fixture(scope="module")
def registered(session_home, bundles):
    """Three registry versions (stable, good, bad) carrying their bundle paths; stable in production."""
    from gourmetgram import registry
    from gourmetgram.tracking import configure_mlflow

    mlflow = configure_mlflow()
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(build_model(SPEC).eval(), name="model",
                                        serialization_format="pickle", pip_requirements=["torch"])
    versions = {}
    for name in ("stable", "good", "bad"):
        tags = registry.version_tags(evaluation_passed=True, accuracy=0.5, dataset_fingerprint="t",
                                     bundle_uri=str(bundles[name]))
        versions[name] = registry.register_model(info.model_uri, tags, alias=None)
    registry.set_stage(PRODUCTION, versions["stable"])
    return versions


@pytest.fixture(scope="module")
def stack(bundles, tmp_path_factory):
    from gourmetgram_app.local.ports import Ports
    from gourmetgram_app.local.stack import LocalStack

    with LocalStack(bundles["stable"], PRODUCTION, Ports.free(), logger_url="",
                    log_dir=tmp_path_factory.mktemp("rollout-logs")) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(stack):
    from gourmetgram.rollout.prometheus import LocalPrometheus

    with LocalPrometheus(stack.gateway_url) as prom:
        yield prom


def _predict(url: str, blob: bytes, headers: dict | None = None) -> httpx.Response:
    body = {"instances": [{"image": {"b64": base64.b64encode(blob).decode()}}]}
    return httpx.post(f"{url}/v1/models/{MODEL}:predict", json=body, headers=headers, timeout=60)


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? ([0-9.eE+-]+)$", line)
        if m and all(dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")).get(k) == v
                     for k, v in labels.items()):
            total += float(m.group(2))
    return total


def _revisions(stack) -> dict[str, dict]:
    return {r["name"]: r for r in httpx.get(f"{stack.gateway_url}/_gourmetgram/rollout").json()["revisions"]}


@pytest.mark.slow
def test_canary_split_tags_and_pairing(stack, registered, images, capsys):
    from gourmetgram import registry

    rc = main(["rollout", "canary", "--percent", "30", "--version", str(registered["good"]),
               "--gateway", stack.gateway_url])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert registry.version_for(CANARY) == registered["good"]
    revs = _revisions(stack)
    stable, canary = sorted(revs)
    assert (revs[stable]["percent"], revs[stable]["tag"]) == (70, "prev")
    assert (revs[canary]["percent"], revs[canary]["tag"]) == (30, "latest")
    assert revs[canary]["version"] == str(registered["good"]) and canary in out

    def triton_success():
        # images inferred, not requests: the transformer coalesces concurrent requests into one
        # Triton request (issue 14), so nv_inference_request_success can be lower
        return {name: _metric(httpx.get(r["triton_metrics_url"]).text, "nv_inference_count",
                              model=MODEL) for name, r in revs.items()}

    def predicted(name):
        return _metric(httpx.get(revs[name]["transformer_url"] + "/metrics").text, "predicted_class_total",
                       revision=name)

    before_triton = triton_success()
    before_pred = {name: predicted(name) for name in revs}
    n = 200
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda i: _predict(stack.gateway_url, images[i % len(images)]), range(n)))
    assert all(r.status_code == 200 for r in responses)
    served = [r.headers["x-gourmetgram-revision"] for r in responses]
    to_canary = served.count(canary)
    sd = math.sqrt(n * 0.3 * 0.7)
    assert abs(to_canary - 0.3 * n) <= 4 * sd, f"{to_canary}/{n} to the canary"
    assert served.count(stable) == n - to_canary
    print(f"\nsplit: {to_canary}/{n} = {to_canary / n:.3f} to the canary (30% configured)")

    # tag routing: KServe's hostnames and the documented header reach one revision each
    # (tag routes are internal: they take the stack's control token, test_security.py)
    token = {"Authorization": f"Bearer {stack.control_token}"}
    by_host = [_predict(stack.gateway_url, images[0], {"Host": f"latest-{stack.manifest.name}."
                                                       f"{stack.manifest.namespace}.example.com", **token})
               for _ in range(10)]
    by_header = [_predict(stack.gateway_url, images[0], {"X-Gourmetgram-Tag": "prev", **token})
                 for _ in range(10)]
    assert {r.headers["x-gourmetgram-revision"] for r in by_host} == {canary}
    assert {r.headers["x-gourmetgram-revision"] for r in by_header} == {stable}
    assert _predict(stack.gateway_url, images[0], {"X-Gourmetgram-Tag": "blue", **token}).status_code == 404

    # pairing: every revision's Triton inferred exactly the images its transformer was sent
    served_by = {stable: served.count(stable) + 10, canary: to_canary + 10}
    after_triton = triton_success()
    for name in revs:
        assert after_triton[name] - before_triton[name] == served_by[name], name
        assert predicted(name) - before_pred[name] == served_by[name], name
    gw = httpx.get(f"{stack.gateway_url}/metrics").text
    assert _metric(gw, qp.REQUEST_COUNT, **{qp.REVISION: canary, qp.STATUS_CODE: "200"}) >= served_by[canary]


def _auto(stack, prometheus, *extra, steps: str | None = ""):
    """``rollout auto`` with short windows; ``steps=None``: the rollout config's own steps."""
    return main(["rollout", "auto", "--gateway", stack.gateway_url, "--prometheus", prometheus.url,
                 "--window", "15s", "--min-requests", "15", *(["--steps", steps] if steps is not None else []),
                 "--interval", "4", "--passes-per-step", "2", "--timeout", "240", *extra])


def _ensure_canary(stack, version: int, percent: int = 30) -> str:
    """The canary of ``version`` at ``percent`` (started unless it already serves): each test sets up
    its own state, so it passes alone too."""
    revs = _revisions(stack)
    latest = [r for r in revs.values() if r["tag"] == "latest" and r["version"] == str(version)]
    if not (latest and latest[0]["percent"] == percent and len(revs) == 2):
        assert main(["rollout", "canary", "--percent", str(percent), "--version", str(version),
                     "--gateway", stack.gateway_url]) == 0
    return max(_revisions(stack))


@pytest.mark.slow
def test_auto_raises_a_good_canary_through_the_configs_steps_and_promotes_it(stack, prometheus, registered,
                                                                              images, capsys, tmp_path):
    """The staged raise of configs/rollout.yaml (auto.steps [10, 50]): the canary starts at 10%,
    `rollout auto` raises it to 50% after passing analyses, then promotes it."""
    from gourmetgram import registry
    from gourmetgram.rollout.analysis import load_config

    steps = load_config().auto.steps
    assert list(steps) == [10, 50], "this test walks the committed config's steps"
    canary = _ensure_canary(stack, registered["good"], percent=steps[0])
    capsys.readouterr()
    # Latency is judged in the decide() tests; here a p95 blip on a busy machine must not roll
    # back a canary that answers exactly as the stable revision does. The steps stay the file's;
    # the 5xx margin is the local stack's (configs/retrain.yaml release.canary): the file's 0.02
    # needs ~650 canary requests at 10% to show "no worse", 0.1 about 100.
    config = tmp_path / "rollout.yaml"
    base = yaml.safe_load((REPO_ROOT / "configs" / "rollout.yaml").read_text())
    base["analysis"].update(max_p95_latency_ratio=1000, p95_latency_slack_ms=600000, max_error_rate_increase=0.1)
    config.write_text(yaml.safe_dump(base))
    seen: list[int | None] = []

    def look() -> None:
        percent = httpx.get(f"{stack.gateway_url}/_gourmetgram/rollout", timeout=10).json()["canary_traffic_percent"]
        if not seen or seen[-1] != percent:
            seen.append(percent)

    def watch(stop: threading.Event) -> None:  # every canary percentage the gateway serves, in order
        while not stop.is_set():
            look()
            stop.wait(0.2)

    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stop,), daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        with BackgroundTraffic(stack.gateway_url, images) as load:
            rc = _auto(stack, prometheus, "--config", str(config), steps=None)
    finally:
        stop.set()
        watcher.join(10)
    look()  # the end state too: the watcher may stop before its next look after the promotion
    took = time.monotonic() - started
    out = capsys.readouterr().out
    assert rc == 0, out
    assert seen == [10, 50, None], f"canary percentages seen: {seen}\n{out[-3000:]}"
    assert "canary raised to 50%" in out and "steps [50]" in out
    assert "decision: PROMOTE" in out and "promoted" in out
    assert all(code == 200 for code in load.codes), set(load.codes)
    status = httpx.get(f"{stack.gateway_url}/_gourmetgram/rollout").json()
    assert status["latest_rolledout_revision"] == canary and status["canary_traffic_percent"] is None
    assert [(r["name"], r["percent"]) for r in status["revisions"]] == [(canary, 100)]
    assert registry.version_for(PRODUCTION) == registered["good"] and registry.version_for(CANARY) is None
    # the evidence is what Prometheus says about the gateway/transformer metrics
    assert re.search(r"mean confidence\s+\d\.\d{3}\s+\d\.\d{3}", out)
    print(f"\npromoted after {took:.1f} s ({len(load.codes)} requests)\n" + out[-1500:])


@pytest.mark.slow
def test_auto_rolls_back_a_bad_canary(stack, prometheus, registered, bundles, images, capsys):
    from gourmetgram import registry

    stable = _revisions(stack)
    production = registry.version_for(PRODUCTION)
    assert main(["rollout", "canary", "--percent", "30", "--version", str(registered["bad"]),
                 "--gateway", stack.gateway_url]) == 0
    canary = max(_revisions(stack))
    assert canary not in stable and registry.version_for(CANARY) == registered["bad"]
    capsys.readouterr()
    started = time.monotonic()
    with BackgroundTraffic(stack.gateway_url, images) as load:
        rc = _auto(stack, prometheus)
    took = time.monotonic() - started
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "decision: ROLLBACK" in out and "class mix shift (TVD) failed" in out
    assert re.search(rf"canary: {bundles['bad_class']} 100%", out)
    assert all(code == 200 for code in load.codes)
    status = httpx.get(f"{stack.gateway_url}/_gourmetgram/rollout").json()
    assert status["canary_traffic_percent"] == 0
    percents = {r["name"]: (r["percent"], r["tag"]) for r in status["revisions"]}
    assert percents[canary] == (0, "latest") and list(percents.values()).count((100, "prev")) == 1
    # after the rollback nothing reaches the bad canary unless asked for by tag
    after = [_predict(stack.gateway_url, images[i]).headers["x-gourmetgram-revision"] for i in range(20)]
    assert canary not in after
    assert registry.version_for(CANARY) is None and registry.version_for(PRODUCTION) == production
    assert main(["rollout", "status", "--gateway", stack.gateway_url]) == 0
    assert "canaryTrafficPercent 0" in capsys.readouterr().out
    print(f"\nrolled back after {took:.1f} s\n" + out[-1500:])


@pytest.mark.slow
def test_rollout_errors_are_clear(stack, capsys):
    assert main(["rollout", "canary", "--percent", "10", "--bundle", "/no/such/bundle",
                 "--gateway", stack.gateway_url]) == 2
    assert "/no/such/bundle" in capsys.readouterr().err
    assert main(["rollout", "status", "--gateway", "http://127.0.0.1:9"]) == 3  # a dependency unavailable
    assert "not reachable" in capsys.readouterr().err

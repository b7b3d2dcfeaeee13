"""Shadow deployment: the analysis's decisions, and mirroring on the real local stack.

The end-to-end part runs ONE production stack for the module (PyTriton, kserve transformers,
the gateway) with a recording CloudEvents sink as the logger's target, in file order: a
shadow of a deliberately different model mirrors 100% -> its answers reach the sink under
the mirrored requests' ids while clients keep getting production's -> the analysis says
not ready -> the shadow is killed under load and no client request fails -> stop. The logger posts to the
real capture chain (broker -> capture sink on SQLite), with the recording sink subscribed in
the drift detector's place.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import signal

import helpers
import httpx
import numpy as np
import pytest
import torch
from helpers import wait_until as _wait

from gourmetgram.config import ExportConfig
from gourmetgram.constants import PRODUCTION
from gourmetgram.data.demo import DEMO_CLASSES
from gourmetgram.data.layout import list_images
from gourmetgram.export import export_bundle
from gourmetgram.model import ModelSpec, build_model, predict_logits
from gourmetgram.preprocessing import preprocess_bytes
from gourmetgram.rollout.config import ShadowThresholds
from gourmetgram.rollout.shadow import (
    HOLD,
    NOT_READY,
    READY,
    PairedAnswer,
    decide,
    figures,
    paired_answers,
    wilson,
)
from gourmetgram_app.cli.main import main
from gourmetgram_app.local.shadow import top1
from gourmetgram_app.local.traffic import BackgroundTraffic

MODEL = "food11"
SPEC = ModelSpec(class_names=DEMO_CLASSES, image_size=64, width_mult=0.5)
T = ShadowThresholds()


# -- analysis: pure decisions ------------------------------------------------------------
def _answers(n: int, agree: float = 1.0, shadow_conf: float = 0.8, labelled: int = 0,
             truth: str = "production") -> list[PairedAnswer]:
    """``n`` pairs cycling through the classes; the first ``agree * n`` agree, the rest have
    the shadow answer the next class; the first ``labelled`` carry ``truth``'s answer as label."""
    out = []
    for i in range(n):
        prod = DEMO_CLASSES[i % len(DEMO_CLASSES)]
        shadow = prod if i < round(agree * n) else DEMO_CLASSES[(i + 1) % len(DEMO_CLASSES)]
        label = (prod if truth == "production" else shadow) if i < labelled else None
        out.append(PairedAnswer(f"id-{i}", prod, 0.8 + 0.001 * (i % 7), shadow,
                                shadow_conf + 0.001 * (i % 7), label))
    return out


def test_wilson_interval_known_values():
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # the textbook example
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_decide_ready_for_a_shadow_that_agrees():
    verdict = decide(figures(_answers(200)), T)
    assert verdict.decision == READY, verdict.report()
    assert "READY FOR CANARY" in verdict.report() and "95% CI" in verdict.report()


def test_decide_holds_with_few_pairs():
    assert decide(figures(_answers(T.min_pairs - 1)), T).decision == HOLD


def test_decide_not_ready_on_disagreement_and_class_mix():
    # Disagreeing without changing the class mix (each answer moved to the next class).
    verdict = decide(figures(_answers(200, agree=0.3)), T)
    assert verdict.decision == NOT_READY and verdict.reasons == ["top-1 agreement failed"], verdict.report()
    # One class for everything: the mix moves too, significantly.
    one_class = [dataclasses.replace(a, shadow=DEMO_CLASSES[0]) for a in _answers(200)]
    verdict = decide(figures(one_class), T)
    assert {"top-1 agreement failed", "class mix shift (TVD) failed"} <= set(verdict.reasons)


def test_confidence_drop_fails_only_when_significant():
    verdict = decide(figures(_answers(200, shadow_conf=0.5)), T)
    assert verdict.decision == NOT_READY and verdict.reasons == ["mean confidence failed"]
    # The same drop on a handful of pairs is only a hold: not evidence yet.
    assert decide(figures(_answers(8, shadow_conf=0.5)), T).decision == HOLD


def test_accuracy_against_labels():
    worse = figures(_answers(200, agree=0.85, labelled=200, truth="production"))
    assert (worse.production_accuracy, worse.shadow_accuracy) == (1.0, 0.85)
    verdict = decide(worse, T)
    assert verdict.decision == NOT_READY and verdict.reasons == ["accuracy (n=200) failed"], verdict.report()
    # Too few labels: accuracy is not judged, and the verdict says so.
    unjudged = decide(figures(_answers(200, labelled=T.min_labelled - 1)), T)
    assert unjudged.decision == READY and "accuracy not judged" in unjudged.reasons[0]
    # A shadow that disagrees a lot but is right more often is a better model, not a failure.
    better = figures(_answers(200, agree=0.6, labelled=200, truth="shadow"))
    assert better.agreement_ci[0] < T.min_agreement
    assert decide(better, T).decision == READY, decide(better, T).report()


def test_paired_answers_join_labels_by_inference_id():
    pairs = [{"inference_id": "a", "production": [{"label": "Soup", "confidence": 0.9}],
              "shadow": [{"label": "Rice", "confidence": 0.7}]},
             {"inference_id": "b", "production": [{"label": "Soup", "confidence": 0.9}], "shadow": []}]
    answers = paired_answers(pairs, {"a": "Rice"})
    assert answers == [PairedAnswer("a", "Soup", 0.9, "Rice", 0.7, "Rice")]
    f = figures(answers)
    assert (f.pairs, f.agreements, f.production_accuracy, f.shadow_accuracy) == (1, 0, 0.0, 1.0)


def test_top1_reads_v1_answers_only():
    assert top1(b'{"predictions": [{"label": "Soup", "confidence": 0.5}]}') == [("Soup", 0.5)]
    assert top1(b"not json") == [] and top1(b'{"outputs": []}') == []


# -- capture: the shadow's answers next to production's, in the loop store --------------------
def test_capture_keeps_shadow_answers_apart_and_joins_them_with_labels(tmp_path):
    from loop_helpers import CLASSES, ce_headers, image, request_body, response_body
    from starlette.testclient import TestClient

    from capture_sink.server import CaptureService, create_app
    from gourmetgram.loop.feedback import record_feedback
    from gourmetgram.loop.settings import CaptureSettings, FeedbackSettings, LoopSettings
    from gourmetgram.loop.store import Store
    from gourmetgram.objectstore import ObjectStore
    from gourmetgram.rollout.shadow import captured_answers

    store = Store(f"sqlite:///{tmp_path / 'loop.db'}")
    settings = LoopSettings(capture=CaptureSettings(), feedback=FeedbackSettings(wait_for_capture_s=0.0))
    client = TestClient(create_app(CaptureService(store, ObjectStore((tmp_path / "o").as_uri()), settings,
                                                  CLASSES)))
    shadow_rev = "food11-shadow-predictor-00001"

    def post(ce_id, kind, body, **kw):
        r = client.post("/", content=body, headers=ce_headers(ce_id, kind, **kw))
        assert r.status_code == 200, r.text

    # The shadow's answer arrives FIRST for "a": it must not become the production prediction.
    post("a", "response", response_body("three", 0.4), endpoint="shadow", revision=shadow_rev)
    post("a", "request", request_body(image(1)))
    post("a", "response", response_body("two", 0.9))
    post("a", "response", response_body("three", 0.4), endpoint="shadow", revision=shadow_rev)  # redelivery
    post("b", "request", request_body(image(2)))
    post("b", "response", response_body("one", 0.8))
    post("b", "response", response_body("one", 0.7), endpoint="shadow", revision=shadow_rev)
    # The cluster's shadow InferenceService says so by its name (its endpoint is "default").
    post("c", "request", request_body(image(3)))
    post("c", "response", response_body("zero", 0.8))
    post("c", "response", response_body("one", 0.6), isvc="food11-shadow", revision="food11-shadow-predictor-00002")
    try:
        assert store.get_sample("a").label == "two" and store.get_sample("b").label == "one"
        assert store.get_sample("c").label == "zero"
        record_feedback(store, {"inference_id": "a", "correct": False, "correct_class": "three", "flag": None})
        record_feedback(store, {"inference_id": "b", "correct": True, "correct_class": None, "flag": None})
        rows = {r["sample_id"]: r for r in store.shadow_comparisons(shadow_rev)}
        assert set(rows) == {"a", "b"}
        assert (rows["a"]["production"], rows["a"]["shadow"], rows["a"]["label"]) == ("two", "three", "three")
        assert (rows["b"]["production"], rows["b"]["shadow"], rows["b"]["label"]) == ("one", "one", "one")
        f = figures(captured_answers(rows.values()))
        assert (f.pairs, f.agreements, f.labelled, f.production_correct, f.shadow_correct) == (2, 1, 2, 1, 2)
        latest = store.shadow_comparisons()  # default: the shadow revision captured last
        assert [r["sample_id"] for r in latest] == ["c"] and latest[0]["shadow"] == "one"
    finally:
        store.dispose()


# -- end to end on the local stack ---------------------------------------------------------
class Sink(helpers.Sink):
    """Records the logger's CloudEvents (a stand-in for the detector / capture sink)."""

    def shadow_events(self) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b in self.events if h.get("ce-endpoint") == "shadow"]


def _predict(client: httpx.Client, url: str, blob: bytes, ce_id: str | None = None) -> httpx.Response:
    body = {"instances": [{"image": {"b64": base64.b64encode(blob).decode()}}]}
    return client.post(f"{url}/v1/models/{MODEL}:predict", json=body,
                       headers={"ce-id": ce_id} if ce_id else None)


@pytest.fixture(scope="module")
def images(demo_dataset) -> list[bytes]:
    return [p.read_bytes() for p, _ in list_images(demo_dataset / "evaluation")[::9][:20]]


@pytest.fixture(scope="module")
def bundles(session_home, images):
    """stable, and a candidate that answers one class stable never gives on these images."""
    root = session_home / "models" / "shadow-test"
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    x = np.stack([preprocess_bytes(b, SPEC.image_size) for b in images])
    counts = np.bincount(predict_logits(model, x).numpy().argmax(1), minlength=len(DEMO_CLASSES))
    other = build_model(SPEC).eval()
    other.load_state_dict(model.state_dict())
    target = int(counts.argmin())
    with torch.no_grad():
        other.classifier[-1].weight.zero_()
        other.classifier[-1].bias.zero_()
        other.classifier[-1].bias[target] = 0.5
    config = ExportConfig(max_batch_size=16, preferred_batch_sizes=(4, 8))
    export_bundle(model, root / "stable", config)
    export_bundle(other, root / "candidate", config)
    return {"stable": root / "stable", "candidate": root / "candidate",
            "candidate_class": DEMO_CLASSES[target], "stable_never": counts[target] == 0}


@pytest.fixture(scope="module")
def sink():
    s = Sink()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def loop(bundles, sink, tmp_path_factory):
    """The real capture chain: the logger posts to the broker, which fans out to the capture
    sink (SQLite + objects) and to the recording sink (in the detector's place)."""
    from gourmetgram_app.local.loop import LoopServices

    root = tmp_path_factory.mktemp("shadow-loop")
    db = f"sqlite:///{root / 'loop.db'}"
    services = LoopServices(bundles["stable"], root / "logs", detector_url=sink.url, db_url=db,
                            objects_url=(root / "objects").as_uri()).start()
    try:
        yield {"db": db, "services": services}
    finally:
        services.stop()


@pytest.fixture(scope="module")
def stack(bundles, loop, tmp_path_factory):
    from gourmetgram_app.local.ports import Ports
    from gourmetgram_app.local.stack import LocalStack

    with LocalStack(bundles["stable"], PRODUCTION, Ports.free(), logger_url=loop["services"].broker_url + "/",
                    model_version="1", log_dir=tmp_path_factory.mktemp("shadow-logs")) as running:
        yield running


def _detail(stack) -> dict:
    r = httpx.get(f"{stack.gateway_url}/_gourmetgram/shadow",
                  headers={"Authorization": f"Bearer {stack.control_token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _ensure_shadow(stack, bundles) -> dict:
    if not (_detail(stack)["shadow"] or {}).get("name"):
        assert main(["rollout", "shadow", "start", "--bundle", str(bundles["candidate"]),
                     "--percent", "100", "--gateway", stack.gateway_url]) == 0
    return _detail(stack)


@pytest.mark.slow
def test_mirrored_requests_reach_the_shadow_and_clients_get_production_answers(
        stack, loop, bundles, sink, images, capsys):
    with httpx.Client(timeout=60) as client:
        baseline = [_predict(client, stack.gateway_url, b).json() for b in images]
        assert main(["rollout", "shadow", "start", "--bundle", str(bundles["candidate"]),
                     "--percent", "100", "--gateway", stack.gateway_url]) == 0
        out = capsys.readouterr().out
        assert "mirrors 100% of model requests" in out, out
        sink.events.clear()
        ids = [f"shadow-test-{i}" for i in range(len(images))]
        answers = [_predict(client, stack.gateway_url, b, ce_id) for b, ce_id in zip(images, ids)]
    # Clients: only production's answers, from the production revision.
    assert all(r.status_code == 200 for r in answers)
    assert [r.json() for r in answers] == baseline
    assert {r.headers["x-gourmetgram-revision"] for r in answers} == {stack.revision}
    # The shadow answered every copy; its answers reached the sink under the mirrored ids.
    assert _wait(lambda: len(sink.shadow_events()) >= len(ids)), len(sink.shadow_events())
    shadow = {h["ce-id"]: (h, b) for h, b in sink.shadow_events()}
    assert set(shadow) == set(ids)
    for headers, body in shadow.values():
        assert headers["ce-type"] == "org.kubeflow.serving.inference.response"
        assert headers["ce-shadow"] == "true" and headers["ce-specversion"] == "1.0"
        assert headers["ce-inferenceservicename"] == stack.manifest.name
        assert [p["label"] for p in json.loads(body)["predictions"]] == [bundles["candidate_class"]]
    def production() -> set[str]:
        return {h["ce-id"] for h, _ in list(sink.events)
                if h.get("ce-endpoint") == "default" and h["ce-type"].endswith("response")}

    assert _wait(lambda: set(ids) <= production())  # production's answer, under the same id
    # Captured: the shadow's answer in its own table under the mirrored sample's id, the
    # production sample untouched by it (its label is production's answer).
    from gourmetgram.loop.store import Store

    store = Store(loop["db"])
    try:
        assert _wait(lambda: len(store.shadow_comparisons()) >= len(ids), 120), store.shadow_comparisons()
        rows = {r["sample_id"]: r for r in store.shadow_comparisons()}
    finally:
        store.dispose()
    assert set(ids) <= set(rows)
    expected = {ce_id: r.json()["predictions"][0]["label"] for ce_id, r in zip(ids, answers)}
    for ce_id in ids:
        row = rows[ce_id]
        assert (row["production"], row["shadow"]) == (expected[ce_id], bundles["candidate_class"])
        assert row["production_revision"] == stack.revision and row["revision"].startswith("food11-shadow")
    detail = _detail(stack)
    assert detail["shadow"]["answered"] >= len(ids) and detail["shadow"]["percent"] == 100
    assert {p["inference_id"] for p in detail["pairs"]} >= set(ids)
    # The comparison: one class for everything is not ready for a canary.
    if bundles["stable_never"]:
        rc = main(["rollout", "shadow", "analyze", "--min-pairs", "10", "--gateway", stack.gateway_url])
        out = capsys.readouterr().out
        assert rc == 1 and "verdict: NOT READY" in out and "top-1 agreement" in out, out
        # The same from the captured samples (the loop store), as on the cluster.
        rc = main(["rollout", "shadow", "analyze", "--from-store", "--db", loop["db"], "--min-pairs", "10"])
        out = capsys.readouterr().out
        assert rc == 1 and "verdict: NOT READY" in out and "food11-shadow-predictor" in out, out


@pytest.mark.slow
def test_killing_the_shadow_under_load_fails_no_client_request(stack, bundles, images):
    pids = _ensure_shadow(stack, bundles)["pids"]
    assert set(pids) == {"triton", "transformer"}
    with BackgroundTraffic(stack.gateway_url, images, workers=3) as traffic:
        assert _wait(lambda: len(traffic.codes) >= 10)
        for pid in pids.values():
            os.killpg(pid, signal.SIGKILL)  # each service leads its own process group
        killed_at = len(traffic.codes)
        assert _wait(lambda: _detail(stack)["shadow"]["dropped"]["unreachable"] > 0, 120)
        assert _wait(lambda: len(traffic.codes) >= killed_at + 30, 120)
    assert traffic.codes and set(traffic.codes) == {200}, sorted(set(traffic.codes))


@pytest.mark.slow
def test_shadow_stop_and_clear_errors(stack, bundles, session_home, capsys, tmp_path):
    _ensure_shadow(stack, bundles)
    assert main(["rollout", "shadow", "stop", "--gateway", stack.gateway_url]) == 0
    assert _detail(stack)["shadow"] is None
    assert main(["rollout", "shadow", "status", "--gateway", stack.gateway_url]) == 0
    assert "shadow: none" in capsys.readouterr().out
    assert main(["rollout", "shadow", "stop", "--gateway", stack.gateway_url]) == 2
    assert "no shadow revision is running" in capsys.readouterr().err
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert main(["rollout", "shadow", "start", "--bundle", str(outside), "--gateway", stack.gateway_url]) == 2
    assert "outside the model store" in capsys.readouterr().err
    assert main(["rollout", "shadow", "start", "--cluster", "--bundle", "x"]) == 2
    assert "declared in the chart" in capsys.readouterr().err
    # Without the token: neither the control API nor the shadow's answers.
    r = httpx.post(f"{stack.gateway_url}/_gourmetgram/rollout", json={"action": "shadow_stop"})
    assert r.status_code == 401
    assert httpx.get(f"{stack.gateway_url}/_gourmetgram/shadow").status_code == 401


@pytest.mark.slow
def test_demo_shows_the_candidate_in_shadow_before_its_canary(stack, bundles, images, capsys):
    from gourmetgram_app.cli.commands.demo import _shadow_first

    _shadow_first(stack.gateway_url, ["--bundle", str(bundles["candidate"])], images)
    out = capsys.readouterr().out
    assert "shadow first" in out and "shadow analysis:" in out and "top-1 agreement" in out, out
    if bundles["stable_never"]:
        assert "verdict: NOT READY" in out and "shadow analysis exit 1 (not ready)" in out, out
    assert _detail(stack)["shadow"] is None  # stopped afterwards

"""Drift detector: build from the demo dataset, serve as the KServe logger sink, detect drift.

The bundle holds an UNTRAINED demo-spec classifier exported with the real
``export_bundle``: its random-weight MobileNetV2 features already separate darkened
photos from normal ones (measured: detection 10-22 samples after the shift), and keep
the in-distribution stream quiet. Events go through the real ASGI app.
"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port
from PIL import Image

from drift_detector.build import build_detector
from drift_detector.detector import (
    LABEL_PRIOR_FILE,
    SETTINGS_FILE,
    fast_thresholds,
    load_mmd,
    thresholds_of,
    torch_threads,
)
from drift_detector.events import REQUEST_TYPE, RESPONSE_TYPE
from drift_detector.server import DriftService, create_app
from gourmetgram.bundle import Bundle
from gourmetgram.data.layout import list_images

SHIFT_DETECTION_BOUND = 60  # samples after the shift; measured 10-22 (window 30) over 10 orderings

CONTRACT_METRICS = (
    "drift_test_stat", "drift_threshold", "drift_events_total", "drift_state",
    "label_drift_statistic", "drift_events_received_total", "drift_events_processed_total",
    "drift_events_dropped_total", "drift_backlog",
)


def headers(kind: str = REQUEST_TYPE, event_id: str = "id-1", content_type: str = "application/json") -> dict:
    """The header set the KServe agent (pkg/logger/worker.go) sends, binary mode."""
    return {
        "ce-specversion": "1.0", "ce-id": event_id, "ce-type": kind,
        "ce-source": "http://localhost:9081/", "ce-time": "2026-11-24T12:00:00Z",
        "ce-inferenceservicename": "food11", "ce-namespace": "gourmetgram",
        "ce-component": "transformer", "ce-endpoint": "default", "content-type": content_type,
    }


def v1_request(images: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"image": {"b64": base64.b64encode(b).decode()}} for b in images]}).encode()


def v2_request(images: list[bytes]) -> bytes:
    return json.dumps({"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                                   "data": [base64.b64encode(b).decode() for b in images]}]}).encode()


def metric_value(text: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


def darken(data: bytes, factor: float = 0.4) -> bytes:
    """Under-exposed photos (night shots, a new camera): the shift the test injects."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = io.BytesIO()
    Image.eval(image, lambda v: int(v * factor)).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def bundle(demo_dataset, tmp_path_factory) -> Path:
    import torch

    from gourmetgram.classes import read_class_names
    from gourmetgram.config import load_config
    from gourmetgram.export import export_bundle
    from gourmetgram.model import Classifier, ModelSpec

    cfg = load_config("demo")
    n_classes = sum(1 for p in (demo_dataset / "training").iterdir() if p.is_dir())
    names = read_class_names(demo_dataset, n_classes)
    torch.manual_seed(0)
    spec = ModelSpec(class_names=tuple(names), image_size=cfg.model.image_size,
                     width_mult=cfg.model.width_mult, dropout=cfg.model.dropout, arch=cfg.model.arch)
    path = tmp_path_factory.mktemp("ddbundle") / "bundle"
    export_bundle(Classifier(spec).eval(), path, cfg.export)
    started = time.perf_counter()
    build_detector(path, demo_dataset, seed=0)
    print(f"detector build: {time.perf_counter() - started:.1f}s")
    return path


@pytest.fixture(scope="module")
def loaded(bundle):
    return load_mmd(bundle)


@pytest.fixture()
def service(bundle, loaded):
    loaded[0].reset_state()
    svc = DriftService(bundle, loaded=loaded)
    yield svc
    svc.stop()


@pytest.fixture()
def client(service):
    from starlette.testclient import TestClient

    with TestClient(create_app(service)) as c:
        yield c


@pytest.fixture(scope="module")
def eval_images(demo_dataset) -> list[bytes]:
    items = list_images(demo_dataset / "evaluation")
    order = np.random.default_rng(0).permutation(len(items))
    return [items[i][0].read_bytes() for i in order]


def test_vectorised_bootstrap_equals_alibi():
    """The fast threshold bootstrap reproduces alibi-detect's own, draw for draw."""
    import torch
    from alibi_detect.cd import MMDDriftOnline

    x = np.random.default_rng(1).normal(size=(120, 8)).astype(np.float32)
    results = []
    for fast in (False, True):
        torch.manual_seed(7)
        with fast_thresholds(fast), torch_threads(1):
            cd = MMDDriftOnline(x, ert=50, window_size=6, backend="pytorch", n_bootstraps=400,
                                x_ref_preprocessed=True, verbose=False, device="cpu")
        results.append(thresholds_of(cd))
    assert len(results[1]) == 6
    np.testing.assert_allclose(results[1], results[0], rtol=1e-4)


def test_build_writes_detector_and_load_reproduces_thresholds(bundle, loaded, demo_dataset):
    folder = Bundle(bundle).detector_dir
    assert (folder / "mmd" / "config.toml").is_file()
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    cd, loaded_settings, seconds = loaded
    assert "threshold_mismatch" not in loaded_settings
    np.testing.assert_allclose(thresholds_of(cd), settings["thresholds"], rtol=1e-4)
    assert settings["embedding_dim"] == cd._detector.x_ref.shape[1]
    prior = json.loads((folder / LABEL_PRIOR_FILE).read_text())
    counts = np.bincount([c for _, c in list_images(demo_dataset / "training")])
    assert prior["counts"] == counts.tolist()
    assert abs(sum(prior["prior"]) - 1) < 1e-9
    print(f"build timings {settings['timings']}, load {seconds:.1f}s")


@pytest.mark.slow
def test_in_distribution_quiet_then_shift_detected(client, service, eval_images):
    for i, image in enumerate(eval_images):
        r = client.post("/", headers=headers(event_id=f"in-{i}"), content=v1_request([image]))
        assert r.status_code == 202, r.text
    assert service.wait_idle(120)
    status = client.get("/status").json()
    n_in = len(eval_images)
    assert n_in >= 300 and status["t"] == n_in and status["processed"] == n_in
    assert status["drift_flags"] == 0 and status["is_drift"] is False
    assert status["test_stat"] < status["threshold"]

    started = time.perf_counter()
    for i, image in enumerate(eval_images[:SHIFT_DETECTION_BOUND + 40]):
        client.post("/", headers=headers(event_id=f"dark-{i}"), content=v1_request([darken(image)]))
    assert service.wait_idle(120)
    status = client.get("/status").json()
    assert status["first_drift_t"] is not None, "darkened images were never flagged"
    delay = status["first_drift_t"] - n_in
    print(f"drift detected {delay} samples after the shift ({time.perf_counter() - started:.1f}s for 100)")
    assert 0 < delay <= SHIFT_DETECTION_BOUND
    metrics = client.get("/metrics").text
    assert "drift_events_total 0.0" not in metrics


def test_v1_v2_requests_and_responses_decoded(client, service, eval_images, bundle):
    r = client.post("/", headers=headers(), content=v1_request(eval_images[:3]))
    assert r.status_code == 202 and r.json()["id"] == "id-1"
    r = client.post("/", headers=headers(event_id="v2"), content=v2_request(eval_images[3:5]))
    assert r.status_code == 202
    # A raw image body (the logger keeps the request's Content-Type).
    r = client.post("/", headers=headers(event_id="raw", content_type="image/jpeg"), content=eval_images[5])
    assert r.status_code == 202
    assert service.wait_idle(30)
    assert client.get("/status").json()["t"] == 6  # 3 + 2 + 1 images reached the MMD

    v1 = {"predictions": [{"class_index": 3, "label": "three", "confidence": 0.9, "top_k": []}] * 30}
    v2_index = {"outputs": [{"name": "class_index", "datatype": "INT64", "shape": [10], "data": [3] * 10}]}
    logits = np.full((20, 10), -1.0, np.float32)
    logits[:, 3] = 5.0
    v2_logits = {"outputs": [{"name": "logits", "datatype": "FP32", "shape": [20, 10],
                              "data": logits.ravel().tolist()}]}
    for i, payload in enumerate((v1, v2_index, v2_logits)):
        r = client.post("/", headers=headers(RESPONSE_TYPE, f"r{i}"), content=json.dumps(payload))
        assert r.status_code == 202, r.text
    assert service.wait_idle(30)
    label = client.get("/status").json()["label_drift"]
    assert label["window"] == 60 and label["distribution"][3] == 1.0
    prior = json.loads((Bundle(bundle).detector_dir / LABEL_PRIOR_FILE).read_text())["prior"]
    # All predictions in one class: total-variation distance = 1 - prior of that class.
    assert label["statistic"] == pytest.approx(1 - prior[3], abs=1e-6)
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "label_drift_statistic") == pytest.approx(1 - prior[3], abs=1e-6)
    assert 'drift_events_processed_total{type="response"} 3.0' in metrics


@pytest.mark.parametrize("hdrs,body,reason", [
    ({"content-type": "application/json"}, b"{}", "ce-specversion"),
    ({**headers(), "ce-specversion": "0.3"}, b"{}", "specversion"),
    ({**headers(), "ce-type": "com.example.other"}, b"{}", "ce-type"),
    (headers(), b"{not json", "not valid JSON"),
    (headers(), b'{"instances": []}', "non-empty"),
    (headers(), b'{"instances": [{"image": {"b64": "@@@"}}]}', "base64"),
    (headers(), b'{"foo": 1}', '"instances"'),
    (headers(RESPONSE_TYPE), b'{"predictions": [{"confidence": 0.5}]}', "class_index"),
    (headers(content_type="text/plain"), b"hello", "not JSON"),
])
def test_malformed_events_get_400_and_are_counted(client, service, hdrs, body, reason):
    r = client.post("/", headers=hdrs, content=body)
    assert r.status_code == 400 and reason in r.json()["error"]
    assert service.invalid == 1 and service.received == 0
    assert "drift_events_invalid_total 1.0" in client.get("/metrics").text
    assert client.get("/health").status_code == 200


def test_undecodable_image_is_counted_not_fatal(client, service, eval_images):
    payload = v1_request([b"\xff\xd8 not really a jpeg", eval_images[0]])
    assert client.post("/", headers=headers(), content=payload).status_code == 202
    assert service.wait_idle(30)
    assert client.get("/status").json()["t"] == 1
    assert "drift_images_invalid_total 1.0" in client.get("/metrics").text


def test_a_redelivered_event_is_processed_once(client, service, eval_images):
    """Delivery is at least once (the logger and the broker retry): a repeat of an accepted
    event is answered 202 and counted, not fed to the online MMD twice."""
    body = v1_request(eval_images[:2])
    assert client.post("/", headers=headers(event_id="again"), content=body).status_code == 202
    assert client.post("/", headers=headers(event_id="again"), content=body).status_code == 202
    answer = json.dumps({"predictions": [{"class_index": 3, "label": "three", "confidence": 0.9, "top_k": []}]})
    # the same id as a response, and the shadow's response to it, are other events
    assert client.post("/", headers=headers(RESPONSE_TYPE, "again"), content=answer).status_code == 202
    shadow = {**headers(RESPONSE_TYPE, "again"), "ce-endpoint": "shadow"}
    assert client.post("/", headers=shadow, content=answer).status_code == 202
    assert service.wait_idle(30)
    status = client.get("/status").json()
    assert (status["t"], status["received"], status["duplicates"]) == (2, 3, 1)
    assert "drift_events_duplicate_total 1.0" in client.get("/metrics").text


def test_full_queue_drops_and_counts_without_blocking(bundle, loaded, eval_images):
    from starlette.testclient import TestClient

    svc = DriftService(bundle, loaded=loaded, max_queue=3, start=False)  # no worker: queue fills
    with TestClient(create_app(svc)) as c:
        codes = [c.post("/", headers=headers(event_id=str(i)), content=v1_request([eval_images[0]])).status_code
                 for i in range(3)]
        # No worker runs, so an ingest that waited for room would never return: a 503 proves it does not wait.
        r = c.post("/", headers=headers(event_id="x"), content=v1_request([eval_images[0]]))
        assert codes == [202] * 3 and r.status_code == 503
        text = c.get("/metrics").text
        assert "drift_events_dropped_total 1.0" in text and "drift_backlog 3.0" in text
        assert c.get("/status").json()["dropped"] == 1


def test_metrics_expose_the_contract_names(client):
    text = client.get("/metrics").text
    for name in CONTRACT_METRICS:
        assert f"\n{name}" in text or text.startswith(name), f"{name} missing from /metrics"
    assert client.get("/health").json() == {"status": "ok"}


def test_cli_bad_input_exits_2(tmp_path, capsys):
    from gourmetgram_app.cli.main import main

    assert main(["detector", "build", "--bundle", str(tmp_path / "none"), "--dataset", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["detector", "build", "--bundle", str(tmp_path), "--dataset", str(tmp_path),
                 "--ert", "1000", "--n-bootstraps", "100"]) == 2


def test_real_uvicorn_server_accepts_logger_events(service, eval_images):
    """Over a real socket, as the KServe agent / local gateway sends them."""
    import threading

    import httpx
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        r = httpx.post(base + "/", headers=headers(event_id="sock"), content=v2_request(eval_images[:2]))
        assert r.status_code == 202 and r.json() == {"accepted": True, "id": "sock"}
        assert httpx.post(base + "/", headers={"content-type": "application/json"}, content=b"{}").status_code == 400
        assert service.wait_idle(30)
        text = httpx.get(base + "/metrics").text
        assert 'drift_events_received_total{type="request"} 1.0' in text
        assert metric_value(text, "drift_events_processed_total") == 1.0
        assert httpx.get(base + "/health").status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)


# --- drift that says what changed: image-property profiles (drift_detector.profile) ---------------

def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92)
    return out.getvalue()


def test_image_properties_measure_what_they_say():
    from PIL import ImageFilter

    from drift_detector.profile import image_properties

    rng = np.random.default_rng(0)
    texture = Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    bright, dark = image_properties(_jpeg(texture)), image_properties(darken(_jpeg(texture), 0.3))
    assert dark["brightness"] < 0.4 * bright["brightness"] and dark["contrast"] < bright["contrast"]
    blurred = image_properties(_jpeg(texture.filter(ImageFilter.GaussianBlur(3))))
    assert blurred["sharpness"] < bright["sharpness"] / 10
    grey = image_properties(_jpeg(texture.convert("L").convert("RGB")))
    assert grey["colourfulness"] < bright["colourfulness"] / 5
    assert bright["size"] == pytest.approx(160 * 120 / 1e6) and bright["aspect_ratio"] == pytest.approx(160 / 120)
    from gourmetgram.errors import BadInput

    with pytest.raises(BadInput):
        image_properties(b"not an image")


def test_the_profile_report_is_refreshed_at_most_once_an_interval_and_when_quiet(bundle, loaded, eval_images,
                                                                                 monkeypatch):
    """The KS report was three quarters of the worker's CPU when made per event; it is made when
    the interval has passed or the queue runs dry, and wait_idle returns a current one."""
    import drift_detector.server as server
    from drift_detector.events import InferenceEvent

    monkeypatch.setattr(server, "PROFILE_INTERVAL_S", 3600.0)  # while events come: only the first batch
    loaded[0].reset_state()
    svc = DriftService(bundle, loaded=loaded)
    assert svc.profile is not None
    calls = []
    real = svc.profile.report
    svc.profile.report = lambda: calls.append(1) or real()  # type: ignore[method-assign]
    try:
        for i, image in enumerate(eval_images[:60]):  # one event per batch, as at a light load
            svc.submit(InferenceEvent(id=f"e-{i}", type=REQUEST_TYPE, source="test", images=[image]))
            while svc.processed <= i:
                time.sleep(0.002)
        assert svc.wait_idle(60)
        assert svc.profile_report["window"] == 60  # current once quiet
        assert len(calls) < 10  # not one per event (60)
    finally:
        svc.stop()


def test_the_service_names_the_property_and_class_that_moved(client, service, bundle, eval_images):
    """Night shots (the demo cycle's transform): brightness is named first, in /status and in
    the metrics the drift alert's annotation reads; the class the answers pile into is named."""
    from drift_detector.profile import PROFILE_FILE
    from gourmetgram_app.local.simulate import night_shot

    assert (Bundle(bundle).detector_dir / PROFILE_FILE).is_file()  # written by the build
    photos = eval_images[:60]
    for i, image in enumerate(photos):
        client.post("/", headers=headers(event_id=f"day-{i}"), content=v1_request([image]))
    assert service.wait_idle(60)
    quiet = client.get("/status").json()["profile"]
    assert quiet["window"] == 60 and quiet["moved"]["properties"] == []  # nothing moved in distribution
    for i, image in enumerate(photos):  # the same photos as night shots, all answered "one"
        client.post("/", headers=headers(event_id=f"night-{i}"), content=v1_request([night_shot(image)]))
        answer = {"predictions": [{"class_index": 1, "label": "one", "confidence": 0.97}]}
        client.post("/", headers=headers(RESPONSE_TYPE, f"night-{i}"), content=json.dumps(answer))
    assert service.wait_idle(60)
    profile = client.get("/status").json()["profile"]
    props = profile["properties"]
    assert max(props, key=lambda p: props[p]["ks"]) == "brightness"
    assert props["brightness"]["shift_sd"] < -1 and props["brightness"]["p_value"] < 1e-6
    assert profile["moved"]["properties"][0].startswith("brightness down")
    assert profile["classes"]["one"]["n"] == 60 and profile["classes"]["one"]["share"] == 1.0
    assert profile["moved"]["classes"][0].startswith("one: 100% of answers")
    assert len(profile["atypical"]) == 6 and all(a["sample_id"].startswith("night-") for a in profile["atypical"])
    metrics = client.get("/metrics").text
    assert 'drift_property_shift{property="brightness"}' in metrics
    from prometheus_client.parser import text_string_to_metric_families

    shifts = {s.labels["property"]: s.value for f in text_string_to_metric_families(metrics)
              for s in f.samples if s.name == "drift_property_shift"}
    assert max(shifts, key=shifts.get) == "brightness" and shifts["brightness"] > 0.5

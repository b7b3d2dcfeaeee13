"""The local serving stack end to end: real PyTriton/tritonserver, kserve transformer, gateway.

An untrained demo-spec model is exported with the real exporter; predictions through the
gateway must match the in-process PyTorch model on evaluation images. The stack is started
once per module (about 20 s); the last tests kill Triton and stop everything.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from gourmetgram import metric_names as qp
from gourmetgram.bundle import Bundle
from gourmetgram.calibration import Calibration
from gourmetgram.config import ExportConfig
from gourmetgram.constants import REPO_ROOT
from gourmetgram.data.demo import DEMO_CLASSES
from gourmetgram.data.layout import list_images
from gourmetgram.export import export_bundle
from gourmetgram.model import ModelSpec, build_model, predict_logits
from gourmetgram.preprocessing import preprocess_bytes, softmax
from gourmetgram_app.local.manifests import load_stage_manifest
from gourmetgram_app.local.ports import Ports, port_in_use
from gourmetgram_app.local.stack import GATEWAY, TRITON, LocalStack

pytestmark = pytest.mark.slow
MODEL = "food11"
N_EVAL = 60


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def v1(url: str, blobs: list[bytes]) -> httpx.Response:
    body = {"instances": [{"image": {"b64": b64(b)}} for b in blobs]}
    return httpx.post(f"{url}/v1/models/{MODEL}:predict", json=body, timeout=60)


def v2(url: str, blobs: list[bytes]) -> httpx.Response:
    body = {"inputs": [{"name": "image", "shape": [len(blobs)], "datatype": "BYTES",
                        "data": [b64(b) for b in blobs]}]}
    return httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=60)


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? ([0-9.eE+-]+)$", line)
        if not m:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def processes_in(cwd: Path) -> list[int]:
    """PIDs whose working directory is ``cwd`` (every stack child and their children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == cwd:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


# The bundle's calibration, as export writes it: a temperature far from 1, so an answer that skipped
# it shows (the untrained model's logits are tiny: T < 1 sharpens them), and an OOD threshold well
# clear of their energies (about -2.3 = -log 10), so no flag sits on the edge.
CALIBRATION = Calibration(temperature=0.05, ood_threshold=-2.0, ood_pass_rate=0.95,
                          atc_thresholds={"atc": 0.2, "atc_prior": 0.2, "atc_energy": 2.3, "atc_energy_prior": 2.3},
                          class_prior=(0.1,) * 10, validation_accuracy=0.5, n_validation=10, fitted_on="test")


@pytest.fixture(scope="module")
def model_and_bundle(tmp_path_factory):
    torch.manual_seed(0)
    spec = ModelSpec(class_names=DEMO_CLASSES, image_size=64, width_mult=0.5)
    model = build_model(spec).eval()
    bundle = tmp_path_factory.mktemp("models") / "demo-1"
    export_bundle(model, bundle, ExportConfig(max_batch_size=16, preferred_batch_sizes=(4, 8)),
                  calibration=CALIBRATION)
    return model, bundle


@pytest.fixture(scope="module")
def eval_images(demo_dataset) -> list[tuple[bytes, int]]:
    items = list_images(demo_dataset / "evaluation")
    step = max(1, len(items) // N_EVAL)
    return [(path.read_bytes(), label) for path, label in items[::step][:N_EVAL]]


@pytest.fixture(scope="module")
def stack(model_and_bundle, tmp_path_factory):
    _, bundle = model_and_bundle
    with LocalStack(bundle, "staging", Ports.free(),
                    log_dir=tmp_path_factory.mktemp("stacklogs")) as running:
        yield running


def test_predictions_match_pytorch(stack, model_and_bundle, eval_images):
    model, _ = model_and_bundle
    blobs = [b for b, _ in eval_images]
    served = []
    for i in range(0, len(blobs), 16):
        r = v1(stack.gateway_url, blobs[i:i + 16])
        assert r.status_code == 200, r.text
        served += r.json()["predictions"]
    batch = np.stack([preprocess_bytes(b, 64) for b in blobs])
    # the in-process model with the bundle's calibration: what the transformer must answer
    in_process = Bundle(model_and_bundle[1]).load_calibration().score(predict_logits(model, batch).numpy())
    expected = in_process.predicted
    same = sum(p["class_index"] == int(e) for p, e in zip(served, expected))
    assert len(served) == len(blobs) >= 50
    assert same / len(blobs) >= 0.99
    confidences = np.array([p["confidence"] for p in served])
    np.testing.assert_allclose(confidences, in_process.confidence, atol=1e-4)  # temperature-scaled
    assert np.abs(confidences - softmax(predict_logits(model, batch).numpy().astype(np.float64)).max(1)).max() > 0.01
    np.testing.assert_allclose([p["ood_score"] for p in served], in_process.energy, atol=1e-3)
    flags = [p["in_distribution"] for p in served]
    assert flags == in_process.in_distribution.tolist()
    for p in served:
        assert p["label"] == DEMO_CLASSES[p["class_index"]]
        assert p["top_k"][0]["class_index"] == p["class_index"] and len(p["top_k"]) >= 2


def test_v2_agrees_with_v1(stack, eval_images):
    blobs = [b for b, _ in eval_images[:5]]
    r1, r2 = v1(stack.gateway_url, blobs), v2(stack.gateway_url, blobs)
    assert r1.status_code == 200 and r2.status_code == 200, (r1.text, r2.text)
    outputs = {o["name"]: o["data"] for o in r2.json()["outputs"]}
    assert outputs["label"] == [p["label"] for p in r1.json()["predictions"]]
    np.testing.assert_allclose(outputs["confidence"],
                               [p["confidence"] for p in r1.json()["predictions"]], atol=1e-5)


def test_kserve_client_works_through_the_gateway(stack, eval_images):
    """KServe's own client (kserve.InferenceRESTClient, v1 and v2) against the gateway as it
    would against an InferenceService: server live and ready, model ready, infer."""
    import asyncio

    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    blobs = [b for b, _ in eval_images[:3]]

    async def drive():
        v1c = InferenceRESTClient(RESTConfig(protocol="v1", timeout=60))
        v2c = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
        url = stack.gateway_url
        try:
            checks = [await v1c.is_server_live(url), await v1c.is_model_ready(url, MODEL),
                      await v2c.is_server_live(url), await v2c.is_server_ready(url),
                      await v2c.is_model_ready(url, MODEL)]
            v1_out = await v1c.infer(url, {"instances": [{"image": {"b64": b64(b)}} for b in blobs]},
                                     model_name=MODEL)
            request = InferRequest(model_name=MODEL, infer_inputs=[
                InferInput("image", [len(blobs)], "BYTES", [b64(b) for b in blobs])])
            v2_out = await v2c.infer(url, request, model_name=MODEL)
        finally:
            await v1c.close()
            await v2c.close()
        return checks, v1_out, v2_out

    checks, v1_out, v2_out = asyncio.run(drive())
    assert checks == [True] * 5
    assert len(v1_out["predictions"]) == len(blobs)
    outputs = {o.name: o.data for o in v2_out.outputs}
    assert outputs["label"] == [p["label"] for p in v1_out["predictions"]]
    assert httpx.get(stack.gateway_url + "/").json() == {"status": "alive"}  # KServe's answer on /


def test_triton_answers_tritonclient_directly(stack, model_and_bundle, eval_images):
    import tritonclient.http as httpclient

    model, _ = model_and_bundle
    x = np.stack([preprocess_bytes(b, 64) for b, _ in eval_images[:8]])
    client = httpclient.InferenceServerClient(url=stack.triton_url.removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready(MODEL)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput("logits")])
    np.testing.assert_allclose(result.as_numpy("logits"), predict_logits(model, x).numpy(), atol=1e-4)
    config = client.get_model_config(MODEL)
    assert config["max_batch_size"] == 16  # from the exported config.pbtxt
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    metrics = httpx.get(stack.triton_metrics_url).text
    assert metric_sum(metrics, "nv_inference_request_success", model=MODEL) >= 1


@pytest.mark.parametrize("body, headers, status", [
    (b'{"instances": [{"image": {"b64": "bm90IGFuIGltYWdl"}}]}', {"content-type": "application/json"}, 400),
    (b'{"instances": [{"image": {"b64": "%%%"}}]}', {"content-type": "application/json"}, 400),
    (b'{"inputs_wrong": []}', {"content-type": "application/json"}, 400),
    (b"this is not json", {"content-type": "text/plain"}, 400),
])
def test_bad_input_is_4xx(stack, body, headers, status):
    r = httpx.post(f"{stack.gateway_url}/v1/models/{MODEL}:predict", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["error"]


def test_unknown_model_is_404(stack, eval_images):
    r = httpx.post(f"{stack.gateway_url}/v1/models/nope:predict",
                   json={"instances": [{"image": {"b64": b64(eval_images[0][0])}}]})
    assert r.status_code == 404


def test_metrics_count_what_was_served(stack, eval_images):
    labels = {qp.NAMESPACE: stack.manifest.namespace, qp.REVISION: stack.revision}
    before_gw = httpx.get(f"{stack.gateway_url}/metrics").text
    before_tf = httpx.get(f"{stack.transformer_url}/metrics").text
    blobs = [b for b, _ in eval_images[:7]]
    assert v1(stack.gateway_url, blobs[:3]).status_code == 200
    assert v2(stack.gateway_url, blobs[3:]).status_code == 200
    assert v1(stack.gateway_url, [b"junk"]).status_code == 400
    after_gw = httpx.get(f"{stack.gateway_url}/metrics").text
    after_tf = httpx.get(f"{stack.transformer_url}/metrics").text

    def delta(before, after, name, **extra):
        return metric_sum(after, name, **extra) - metric_sum(before, name, **extra)

    # queue-proxy's (Knative 1.21) request histogram: its _count is the request count
    assert delta(before_gw, after_gw, qp.REQUEST_COUNT, **{qp.STATUS_CODE: "200"}, **labels) == 2
    assert delta(before_gw, after_gw, qp.REQUEST_COUNT, **{qp.STATUS_CODE: "400"}, **labels) == 1
    assert delta(before_gw, after_gw, qp.REQUEST_COUNT, **labels) == 3
    assert delta(before_tf, after_tf, "predicted_class_total", model_name=MODEL,
                 revision=stack.revision) == 7
    assert f"# TYPE {qp.REQUEST_DURATION} histogram" in after_gw


def test_predict_cli_prints_a_table(stack, eval_images, tmp_path, capsys):
    from gourmetgram_app.cli.main import main

    image = tmp_path / "dish.jpg"
    image.write_bytes(eval_images[0][0])
    assert main(["predict", str(image), "--url", stack.gateway_url]) == 0
    out = capsys.readouterr().out
    assert "LABEL" in out and "dish.jpg" in out
    assert any(name in out for name in DEMO_CLASSES)
    assert main(["predict", str(image), "--url", stack.gateway_url, "--protocol", "v2"]) == 0
    assert main(["predict", str(tmp_path / "missing.jpg"), "--url", stack.gateway_url]) == 2
    assert "missing.jpg" in capsys.readouterr().err


def test_predictor_down_is_503_then_clean_shutdown(stack, eval_images):
    """Runs last on the shared stack: kill Triton, expect 503s, then stop everything."""
    blob = eval_images[0][0]
    stack.stop_service(TRITON)  # stopped for good: stop_service is not a crash, nothing restarts
    r = v1(stack.gateway_url, [blob])
    assert r.status_code == 503 and "predictor" in r.json()["error"]
    assert r.headers["retry-after"] == "1"
    gateway = stack.services[GATEWAY]
    stack.stop_service("transformer")
    r = v1(stack.gateway_url, [blob])  # the revision is not ready: the gateway answers itself
    assert r.status_code == 503 and "is not ready" in r.json()["error"], r.text
    assert not stack.services[TRITON].alive() and not stack.services["transformer"].alive()
    stack.stop()
    assert not gateway.alive()
    for port in stack.ports.named().values():
        assert not port_in_use(stack.host, port), port
    assert processes_in(stack.log_dir.resolve()) == []


def test_port_in_use_and_missing_model_exit_2(model_and_bundle, session_home, tmp_path, capsys):
    from gourmetgram_app.cli.main import main

    _, bundle = model_and_bundle
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--bundle", str(bundle), "--free-ports", "--ports", f"gateway={port}"]) == 2
        assert f"gateway={port}" in capsys.readouterr().err
    (tmp_path / "empty" / "triton").mkdir(parents=True)
    assert main(["serve", "--bundle", str(tmp_path / "empty"), "--free-ports"]) == 2
    err = capsys.readouterr().err
    assert "is not an exported Triton model repository" in err and "config.pbtxt" in err


def test_serve_cli_stops_everything_on_sigterm(model_and_bundle, tmp_path):
    _, bundle = model_and_bundle
    home = tmp_path / "home"
    ports = Ports.free()
    argv = [sys.executable, "-m", "gourmetgram_app.cli.main", "serve", "--bundle", str(bundle),
            "--ports", ",".join(f"{k}={v}" for k, v in ports.named().items())]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, GOURMETGRAM_HOME=str(home)), cwd=REPO_ROOT)
    lines = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Ctrl-C to stop" in line or not line:
                break
        assert "Ctrl-C to stop" in "".join(lines), "".join(lines)
        manifest = load_stage_manifest("staging")
        r = httpx.get(f"http://127.0.0.1:{ports.gateway}/_gourmetgram/rollout")
        assert r.json()["inferenceservice"] == manifest.name
        log_dir = (home / "logs" / "serve-staging").resolve()
        assert len(processes_in(log_dir)) >= 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopped." in proc.stdout.read()
    assert processes_in(log_dir) == []
    for port in ports.named().values():
        assert not port_in_use("127.0.0.1", port), port

"""The KServe transformer, served by kserve's real REST app, against a real v2 predictor.

The predictor is a second kserve ModelServer (subprocess, free port) running ONNX Runtime
on an exported, untrained gourmetgram Classifier; it records the tensor it receives so the
test can prove the transformer sends exactly the shared preprocessing's output.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import free_port, wait_http
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from gourmetgram.calibration import Calibration, energy_score
from gourmetgram.preprocessing import decode_image, preprocess, preprocess_batch, softmax

MODEL = "food11"
IMAGE_SIZE = 64
CLASS_NAMES = ("apple", "bagel", "cake", "dumpling", "egg", "fries", "gnocchi", "ham", "icecream", "jam")
TEMPERATURE = 2.0  # the test bundle's calibration: far from 1, so an uncalibrated answer shows

PREDICTOR_SCRIPT = textwrap.dedent('''
    """A real v2 predictor: kserve ModelServer + ONNX Runtime; records its last input."""
    import os
    import numpy as np
    import onnxruntime as ort
    from kserve import Model, ModelServer
    from kserve.protocol.infer_type import InferOutput, InferResponse

    class OnnxModel(Model):
        def __init__(self, name, path, record):
            super().__init__(name)
            self.path, self.record = path, record

        def load(self):
            self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
            self.ready = True
            return True

        def get_input_types(self):
            return [{"name": "input", "datatype": "FP32", "shape": [-1, 3, %(size)d, %(size)d]}]

        def get_output_types(self):
            return [{"name": "logits", "datatype": "FP32", "shape": [-1, %(classes)d]}]

        def predict(self, payload, headers=None, response_headers=None):
            x = payload.get_input_by_name("input").as_numpy()
            np.save(self.record + ".tmp.npy", x)
            os.replace(self.record + ".tmp.npy", self.record)
            logits = self.session.run(["logits"], {"input": x})[0]
            out = InferOutput("logits", list(logits.shape), "FP32", logits)
            return InferResponse(payload.id or "", self.name, [out])

    model = OnnxModel("%(name)s", os.environ["ONNX_PATH"], os.environ["RECORD_PATH"])
    model.load()
    ModelServer(http_port=int(os.environ["PORT"]), enable_grpc=False).start([model])
''') % {"size": IMAGE_SIZE, "classes": len(CLASS_NAMES), "name": MODEL}


def wait_grpc(address: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """kserve starts its gRPC server beside the HTTP one: HTTP ready says nothing about gRPC."""
    import grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
            try:
                grpc.channel_ready_future(channel).result(timeout=1.0)
                return
            except grpc.FutureTimeoutError:
                pass
    raise TimeoutError(f"gRPC {address} not ready after {timeout}s")


def image_bytes(seed: int, size: tuple[int, int] = (160, 120), fmt: str = "JPEG") -> bytes:
    """A smooth random colour image (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    small = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(small).resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def v1(*images: bytes) -> dict:
    return {"instances": [{"image": {"b64": b64(i)}} for i in images]}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def onnx_path(tmp_path_factory) -> Path:
    """An exported untrained Classifier (input 'input', output 'logits', dynamic batch)."""
    import torch

    from gourmetgram.model import Classifier, ModelSpec

    torch.manual_seed(0)
    spec = ModelSpec(class_names=CLASS_NAMES, image_size=IMAGE_SIZE, width_mult=0.5)
    model = Classifier(spec).eval()
    torch.nn.init.normal_(model.classifier[1].weight, std=2.0)  # input-dependent classes
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    torch.onnx.export(
        model, torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE), str(path),
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
    )
    (path.parent / "model_spec.json").write_text(json.dumps(spec.to_dict()))
    # calibration.json beside it, as export writes it: the OOD threshold at the median energy of
    # the test images, so some are in distribution and some are not
    import onnxruntime as ort

    images = [image_bytes(i) for i in range(1, 9)]
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input": preprocess_batch(images, IMAGE_SIZE)})[0]
    median = float(np.median(energy_score(logits)))
    Calibration(temperature=TEMPERATURE, ood_threshold=median, ood_pass_rate=0.5,
                atc_thresholds={"atc": 0.5, "atc_prior": 0.5, "atc_energy": -median, "atc_energy_prior": -median},
                class_prior=(0.1,) * 10, validation_accuracy=0.9, n_validation=8,
                fitted_on="test").write(path.parent / "calibration.json")
    return path


@pytest.fixture(scope="session")
def session(onnx_path):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def predictor(onnx_path, tmp_path_factory):
    """(host:port, path of the recorded last input) of a running v2 predictor."""
    work = tmp_path_factory.mktemp("predictor")
    script = work / "predictor.py"
    script.write_text(PREDICTOR_SCRIPT)
    port = free_port()
    env = {**os.environ, "PORT": str(port), "ONNX_PATH": str(onnx_path),
           "RECORD_PATH": str(work / "last_input.npy")}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready", proc)
        yield f"127.0.0.1:{port}", work / "last_input.npy"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="session")
def client(predictor, onnx_path):
    """kserve's real FastAPI app serving the transformer (built like __main__ builds it),
    plus a second transformer 'offline' whose predictor address refuses connections."""
    from fastapi.testclient import TestClient
    from kserve import ModelServer
    from kserve import model_server as kserve_model_server
    from kserve.protocol.rest.server import RESTServer

    from food_transformer.__main__ import build_model, build_parser
    from food_transformer.server import use_transformer_dataplane

    def make(name: str, host: str, *extra: str):
        argv = ["--model_name", name, "--predictor_host", host, "--protocol", "v2", *extra]
        return build_model(build_parser().parse_args(argv), argv)

    # Image size and labels come from the predictor's metadata + model_spec.json.
    model, config = make(MODEL, predictor[0], "--model_spec", str(onnx_path.parent))
    offline, _ = make("offline", f"127.0.0.1:{free_port()}", "--image_size", str(IMAGE_SIZE),
                      "--class_names", ",".join(CLASS_NAMES), "--revision", "test")
    server = ModelServer(enable_grpc=False, predictor_config=config)
    use_transformer_dataplane(server)  # what BoundModelServer does
    server.register_model(model)
    server.register_model(offline)
    RESTServer("kserve.model_server:app", server.dataplane, server.model_repository_extension,
               http_port=0).create_application()
    from food_transformer.server import add_middlewares

    add_middlewares(kserve_model_server.app, 64 * 1024 * 1024)
    with TestClient(kserve_model_server.app) as c:
        yield c
        for m in (model, offline):
            c.portal.call(m.aclose)  # type: ignore[union-attr]  # set inside the with block


def expected_logits(session, images: list[bytes]) -> np.ndarray:
    """ONNX Runtime run here on the SAME shared preprocessing."""
    return session.run(["logits"], {"input": preprocess_batch(images, IMAGE_SIZE)})[0]


def expected_probs(session, images: list[bytes]) -> np.ndarray:
    """The in-process model's answer: the test bundle's temperature applied to its logits."""
    return softmax(expected_logits(session, images).astype(np.float64) / TEMPERATURE)


def bundle_calibration(onnx_path: Path) -> Calibration:
    return Calibration.read(onnx_path.parent / "calibration.json")


def metric(text: str, sample: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


# ---------------------------------------------------------------- behaviour


def test_v1_predictions_match_onnxruntime(client, session):
    images = [image_bytes(1), image_bytes(2, (90, 200)), image_bytes(3, (64, 64), "PNG")]
    response = client.post(f"/v1/models/{MODEL}:predict", json=v1(*images))
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    probs = expected_probs(session, images)
    uncalibrated = softmax(expected_logits(session, images).astype(np.float64))
    assert len(predictions) == 3
    for pred, row, raw in zip(predictions, probs, uncalibrated):
        assert pred["class_index"] == int(np.argmax(row))
        assert pred["label"] == CLASS_NAMES[pred["class_index"]]
        assert pred["confidence"] == pytest.approx(row.max(), abs=1e-5)  # temperature-scaled
        assert abs(pred["confidence"] - raw.max()) > 1e-3  # ... not the raw softmax
        top = pred["top_k"]
        assert len(top) == 3 and top[0]["class_index"] == pred["class_index"]
        confs = [t["confidence"] for t in top]
        assert confs == sorted(confs, reverse=True)
        assert sum(confs) <= 1.0 + 1e-6
        assert [t["label"] for t in top] == [CLASS_NAMES[t["class_index"]] for t in top]


def test_both_protocols_flag_out_of_distribution_images(client, session, onnx_path):
    """ood_score is the energy of the logits; in_distribution compares it with the bundle's
    threshold (the test bundle's sits at the median energy: some pass, some do not)."""
    images = [image_bytes(i) for i in range(1, 9)]
    energy = energy_score(expected_logits(session, images))
    threshold = bundle_calibration(onnx_path).ood_threshold
    expected_flags = [bool(e <= threshold) for e in energy]
    assert True in expected_flags and False in expected_flags

    v1_answer = client.post(f"/v1/models/{MODEL}:predict", json=v1(*images))
    assert v1_answer.status_code == 200, v1_answer.text
    predictions = v1_answer.json()["predictions"]
    np.testing.assert_allclose([p["ood_score"] for p in predictions], energy, atol=1e-4)
    assert [p["in_distribution"] for p in predictions] == expected_flags
    assert {"label", "class_index", "confidence", "top_k"} <= set(predictions[0])  # the contract stays

    body = {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                        "data": [b64(i) for i in images]}]}
    v2_answer = client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert v2_answer.status_code == 200, v2_answer.text
    outputs = {o["name"]: o for o in v2_answer.json()["outputs"]}
    assert outputs["ood_score"]["datatype"] == "FP32" and outputs["in_distribution"]["datatype"] == "BOOL"
    np.testing.assert_allclose(outputs["ood_score"]["data"], energy, atol=1e-4)
    assert outputs["in_distribution"]["data"] == expected_flags
    assert {"label", "class_index", "confidence"} <= set(outputs)


def test_v1_accepts_image_bytes_key_and_bare_string(client, session):
    a, b = image_bytes(4), image_bytes(5)
    body = {"instances": [{"image_bytes": {"b64": b64(a)}}, b64(b)]}
    response = client.post(f"/v1/models/{MODEL}:predict", json=body)
    assert response.status_code == 200, response.text
    got = [p["class_index"] for p in response.json()["predictions"]]
    assert got == list(np.argmax(expected_probs(session, [a, b]), axis=1))


def test_v2_request_returns_v2_response(client, session):
    images = [image_bytes(6), image_bytes(7)]
    body = {"id": "req-42", "inputs": [
        {"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64(i) for i in images]}]}
    response = client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["id"] == "req-42" and data["model_name"] == MODEL
    outputs = {o["name"]: o for o in data["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES" and outputs["class_index"]["datatype"] == "INT64"
    assert outputs["confidence"]["shape"] == [2]
    probs = expected_probs(session, images)
    assert outputs["class_index"]["data"] == list(np.argmax(probs, axis=1))
    assert outputs["label"]["data"] == [CLASS_NAMES[i] for i in outputs["class_index"]["data"]]
    np.testing.assert_allclose(outputs["confidence"]["data"], probs.max(axis=1), atol=1e-5)


def test_training_and_serving_share_preprocessing(client, predictor, tmp_path):
    """THE check: the tensor the predictor receives == what training's dataset loads."""
    from gourmetgram.data.dataset import ImageFolderDataset

    raw = image_bytes(8, (300, 220))  # big enough for the JPEG draft (downscaled decode)
    (tmp_path / "class_00").mkdir()
    (tmp_path / "class_00" / "a.jpg").write_bytes(raw)
    training = ImageFolderDataset(tmp_path, image_size=IMAGE_SIZE).load(0)

    response = client.post(f"/v1/models/{MODEL}:predict", json=v1(raw))
    assert response.status_code == 200, response.text
    sent = np.load(predictor[1])
    assert sent.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE) and sent.dtype == np.float32
    np.testing.assert_array_equal(sent[0], training)
    np.testing.assert_array_equal(sent[0], preprocess(decode_image(raw, IMAGE_SIZE), IMAGE_SIZE))


def _bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (10000, 10000)).save(buf, format="PNG")
    return buf.getvalue()


BAD_V1 = {
    "invalid base64": ({"instances": [{"image": {"b64": "not*base64!!"}}]}, "not valid base64"),
    "text bytes": (v1(b"hello, I am plain text, not a picture"), "not a JPEG or PNG"),
    "truncated jpeg": (v1(image_bytes(9, (400, 300))[:3000]), "truncated"),
    "10000x10000 png bomb": (None, "instances[0]"),
    "empty instances": ({"instances": []}, "empty"),
    "65 instances": ({"instances": [{"image": {"b64": "AAAA"}}] * 65}, "limit is 64"),
    "no instances key": ({"foo": 1}, 'no "instances" field'),
    "instances not a list": ({"instances": "abc"}, "list"),
    "instance without image": ({"instances": [{"picture": {"b64": "AAAA"}}]}, 'no "image" field'),
    "b64 not a string": ({"instances": [{"image": {"b64": 12}}]}, "base64 string"),
    "base64 too long": ({"instances": ["A" * 14_000_000]}, "limit is"),
}


@pytest.mark.parametrize("case", list(BAD_V1))
def test_bad_v1_input_is_400_with_message(client, case):
    body, needle = BAD_V1[case]
    if body is None:
        body = v1(_bomb_png())
    response = client.post(f"/v1/models/{MODEL}:predict", json=body)
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert needle in message
    if case == "10000x10000 png bomb":
        assert "10000x10000" in message or "bomb" in message


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", None])
def test_non_json_body_is_400(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(f"/v1/models/{MODEL}:predict", content=b"\x89 this is not json", headers=headers)
    assert response.status_code == 400, response.text
    assert "JSON" in response.json()["error"] or "format" in response.json()["error"]


def test_json_with_other_content_type_still_served(client):
    response = client.post(f"/v1/models/{MODEL}:predict", content=json.dumps(v1(image_bytes(10))),
                           headers={"content-type": "text/plain"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("body, needle", [
    ({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0.1, 0.2]}]}, "BYTES"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}, "not valid base64"),
    ({"inputs": [{"name": "image", "shape": [3], "datatype": "BYTES", "data": ["AAAA"]}]}, "shape"),
])
def test_bad_v2_input_is_400(client, body, needle):
    response = client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]


def test_predictor_down_is_503(client):
    response = client.post("/v1/models/offline:predict", json=v1(image_bytes(11)))
    assert response.status_code == 503, response.text
    assert "predictor unavailable" in response.json()["error"]
    assert "cannot reach" in response.json()["error"]


def test_metrics_count_served_predictions(client):
    before = client.get("/metrics").text
    images = [image_bytes(20 + i) for i in range(4)]
    predictions = client.post(f"/v1/models/{MODEL}:predict", json=v1(*images)).json()["predictions"]
    after = client.get("/metrics").text

    labels = {"model_name": MODEL, "revision": "local"}
    assert metric(after, "prediction_confidence_count", **labels) - \
        metric(before, "prediction_confidence_count", **labels) == 4
    assert metric(after, "prediction_confidence_sum", **labels) - metric(before, "prediction_confidence_sum", **labels) \
        == pytest.approx(sum(p["confidence"] for p in predictions), abs=1e-4)
    for name in {p["label"] for p in predictions}:
        n = sum(p["label"] == name for p in predictions)
        delta = metric(after, "predicted_class_total", class_name=name, **labels) - \
            metric(before, "predicted_class_total", class_name=name, **labels)
        assert delta == n
    assert 'prediction_confidence_bucket{le="0.1"' in after
    assert "request_preprocess_seconds" in after  # kserve's own histograms, same endpoint
    assert metric(after, "gourmetgram_ood_score_count", **labels) - \
        metric(before, "gourmetgram_ood_score_count", **labels) == 4
    flagged = sum(not p["in_distribution"] for p in predictions)
    assert metric(after, "gourmetgram_out_of_distribution_total", **labels) - \
        metric(before, "gourmetgram_out_of_distribution_total", **labels) == flagged
    # the label-free estimate over the revision's window, every method with its interval
    for method in ("atc", "atc_prior", "atc_energy", "atc_energy_prior", "confidence"):
        where = {**labels, "method": method}
        value = metric(after, "gourmetgram_estimated_accuracy", **where)
        lower = metric(after, "gourmetgram_estimated_accuracy_lower", **where)
        upper = metric(after, "gourmetgram_estimated_accuracy_upper", **where)
        assert 0 <= lower <= value <= upper <= 1, (method, lower, value, upper)
        assert metric(after, "gourmetgram_estimated_accuracy_samples", **where) >= 4


def test_bad_flags_exit_2(capsys, tmp_path, predictor):
    from food_transformer.__main__ import main

    # Given spec checked against the predictor's metadata: a wrong size stops start-up.
    names = ",".join(CLASS_NAMES)
    assert main(["--predictor_host", predictor[0], "--image_size", "96", "--class_names", names]) == 2
    assert "64x64" in capsys.readouterr().err
    assert main(["--predictor_host", predictor[0], "--class_names", "a,b,c"]) == 2
    assert "10 outputs" in capsys.readouterr().err
    assert main(["--predictor_host", "127.0.0.1:1", "--protocol", "v1"]) == 2
    assert "v2" in capsys.readouterr().err
    assert main(["--predictor_host", "127.0.0.1:1", "--labels_file", str(tmp_path / "nope.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--image_size", "64"]) == 2
    assert "--predictor_host" in capsys.readouterr().err


def test_transformer_imports_no_torch():
    """The transformer image carries no PyTorch: nothing it imports may need it."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
            "import food_transformer.__main__, food_transformer.model\n"
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


async def _grpc_infer(address: str, raw: bytes):
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    client = InferenceGRPCClient(url=address, timeout=30)
    request = InferRequest(model_name=MODEL, infer_inputs=[InferInput("image", [1], "BYTES", data=[raw])])
    try:
        return await client.infer(request)
    finally:
        await client.close()


@pytest.mark.slow
def test_entry_point_serves_over_http(predictor, onnx_path, session, tmp_path):
    """`python -m food_transformer` (the container entry point) end to end over real HTTP
    (v1 JSON, and a v2 binary request with raw JPEG elements) and gRPC. gRPC is opt-in and
    binds every address (as in the container), so this one process listens on 0.0.0.0."""
    port, grpc_port = free_port(), free_port()
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASS_NAMES) + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "food_transformer", "--model_name", MODEL, "--predictor_host",
         predictor[0], "--protocol", "v2", "--labels_file", str(labels), "--http_port", str(port),
         "--grpc_port", str(grpc_port), "--host", "0.0.0.0", "--enable_grpc", "true"],
        env={**os.environ, "K_REVISION": "food11-predictor-00002"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready", proc)
        image = image_bytes(30)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/models/{MODEL}:predict", json=v1(image), timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["class_index"] == int(np.argmax(expected_probs(session, [image])))
        # v2 REST, binary tensor extension, the JPEG's own bytes as the BYTES element
        raw_images = [image_bytes(32), image_bytes(33)]
        body, headers = _v2_binary_bytes(raw_images, "raw-http", raw=True)
        response = httpx.post(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", content=body,
                              headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        assert outputs["class_index"]["data"] == list(np.argmax(expected_probs(session, raw_images), axis=1))
        bad, bad_headers = _malformed_v2_binary("header length not a number")
        response = httpx.post(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", content=bad,
                              headers=bad_headers, timeout=30)
        assert response.status_code == 400 and "whole number" in response.json()["error"], response.text
        response = httpx.post(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", content=b"",
                              headers={"content-type": "application/json"}, timeout=30)
        assert response.status_code == 400 and "BYTES" in response.json()["error"], response.text
        # gRPC ingress (v2) with the raw JPEG bytes, no base64.
        raw = image_bytes(31)
        wait_grpc(f"127.0.0.1:{grpc_port}", proc)
        reply = asyncio.run(_grpc_infer(f"127.0.0.1:{grpc_port}", raw))
        assert reply.get_output_by_name("class_index").as_numpy().tolist() == \
            [int(np.argmax(expected_probs(session, [raw])))]
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert metric(text, "prediction_confidence_count", revision="food11-predictor-00002") == 4
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# ---------------------------------------------------------------- binary client paths


@pytest.mark.parametrize("content_type, fmt", [("application/octet-stream", "JPEG"), ("image/jpeg", "JPEG"),
                                               ("image/png", "PNG")])
def test_raw_image_body_is_served_like_base64(client, session, content_type, fmt):
    raw = image_bytes(40, (200, 150), fmt)
    response = client.post(f"/v1/models/{MODEL}:predict", content=raw, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    (pred,) = response.json()["predictions"]
    probs = expected_probs(session, [raw])[0]
    assert pred["class_index"] == int(np.argmax(probs))
    assert pred["confidence"] == pytest.approx(probs.max(), abs=1e-5)
    same = client.post(f"/v1/models/{MODEL}:predict", json=v1(raw)).json()["predictions"][0]
    assert same["class_index"] == pred["class_index"]
    assert same["confidence"] == pytest.approx(pred["confidence"], abs=1e-6)


@pytest.mark.parametrize("body, needle", [
    (b"", "empty"),
    (b"hello, I am plain text, not a picture", "not a JPEG or PNG"),
    (b'{"instances": [{"image": {"b64": "AAAA"}}]}', "not a JPEG or PNG"),
    (None, "truncated"),
])
def test_bad_raw_image_body_is_400(client, body, needle):
    if body is None:
        body = image_bytes(41, (400, 300))[:3000]
    response = client.post(f"/v1/models/{MODEL}:predict", content=body,
                           headers={"content-type": "application/octet-stream"})
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]


def _v2_binary_bytes(images: list[bytes], request_id: str = "bin-1", raw: bool = False) -> tuple[bytes, dict]:
    """A v2 request whose BYTES input travels in the binary tensor extension, each element the
    image's base64 text, or with ``raw`` the image file's bytes themselves."""
    elements = images if raw else [b64(i).encode() for i in images]
    data = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
    head = json.dumps({"id": request_id, "inputs": [{
        "name": "image", "shape": [len(images)], "datatype": "BYTES",
        "parameters": {"binary_data_size": len(data)}}]}).encode()
    return head + data, {"content-type": "application/octet-stream",
                         "inference-header-content-length": str(len(head))}


def test_v2_binary_bytes_input_is_served(client, session):
    images = [image_bytes(42), image_bytes(43, (120, 160), "PNG")]
    body, headers = _v2_binary_bytes(images)
    response = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["id"] == "bin-1"
    outputs = {o["name"]: o for o in data["outputs"]}
    assert outputs["class_index"]["data"] == list(np.argmax(expected_probs(session, images), axis=1))


def test_v2_binary_bytes_with_a_non_image_is_400(client):
    body, headers = _v2_binary_bytes([image_bytes(44), b"GIF89a not a JPEG or PNG"])
    response = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert "image 1" in response.json()["error"] and "not a JPEG or PNG" in response.json()["error"]


def test_v2_binary_raw_image_bytes_are_served_like_base64(client, session):
    """Raw JPEG/PNG bytes as BYTES elements of a binary v2 request (kserve 0.20's own decoder
    reads them as UTF-8 and answered 500): served, with the same answer as base64 text."""
    images = [image_bytes(45), image_bytes(46, (120, 160), "PNG")]
    body, headers = _v2_binary_bytes(images, "raw-1", raw=True)
    assert b"\xff\xd8\xff" in body  # really the file's bytes, not base64
    response = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["id"] == "raw-1"
    outputs = {o["name"]: o for o in data["outputs"]}
    probs = expected_probs(session, images)
    assert outputs["class_index"]["data"] == list(np.argmax(probs, axis=1))
    assert outputs["confidence"]["data"] == pytest.approx(list(probs.max(axis=1)), abs=1e-5)
    b64_body, b64_headers = _v2_binary_bytes(images, "b64-1")
    same = client.post(f"/v2/models/{MODEL}/infer", content=b64_body, headers=b64_headers).json()
    assert {o["name"]: o for o in same["outputs"]}["class_index"]["data"] == outputs["class_index"]["data"]


def _malformed_v2_binary(case: str) -> tuple[bytes, dict]:
    """A raw-image binary v2 request broken in one way."""
    body, headers = _v2_binary_bytes([image_bytes(47)], raw=True)
    head_len = int(headers["inference-header-content-length"])
    head, data = body[:head_len], body[head_len:]
    size = str(len(data)).encode()

    def resized(value: bytes) -> tuple[bytes, dict]:
        new_head = head.replace(b'"binary_data_size": ' + size, b'"binary_data_size": ' + value)
        return new_head + data, {**headers, "inference-header-content-length": str(len(new_head))}

    if case == "header length not a number":
        return body, {**headers, "inference-header-content-length": "abc"}
    if case == "negative header length":
        return body, {**headers, "inference-header-content-length": "-5"}
    if case == "header length past the body":
        return body, {**headers, "inference-header-content-length": "9" * 30}
    if case == "header length cuts the JSON":
        return body, {**headers, "inference-header-content-length": "10"}
    if case == "binary_data_size past the body":
        return resized(b"999999999")
    if case == "negative binary_data_size":
        return resized(b"-1")
    if case == "element length past its data":
        return head + (99999).to_bytes(4, "little") + data[4:], headers
    if case == "element cut in its length prefix":
        return resized(str(len(data) + 2).encode())[0] + b"\x01\x00", \
            resized(str(len(data) + 2).encode())[1]
    if case == "shape disagrees with the elements":
        new_head = head.replace(b'"shape": [1]', b'"shape": [2]')
        return new_head + data, {**headers, "inference-header-content-length": str(len(new_head))}
    if case == "no inputs list":
        return b'{"x": 1}', {**headers, "inference-header-content-length": "8"}
    if case == "inputs not a list":
        return b'{"inputs": 1}', {**headers, "inference-header-content-length": "13"}
    if case == "bytes after the last input":
        return body + b"junk", headers
    raise AssertionError(case)


@pytest.mark.parametrize("case, needle", [
    ("header length not a number", "whole number"),
    ("negative header length", "whole number"),
    ("header length past the body", "body is only"),
    ("header length cuts the JSON", "not a JSON inference header"),
    ("binary_data_size past the body", "bytes follow"),
    ("negative binary_data_size", "non-negative"),
    ("element length past its data", "remain"),
    ("element cut in its length prefix", "length prefix"),
    ("shape disagrees with the elements", "shape"),
    ("no inputs list", '"inputs" list'),
    ("inputs not a list", '"inputs" list'),
    ("bytes after the last input", "follow the last binary input"),
])
def test_malformed_v2_binary_request_is_400(client, case, needle):
    body, headers = _malformed_v2_binary(case)
    response = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]


@pytest.mark.parametrize("body, headers", [
    (b"", {"content-type": "application/octet-stream"}),
    (b"", {"content-type": "application/json"}),
    (b"{not json", {"content-type": "application/json"}),
    (b"[1, 2]", {"content-type": "application/json"}),
    (b'{"inputs": [{}]}', {"content-type": "application/json"}),
    (b'{"inputs": []}', {"content-type": "text/plain"}),
])
def test_bad_v2_bodies_are_400_with_what_to_send(client, body, headers):
    """Empty, malformed or wrongly typed v2 bodies: a 400 in the transformer's error shape
    (not FastAPI's 422 details) that says what to send."""
    response = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert "BYTES" in message or "Inference-Header-Content-Length" in message, message


def test_concurrent_requests_each_get_their_own_answer(client, session):
    """Concurrent requests are decoded and predicted together; each still gets its own
    predictions, and one client's bad photo fails only that client's request."""
    from concurrent.futures import ThreadPoolExecutor

    images = [image_bytes(50 + i, (100 + 10 * i, 90)) for i in range(6)]
    bodies = [v1(img) for img in images[:3]] + [v1(images[3], images[4])] + \
        [v1(b"not an image at all")] + [v1(images[5])]

    def post(body):
        return client.post(f"/v1/models/{MODEL}:predict", json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(post, bodies))
    assert responses[4].status_code == 400 and "instances[0]" in responses[4].json()["error"]
    got = [p["class_index"] for i, r in enumerate(responses) if i != 4 for p in r.json()["predictions"]]
    assert got == list(np.argmax(expected_probs(session, images), axis=1))


# ---------------------------------------------------------------- readiness (the chart's probe)


def _chart_transformer_argv(port: int, predictor_host: str, spec_dir: Path) -> list[str]:
    """The transformer's args exactly as the production InferenceService renders them, with
    this machine's predictor address, port and model spec."""
    from gourmetgram import manifests

    isvc = manifests.find_inference_service(manifests.render_objects("production"))
    args = list(manifests.transformer_container(isvc)["args"])
    values = {"--predictor_host": predictor_host, "--http_port": str(port), "--model_spec": str(spec_dir)}
    for flag, value in values.items():
        args[args.index(flag) + 1] = value
    return args


def test_chart_readiness_probe_is_not_ready_until_tritons_model_is(predictor, onnx_path):
    """The probe path the chart gives Knative (GET /v2/models/<name>/ready on the transformer)
    answers 503 while the predictor's model is not ready and 200 once it is: a revision takes
    no traffic before Triton has loaded the model. Real entry point, real predictor."""
    from gourmetgram import manifests

    isvc = manifests.find_inference_service(manifests.render_objects("production"))
    probe = manifests.transformer_container(isvc)["readinessProbe"]["httpGet"]["path"]
    for predictor_host, ready in ((f"127.0.0.1:{free_port()}", False), (predictor[0], True)):
        port = free_port()
        argv = _chart_transformer_argv(port, predictor_host, onnx_path.parent)
        # image size and labels from model_spec.json: no predictor metadata call at start-up
        proc = subprocess.Popen([sys.executable, "-m", "food_transformer", *argv, "--image_size", str(IMAGE_SIZE)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/v2/health/live", proc)
            answer = httpx.get(f"http://127.0.0.1:{port}{probe}", timeout=30)
            assert answer.status_code == (200 if ready else 503), (predictor_host, answer.text)
        finally:
            proc.terminate()
            proc.wait(timeout=20)

"""Closing the loop end to end, on real processes: the local stack serves (gateway ->
transformer -> Triton), the logger's events go through the broker to the capture sink
(object in the store, row in SQLite), feedback comes through the gateway, `loop queue` pushes
the policy's choice into a real Label Studio started here, annotations are created through
Label Studio's API (standing in for a person), `loop sync` pulls them and `loop export` writes
a dataset that `gourmetgram data validate` accepts. Then the fault tests: the capture sink
killed (-9) under load loses no prediction and, restarted, has every capture.

One module-scoped chain (Label Studio takes a minute to start); every test also passes alone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time

import httpx
import pytest
import torch
from helpers import wait_until as _wait
from loop_helpers import ce_headers, request_body

from gourmetgram.config import ExportConfig
from gourmetgram.data.demo import DEMO_CLASSES
from gourmetgram.data.layout import list_images
from gourmetgram.export import export_bundle
from gourmetgram.model import ModelSpec, build_model
from gourmetgram_app.cli.main import main
from gourmetgram_app.local.traffic import predict

pytestmark = pytest.mark.slow
VERSION = "7"
N_SERVED = 30


@pytest.fixture(scope="module")
def chain(tmp_path_factory, demo_dataset):
    from gourmetgram_app.local.labelstudio import LabelStudioServer
    from gourmetgram_app.local.loop import LoopServices
    from gourmetgram_app.local.ports import Ports
    from gourmetgram_app.local.stack import LocalStack

    root = tmp_path_factory.mktemp("loop-e2e")
    creds = {"LABEL_STUDIO_USERNAME": "admin@gourmetgram.local", "LABEL_STUDIO_PASSWORD": secrets.token_hex(8),
             "LABEL_STUDIO_API_KEY": secrets.token_hex(20)}
    saved = {k: os.environ.get(k) for k in creds}
    os.environ.update(creds)
    ls = LabelStudioServer(root / "label-studio", port=Ports.free().gateway)
    ls.service.start(cwd=root)  # slow to come up: it starts first, it is awaited last
    db, objects = f"sqlite:///{root / 'loop.db'}", (root / "objects").as_uri()
    torch.manual_seed(0)
    model = build_model(ModelSpec(class_names=DEMO_CLASSES, image_size=64, width_mult=0.5)).eval()
    bundle = root / "bundle"
    export_bundle(model, bundle, ExportConfig(max_batch_size=16))
    from test_loop_broker import Subscriber

    detector = Subscriber()
    loop = LoopServices(bundle, root / "logs", detector_url=detector.url, db_url=db, objects_url=objects).start()
    stack = LocalStack(bundle, "production", Ports.free(), logger_url=loop.broker_url + "/",
                       feedback_url=loop.capture_url, model_version=VERSION, log_dir=root / "logs")
    try:
        stack.start()
        ls.service.wait_ready(600)
        yield {"root": root, "db": db, "objects": objects, "bundle": bundle, "loop": loop, "stack": stack,
               "ls": ls, "detector": detector,
               "args": ["--db", db, "--objects", objects, "--bundle", str(bundle)]}
    finally:
        stack.stop()
        loop.stop()
        ls.stop()
        detector.close()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _new_photo(blob: bytes) -> bytes:
    """An evaluation image as a user would send it again: re-encoded, so new bytes (new hash)."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(blob)).convert("RGB").save(out, "JPEG", quality=83)
    return out.getvalue()


@pytest.fixture(scope="module")
def served(chain, demo_dataset):
    """N_SERVED evaluation images through the gateway: ``[(inference id, image, true label)]``."""
    items = list_images(demo_dataset / "evaluation")[::7][:N_SERVED]
    out = []
    with httpx.Client(timeout=60) as client:
        for path, label in items:
            blob = _new_photo(path.read_bytes())
            r = predict(client, chain["stack"].gateway_url, blob)
            assert r.status_code == 200
            out.append((r.headers["x-inference-id"], blob, DEMO_CLASSES[label]))
    store = _store(chain)
    assert _wait(lambda: all(_complete(store, i) for i, _, _ in out), 120), "captures did not arrive"
    return out


def _store(chain):
    from gourmetgram.loop.store import Store

    return Store(chain["db"])


def _complete(store, sample_id) -> bool:
    s = store.get_sample(sample_id)
    return s is not None and s.complete


def test_every_prediction_is_captured_with_its_inference_id(chain, served):
    from gourmetgram.objectstore import ObjectStore

    store, objects = _store(chain), ObjectStore(chain["objects"])
    for inference_id, blob, _ in served:
        s = store.get_sample(inference_id)
        assert objects.get(s.object_key) == blob  # the very bytes the user sent
        assert s.model_version == VERSION and s.stage == "production" and s.model_name == "food11"
        assert s.revision == chain["stack"].revision and s.label in DEMO_CLASSES and 0 < s.confidence <= 1
        assert s.top_k and s.top_k[0]["label"] == s.label
        # the answer's OOD score (energy: below 0) and flag (no calibration.json: every photo passes)
        assert s.ood_score is not None and s.ood_score < 0 and s.in_distribution is True
    # the same events fanned out to the detector's trigger too
    assert _wait(lambda: {i for i, _, _ in served} <= set(chain["detector"].ids))
    # one request followed across processes by its id: gateway, transformer, capture
    inference_id = served[0][0]
    logs = chain["root"] / "logs"
    for name, service in (("gateway.log", "gateway"), ("transformer.log", "transformer"), ("capture.log", "capture")):
        lines = [json.loads(line) for line in (logs / name).read_text().splitlines()
                 if line.startswith("{") and inference_id in line]
        assert lines and all(x["service"] == service and x["inference_id"] == inference_id for x in lines), name


def test_feedback_through_the_gateway(chain, served):
    gw = chain["stack"].gateway_url + "/v1/feedback"
    with httpx.Client(timeout=30) as client:
        for i, (inference_id, _, truth) in enumerate(served[:12]):
            s = _store(chain).get_sample(inference_id)
            body = {"inference_id": inference_id, "correct": s.label == truth}
            if s.label != truth:
                body["correct_class"] = truth
            if i == 3:
                body["flag"] = "not_food"
            r = client.post(gw, json=body)
            assert r.status_code == 200 and r.json()["inference_id"] == inference_id, r.text
        again = client.post(gw, json={"inference_id": served[0][0], "correct": False, "flag": "inappropriate"})
        assert again.status_code == 200 and again.json()["updates"] >= 1 and again.json()["flag"] == "inappropriate"
        assert client.post(gw, json={"inference_id": "nope", "correct": True}).status_code == 404
        bad = client.post(gw, json={"inference_id": served[1][0], "correct": False, "correct_class": "pizza"})
        assert bad.status_code == 400 and "zero, one, two" in bad.json()["error"]
        assert client.post(gw, content=b"{", headers={"content-type": "application/json"}).status_code == 400
        assert client.post(gw, content=b"x" * 100_000, headers={"content-type": "application/json"}).status_code == 413
        # what a cross-site page can send without a preflight: refused through the whole chain
        plain = client.post(gw, content=json.dumps({"inference_id": served[2][0], "correct": True}).encode(),
                            headers={"content-type": "text/plain"})
        assert plain.status_code == 415 and "application/json" in plain.json()["error"]
    metrics = httpx.get(chain["loop"].capture_url + "/metrics").text
    assert re.search(rf'gourmetgram_feedback{{kind="(correct|wrong)",model_version="{VERSION}"}}', metrics)
    assert f'gourmetgram_production_accuracy{{model_version="{VERSION}",source="feedback"}}' in metrics


def test_queue_label_in_label_studio_sync_and_export(chain, served, demo_dataset, capsys, tmp_path):
    from gourmetgram.loop.labelstudio import client
    from gourmetgram.loop.store import Store

    ls_args = ["--labelstudio-url", chain["ls"].url]
    assert main(["loop", "queue", *chain["args"], *ls_args]) == 0
    out = capsys.readouterr().out
    queued = int(re.search(r"queued (\d+) sample", out).group(1))
    assert queued > 0 and f"pushed {queued} task(s)" in out, out
    assert main(["loop", "queue", *chain["args"], *ls_args]) == 0  # nothing twice
    assert "pushed 0 task(s)" in capsys.readouterr().out

    ls = client(chain["ls"].url)
    project = next(p for p in ls.projects.list() if p.title == "GourmetGram production samples")
    tasks = list(ls.tasks.list(project=project.id, fields="all"))
    assert len(tasks) == queued
    truth = {i: label for i, _, label in served}
    for t in tasks:  # the model's prediction came along as a pre-annotation
        assert t.predictions and t.predictions[0].model_version == f"food11:{VERSION}"
        assert t.data["image"].startswith("data:image/")
    # what the simulated annotators list each round: the unannotated tasks newer than the last seen
    from gourmetgram.loop.labelstudio import LabelQueue
    from gourmetgram.objectstore import ObjectStore

    queue = LabelQueue(Store(chain["db"]), ObjectStore(chain["objects"]), DEMO_CLASSES, ls)
    ids = sorted(t.id for t in tasks)
    assert sorted(t.id for t in queue.open_tasks()) == ids
    assert sorted(t.id for t in queue.open_tasks(after_id=ids[0])) == ids[1:]
    # a person labels them in the UI; here Label Studio's API stands in for that person
    for t in tasks:
        sid = t.data["sample_id"]
        label = truth.get(sid, DEMO_CLASSES[0])
        ls.annotations.create(id=t.id, result=[{"from_name": "label", "to_name": "image", "type": "choices",
                                                "value": {"choices": [label]}}])
    assert queue.open_tasks() == []  # annotated: no longer open
    assert main(["loop", "sync", *chain["args"], *ls_args]) == 0
    assert f"{len(tasks)} new label(s)" in capsys.readouterr().out
    store = Store(chain["db"])
    from gourmetgram.loop.models import Label

    with store.session() as s:
        labels = s.query(Label).filter_by(label_source="annotator").all()
    assert len(labels) == len(tasks) and all("admin@gourmetgram.local" in lb.labelled_by for lb in labels)
    assert all(lb.label == truth[lb.sample_id] for lb in labels if lb.sample_id in truth)

    out_dir = tmp_path / "production"
    assert main(["loop", "export", *chain["args"], "--output", str(out_dir), "--base", str(demo_dataset)]) == 0
    assert main(["data", "validate", str(out_dir)]) == 0
    lineage = json.loads((out_dir / "lineage.json").read_text())
    assert lineage["samples"] and {r["model_version"] for r in lineage["samples"]} == {VERSION}
    assert {r["label_source"] for r in lineage["samples"]} <= {"annotator", "user"}
    capsys.readouterr()
    assert main(["loop", "status", "--db", chain["db"]]) == 0
    status = capsys.readouterr().out
    # (feedback: 12 after test_feedback_through_the_gateway, none when this test runs alone)
    assert re.search(r"^captured \d+ \(partial 0\), with feedback \d+, queued", status, re.M), status
    assert re.search(rf"^{VERSION}\s+\d\.\d+", status, re.M), status


def test_capture_sink_killed_under_load_loses_nothing(chain, served, demo_dataset):
    loop, stack = chain["loop"], chain["stack"]
    images = [p.read_bytes() for p, _ in list_images(demo_dataset / "evaluation")[1::9][:20]]
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def load():
        with httpx.Client(timeout=60) as client:
            i = 0
            while not stop.is_set():
                r = predict(client, stack.gateway_url, images[i % len(images)])
                results.append((r.status_code, r.headers.get("x-inference-id", "")))
                i += 1

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    loop.kill_capture()
    killed_log = (chain["root"] / "logs" / "capture.log").read_text()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(60)
    assert len(results) > 10 and all(code == 200 for code, _ in results)  # no prediction failed
    # acknowledged before the kill: logged "stored" after the commit, before the 200
    acked = {json.loads(line)["inference_id"] for line in killed_log.splitlines()
             if line.startswith('{"') and '"event":"stored"' in line}
    loop.restart_capture()
    store = _store(chain)
    ids = {i for _, i in results}
    assert _wait(lambda: all(_complete(store, i) for i in ids), 120), \
        f"{sum(not _complete(store, i) for i in ids)} of {len(ids)} predictions not captured after the restart"
    assert all(store.get_sample(i) is not None for i in acked)
    # a redelivered event is stored once
    some = next(iter(ids))
    blob = (chain["root"] / "objects").as_uri()
    from gourmetgram.objectstore import ObjectStore

    data = ObjectStore(blob).get(store.get_sample(some).object_key)
    before = store.count_samples()
    r = httpx.post(loop.capture_url + "/", content=request_body(data), headers=ce_headers(some, "request", isvc="food11"))
    assert r.status_code == 200 and r.json()["outcome"] == "duplicate" and store.count_samples() == before

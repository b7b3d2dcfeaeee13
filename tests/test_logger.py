"""The gateway's inference logger: KServe's binary-mode CloudEvents, off the request path.

A tiny HTTP sink in the test stands in for the drift detector (the same headers are what
detectors/drift_detector/events.py decodes). The sink can answer, stall or die; the
predictions must not notice; what a sink that is away misses is retried until it is back
(within the queue's bounds), and what cannot be is counted.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading

import httpx
import pytest
import torch
from helpers import Sink, free_port
from helpers import wait_until as _wait
from prometheus_client import CollectorRegistry, Counter

from gourmetgram.config import ExportConfig
from gourmetgram.data.demo import DEMO_CLASSES
from gourmetgram.data.layout import list_images
from gourmetgram.export import export_bundle
from gourmetgram.model import ModelSpec, build_model
from gourmetgram_app.local.gateway import InferenceLogger

MODEL = "food11"
# The stack's logger waits this long on the sink, so a logger on the request path would hang
# every prediction while the sink holds its events (the client below gives up well before).
LOGGER_TIMEOUT_S = 600.0
HOLD_CAP_S = 120.0  # a held sink answers by itself after this, so nothing hangs for ever


def _metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M))


@pytest.fixture(scope="module")
def images(demo_dataset) -> list[bytes]:
    return [p.read_bytes() for p, _ in list_images(demo_dataset / "evaluation")[::11][:20]]


@pytest.fixture(scope="module")
def sink():
    s = Sink(hold_cap_s=HOLD_CAP_S)
    yield s
    try:
        s.kill()
    except OSError:
        pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sink):
    from gourmetgram_app.local.ports import Ports
    from gourmetgram_app.local.stack import LocalStack

    torch.manual_seed(0)
    model = build_model(ModelSpec(class_names=DEMO_CLASSES, image_size=64, width_mult=0.5)).eval()
    bundle = tmp_path_factory.mktemp("logger-models") / "m"
    export_bundle(model, bundle, ExportConfig(max_batch_size=16, preferred_batch_sizes=(4, 8)))
    with LocalStack(bundle, "staging", Ports.free(), logger_url=sink.url, logger_timeout_s=LOGGER_TIMEOUT_S,
                    log_dir=tmp_path_factory.mktemp("logger-logs")) as running:
        yield running


def _body(blob: bytes) -> dict:
    return {"instances": [{"image": {"b64": base64.b64encode(blob).decode()}}]}


def _predictions(url: str, images: list[bytes], n: int) -> list[int]:
    # The client's timeout is far below the held sink's, so a prediction that waited on the
    # logger would fail here with a timeout rather than pass.
    with httpx.Client(timeout=HOLD_CAP_S / 4) as client:
        return [client.post(f"{url}/v1/models/{MODEL}:predict", json=_body(images[i % len(images)])).status_code
                for i in range(n)]


def _counters(stack) -> tuple[float, float]:
    text = httpx.get(f"{stack.gateway_url}/metrics").text
    return _metric(text, "logger_events_sent_total"), _metric(text, "logger_events_dropped_total")


def test_queue_full_counts_drops_without_blocking():
    registry = CollectorRegistry()
    sent = Counter("s", "s", ["inferenceservice"], registry=registry)
    dropped = Counter("d", "d", ["inferenceservice"], registry=registry)

    async def run():
        logger = InferenceLogger("http://127.0.0.1:9/", "all", "isvc", "ns", sent, dropped,
                                 queue_size=2, workers=1, timeout_s=0.5)
        await logger.start()
        # log() is synchronous and there is no await between the calls: it cannot wait for the
        # worker, which cannot run, so the queue fills and the rest are counted, not awaited.
        for i in range(10):
            assert logger.log(str(i), "request", b"{}", "application/json", "default") is None
        queued = logger.backlog
        await logger.stop(drain_s=3)
        return queued

    assert asyncio.run(run()) == 2
    assert dropped.labels("isvc")._value.get() == 10  # 8 never queued + 2 undeliverable (port 9)
    assert sent.labels("isvc")._value.get() == 0
    with pytest.raises(Exception, match="mode"):
        InferenceLogger("http://x/", "sometimes", "i", "n", sent, dropped)


def _counters3(registry: CollectorRegistry):
    return (Counter("s", "s", ["inferenceservice"], registry=registry),
            Counter("d", "d", ["inferenceservice"], registry=registry),
            Counter("r", "r", ["inferenceservice"], registry=registry))


async def _until(predicate, timeout_s: float = 60.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def test_a_sink_that_is_away_gets_every_event_when_it_is_back():
    """The broker restarting after a kill -9: its port refuses connections for a while. The
    logger retries with back-off and delivers everything once it answers; nothing is dropped."""
    sent, dropped, retried = _counters3(CollectorRegistry())
    port = free_port()
    sinks: list[Sink] = []

    async def run() -> int:
        logger = InferenceLogger(f"http://127.0.0.1:{port}/", "all", "isvc", "ns", sent, dropped,
                                 workers=2, timeout_s=1.0, retried=retried)
        await logger.start()
        for i in range(20):
            logger.log(f"id-{i}", "request", b'{"instances": []}', "application/json", "default")
        assert await _until(lambda: retried.labels("isvc")._value.get() >= 2), "the logger retries"
        waiting = logger.backlog
        sinks.append(Sink(port=port))  # the sink is back on its port
        assert await _until(lambda: sent.labels("isvc")._value.get() == 20)
        await logger.stop()
        return waiting

    try:
        assert asyncio.run(run()) == 20  # nothing was lost while it was away: all still owed
    finally:
        for sink in sinks:
            sink.kill()
    assert sorted(h["ce-id"] for h, _ in sinks[0].events) == sorted(f"id-{i}" for i in range(20))
    assert dropped.labels("isvc")._value.get() == 0


def test_events_being_retried_keep_their_bytes_in_the_bound():
    """Retrying is bounded like queueing: an event being retried still holds its bytes, so a
    sink that stays away fills the budget and the rest is counted, not kept."""
    sent, dropped, retried = _counters3(CollectorRegistry())

    async def run() -> tuple[int, int, float]:
        logger = InferenceLogger(f"http://127.0.0.1:{free_port()}/", "all", "isvc", "ns", sent, dropped,
                                 workers=2, timeout_s=0.5, queue_bytes=1000, retried=retried)
        await logger.start()
        for i in range(2):
            logger.log(f"id-{i}", "request", b"x" * 400, "application/json", "default")
        assert await _until(lambda: retried.labels("isvc")._value.get() >= 2), "both are being retried"
        logger.log("id-2", "request", b"x" * 400, "application/json", "default")  # 1200 > 1000
        state = (logger.backlog, logger.queued_bytes, dropped.labels("isvc")._value.get())
        await logger.stop(drain_s=0.1)
        return state

    assert asyncio.run(run()) == (2, 800, 1)
    assert dropped.labels("isvc")._value.get() == 3  # + the two still undelivered at stop
    assert sent.labels("isvc")._value.get() == 0


@pytest.mark.slow
def test_events_are_kserve_cloudevents_paired_by_id(stack, sink, images):
    sink.mode = "ok"
    sink.events.clear()
    sent0, _ = _counters(stack)
    bodies = [_body(b) for b in images[:5]]
    responses = [httpx.post(f"{stack.gateway_url}/v1/models/{MODEL}:predict", json=b,
                            headers={"ce-id": f"client-{i}"} if i == 0 else None, timeout=60)
                 for i, b in enumerate(bodies)]
    bad = httpx.post(f"{stack.gateway_url}/v1/models/{MODEL}:predict", content=b"junk",
                     headers={"content-type": "application/json"})
    assert all(r.status_code == 200 for r in responses) and bad.status_code == 400
    assert _wait(lambda: len(sink.events) >= 11), len(sink.events)
    assert _wait(lambda: _counters(stack)[0] - sent0 >= 11)
    by_id: dict[str, dict[str, tuple[dict, bytes]]] = {}
    for headers, body in sink.events:
        by_id.setdefault(headers["ce-id"], {})[headers["ce-type"]] = (headers, body)
    req_t, resp_t = "org.kubeflow.serving.inference.request", "org.kubeflow.serving.inference.response"
    pairs = [v for v in by_id.values() if resp_t in v]
    assert len(pairs) == 5 and "client-0" in by_id  # the caller's ce-id is kept, as KServe's agent does
    singles = [v for v in by_id.values() if resp_t not in v]
    assert len(singles) == 1 and singles[0][req_t][1] == b"junk"  # a 400 logs no response
    for pair in pairs:
        (req_h, req_b), (resp_h, resp_b) = pair[req_t], pair[resp_t]
        for h in (req_h, resp_h):
            assert h["ce-specversion"] == "1.0" and h["ce-source"]
            assert h["ce-inferenceservicename"] == stack.manifest.name
            assert h["ce-namespace"] == stack.manifest.namespace
            assert h["ce-component"] == "transformer" and h["ce-endpoint"] == "default"
            assert h["content-type"].startswith("application/json") and h["ce-time"].endswith("Z")
        assert json.loads(req_b) in bodies
        assert json.loads(resp_b)["predictions"][0]["label"] in DEMO_CLASSES


@pytest.mark.slow
def test_held_and_dead_sink_never_delay_or_lose_predictions(stack, sink, images):
    # A sink that holds every event: predictions go on while it holds them.
    sink.mode = "hold"
    sink.release.clear()
    try:
        codes = _predictions(stack.gateway_url, images, 20)
        assert codes == [200] * 20
        assert _wait(lambda: sink.held > 0), "the held sink received events"
        assert not sink.release.is_set() and sink.held > 0  # ... and still holds them: nobody waited
    finally:
        sink.release.set()
        sink.mode = "ok"
    _, dropped0 = _counters(stack)

    # Kill the sink in the middle of the load: every prediction still succeeds; what the sink
    # misses waits in the logger and is retried, and reaches it when it is back.
    results: list[int] = []
    stop = threading.Event()

    def load():
        with httpx.Client(timeout=60) as client:
            i = 0
            while not stop.is_set():
                r = client.post(f"{stack.gateway_url}/v1/models/{MODEL}:predict", json=_body(images[i % len(images)]))
                results.append(r.status_code)
                i += 1

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    port = int(sink.url.rstrip("/").rsplit(":", 1)[1])
    try:
        assert _wait(lambda: len(results) >= 10, 120), "load is flowing"
        sink.kill()
        killed_at = len(results)
        assert _wait(lambda: len(results) >= killed_at + 15, 120), "load goes on with the sink dead"
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert results == [200] * len(results)
    assert _wait(lambda: _metric(httpx.get(f"{stack.gateway_url}/metrics").text, "logger_events_retried_total") > 0,
                 60), "what the dead sink missed is retried"
    back = Sink(port=port)  # the sink comes back on its address
    try:
        assert _wait(lambda: _metric(httpx.get(f"{stack.gateway_url}/metrics").text, "logger_events_queued") == 0,
                     120), "the missed events were delivered"
        assert len(back.events) > 0 and _counters(stack)[1] == dropped0, "nothing was dropped"
    finally:
        back.kill()
    print(f"\nlogger: 20 predictions while the sink held their events; kill mid-load: {len(results)} predictions "
          f"all 200, {len(back.events)} events delivered after the sink came back, dropped 0")

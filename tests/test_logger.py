"""The gateway's inference logger: KServe's binary-mode CloudEvents, off the request path.

A tiny HTTP sink in the test stands in for the drift detector (the same headers are what
detectors/drift_detector/events.py decodes). The sink can answer, stall or die; the
predictions must not notice, and what the sink misses is counted.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry, Counter

from gourmetgram.config import ExportConfig
from gourmetgram.data.demo import DEMO_CLASSES
from gourmetgram.data.layout import list_images
from gourmetgram.export import export_bundle
from gourmetgram.local.gateway import InferenceLogger
from gourmetgram.model import ModelSpec, build_model

MODEL = "food11"
SINK_DELAY_S = 2.5  # longer than the gateway's logger timeout (2 s)


class Sink:
    """Records CloudEvents; ``mode`` ok|slow; :meth:`kill` closes the socket."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        self.mode = "ok"
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if sink.mode == "slow":
                    time.sleep(SINK_DELAY_S)
                sink.events.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kill(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M))


@pytest.fixture(scope="module")
def images(demo_dataset) -> list[bytes]:
    return [p.read_bytes() for p, _ in list_images(demo_dataset / "evaluation")[::11][:20]]


@pytest.fixture(scope="module")
def sink():
    s = Sink()
    yield s
    try:
        s.kill()
    except OSError:
        pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sink):
    from gourmetgram.local.stack import LocalStack, Ports

    torch.manual_seed(0)
    model = build_model(ModelSpec(class_names=DEMO_CLASSES, image_size=64, width_mult=0.5)).eval()
    bundle = tmp_path_factory.mktemp("logger-models") / "m"
    export_bundle(model, bundle, ExportConfig(max_batch_size=16, preferred_batch_sizes=(4, 8)))
    with LocalStack(bundle, "staging", Ports.free(), logger_url=sink.url,
                    log_dir=tmp_path_factory.mktemp("logger-logs")) as running:
        yield running


def _body(blob: bytes) -> dict:
    return {"instances": [{"image": {"b64": base64.b64encode(blob).decode()}}]}


def _timed_predictions(url: str, images: list[bytes], n: int) -> tuple[list[int], list[float]]:
    codes, secs = [], []
    with httpx.Client(timeout=60) as client:
        for i in range(n):
            t = time.perf_counter()
            codes.append(client.post(f"{url}/v1/models/{MODEL}:predict", json=_body(images[i % len(images)])).status_code)
            secs.append(time.perf_counter() - t)
    return codes, secs


def _counters(stack) -> tuple[float, float]:
    text = httpx.get(f"{stack.gateway_url}/metrics").text
    return _metric(text, "logger_events_sent_total"), _metric(text, "logger_events_dropped_total")


def _wait(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_queue_full_counts_drops_without_blocking():
    registry = CollectorRegistry()
    sent = Counter("s", "s", ["inferenceservice"], registry=registry)
    dropped = Counter("d", "d", ["inferenceservice"], registry=registry)

    async def run():
        logger = InferenceLogger("http://127.0.0.1:9/", "all", "isvc", "ns", sent, dropped,
                                 queue_size=2, workers=1, timeout_s=0.5)
        await logger.start()
        t = time.perf_counter()
        for i in range(10):  # no await between: the worker cannot drain, the queue fills
            logger.log(str(i), "request", b"{}", "application/json", "default")
        elapsed = time.perf_counter() - t
        await logger.stop(drain_s=3)
        return elapsed

    elapsed = asyncio.run(run())
    assert elapsed < 0.05
    assert dropped.labels("isvc")._value.get() == 10  # 8 never queued + 2 undeliverable (port 9)
    assert sent.labels("isvc")._value.get() == 0
    with pytest.raises(Exception, match="mode"):
        InferenceLogger("http://x/", "sometimes", "i", "n", sent, dropped)


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
    time.sleep(0.3)
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
    assert _wait(lambda: _counters(stack)[0] - sent0 >= 11)


@pytest.mark.slow
def test_slow_and_dead_sink_never_delay_or_lose_predictions(stack, sink, images):
    sink.mode = "ok"
    _, base_secs = _timed_predictions(stack.gateway_url, images, 20)
    _, dropped0 = _counters(stack)

    sink.mode = "slow"
    codes, slow_secs = _timed_predictions(stack.gateway_url, images, 20)
    assert codes == [200] * 20
    # a synchronous logger would add SINK_DELAY_S to every request
    assert max(slow_secs) < 1.0, max(slow_secs)
    assert statistics.median(slow_secs) <= 1.5 * statistics.median(base_secs) + 0.03
    assert _wait(lambda: _counters(stack)[1] > dropped0, 15), "timeouts to the slow sink are counted"

    # kill the sink in the middle of the load: every prediction still succeeds
    sink.mode = "ok"
    results: list[tuple[int, float]] = []
    stop = threading.Event()

    def load():
        with httpx.Client(timeout=60) as client:
            i = 0
            while not stop.is_set():
                t = time.perf_counter()
                r = client.post(f"{stack.gateway_url}/v1/models/{MODEL}:predict", json=_body(images[i % len(images)]))
                results.append((r.status_code, time.perf_counter() - t))
                i += 1

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    _, dropped_before_kill = _counters(stack)
    sink.kill()
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(results) > 20
    assert [c for c, _ in results] == [200] * len(results)
    assert _wait(lambda: _counters(stack)[1] > dropped_before_kill)
    lat = np.array([s for _, s in results])
    print(f"\nlogger: baseline median {statistics.median(base_secs) * 1000:.1f} ms, slow sink median "
          f"{statistics.median(slow_secs) * 1000:.1f} ms (max {max(slow_secs) * 1000:.0f}), kill mid-load: "
          f"{len(results)} predictions all 200, p95 {np.percentile(lat, 95) * 1000:.0f} ms, "
          f"dropped {_counters(stack)[1]:.0f}")

"""Capture throughput against serving throughput, and the storage cost per 1,000 predictions.

    .venv/bin/python benchmarks/capture_throughput.py [--duration 20] [--concurrency 4] [--quick] [--json FILE]

One run, on this machine, with an untrained demo-spec model (64x64 MobileNetV2 width 0.5)
and evaluation images of the demo dataset re-encoded as JPEG:

  1. **served**: the local stack (gateway -> transformer -> Triton) with the logger fanned out
     by the broker to the capture sink (SQLite + local object folder), closed-loop clients at
     ``--concurrency`` for ``--duration`` s: predictions/s; then how long the capture sink needs
     to hold every one of them (lag) and the capture rate over the whole window;
  2. **capture alone**: the same kind of event pairs (request with the image, response with
     the prediction) POSTed straight to a fresh capture sink at concurrency 8: predictions
     stored per second, its ceiling on this machine;
  3. **storage**: object bytes and database bytes per captured prediction, per 1,000.

It prints ``capture_alone / served`` (> 1: capture keeps up with serving with room to spare).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")
REPO = Path(__file__).resolve().parent.parent
for extra in (REPO, REPO / "capture", REPO / "tests"):
    sys.path.insert(0, str(extra))


def make_images(n: int) -> list[bytes]:
    from PIL import Image

    from gourmetgram.data.demo import build_demo_dataset
    from gourmetgram.data.layout import list_images

    root = Path(tempfile.mkdtemp(prefix="capbench-data-"))
    build_demo_dataset(root)
    out = []
    for path, _ in list_images(root / "evaluation")[:n]:
        buf = io.BytesIO()
        Image.open(path).convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def make_bundle(root: Path) -> Path:
    import torch

    from gourmetgram.config import ExportConfig
    from gourmetgram.data.demo import DEMO_CLASSES
    from gourmetgram.export import export_bundle
    from gourmetgram.model import ModelSpec, build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec(class_names=DEMO_CLASSES, image_size=64, width_mult=0.5)).eval()
    bundle = root / "bundle"
    # one Triton instance: PyTriton's start-up handshake times out on a busy 2-core machine with two
    export_bundle(model, bundle, ExportConfig(max_batch_size=16, max_queue_delay_microseconds=5000))
    return bundle


def storage_bytes(root: Path) -> tuple[int, int]:
    objects = sum(p.stat().st_size for p in (root / "objects").rglob("*") if p.is_file())
    db = sum(p.stat().st_size for p in root.glob("loop.db*"))
    return objects, db


def captured(db_url: str) -> int:
    from gourmetgram.loop import quality
    from gourmetgram.loop.store import Store

    store = Store(db_url, migrate=False)
    try:
        with store.session() as s:
            return quality.status(s)["captured"]
    finally:
        store.dispose()


def served_run(bundle: Path, images: list[bytes], root: Path, duration: float, concurrency: int) -> dict:
    import httpx

    from gourmetgram_app.local.loop import LoopServices
    from gourmetgram_app.local.ports import Ports
    from gourmetgram_app.local.stack import LocalStack
    from gourmetgram_app.local.traffic import predict

    db = f"sqlite:///{root / 'loop.db'}"
    with LoopServices(bundle, root / "logs", db_url=db, objects_url=(root / "objects").as_uri()) as loop, \
            LocalStack(bundle, "production", Ports.free(), logger_url=loop.broker_url + "/",
                       feedback_url=loop.capture_url, model_version="1", log_dir=root / "logs") as stack:
        with httpx.Client(timeout=60) as c:  # warm-up, not counted
            for blob in images[:10]:
                predict(c, stack.gateway_url, blob)
        time.sleep(2)
        start_count = captured(db)
        codes: list[int] = []
        stop = threading.Event()

        def user(offset: int) -> None:
            with httpx.Client(timeout=60) as c:
                i = offset
                while not stop.is_set():
                    codes.append(predict(c, stack.gateway_url, images[i % len(images)]).status_code)
                    i += concurrency

        threads = [threading.Thread(target=user, args=(k,)) for k in range(concurrency)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(duration)
        stop.set()
        for t in threads:
            t.join()
        served_s = time.perf_counter() - t0
        ok = sum(code == 200 for code in codes)
        target = start_count + ok
        while captured(db) < target and time.perf_counter() - t0 < served_s + 120:
            time.sleep(0.2)
        done_s = time.perf_counter() - t0
        total = captured(db)
        dropped = httpx.get(f"{stack.gateway_url}/metrics").text
        drops = sum(float(line.split()[-1]) for line in dropped.splitlines()
                    if line.startswith("logger_events_dropped_total"))
    objects, dbytes = storage_bytes(root)
    return {"served": ok, "errors": len(codes) - ok, "served_per_s": ok / served_s,
            "captured": total - start_count, "capture_lag_s": max(0.0, done_s - served_s),
            "capture_per_s_over_window": (total - start_count) / done_s, "logger_dropped": drops,
            "captured_total": total, "object_bytes": objects, "db_bytes": dbytes}


def capture_alone(bundle: Path, images: list[bytes], root: Path, n: int, concurrency: int = 8) -> dict:
    import httpx
    from loop_helpers import ce_headers, request_body

    from gourmetgram.data.demo import DEMO_CLASSES
    from gourmetgram_app.local.loop import LoopServices

    db = f"sqlite:///{root / 'loop.db'}"
    loop = LoopServices(bundle, root / "logs", db_url=db, objects_url=(root / "objects").as_uri())
    loop.capture.start(cwd=root)  # the sink alone (no broker): events straight to it
    loop.capture.wait_ready(120)
    try:
        def response(i: int) -> bytes:
            label = DEMO_CLASSES[i % len(DEMO_CLASSES)]
            top = [{"label": label, "class_index": i % len(DEMO_CLASSES), "confidence": 0.8}]
            return json.dumps({"predictions": [{**top[0], "top_k": top}]}).encode()

        # distinct bytes per prediction (as production photos are): a comment segment in the JPEG
        def unique(blob: bytes, i: int) -> bytes:
            marker = f"gg{i:08d}".encode()
            return blob[:2] + b"\xff\xfe" + (len(marker) + 2).to_bytes(2, "big") + marker + blob[2:]

        events = []
        for i in range(n):
            ce_id = str(uuid.uuid4())
            events.append((request_body(unique(images[i % len(images)], i)), ce_headers(ce_id, "request")))
            events.append((response(i), ce_headers(ce_id, "response")))

        async def run() -> float:
            queue: asyncio.Queue = asyncio.Queue()
            for e in events:
                queue.put_nowait(e)
            async with httpx.AsyncClient(timeout=60) as client:
                async def worker():
                    while not queue.empty():
                        body, headers = queue.get_nowait()
                        while (await client.post(loop.capture_url + "/", content=body, headers=headers)).status_code == 503:
                            await asyncio.sleep(0.05)
                t0 = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                return time.perf_counter() - t0

        seconds = asyncio.run(run())
    finally:
        loop.capture.stop()
    stored = captured(db)
    objects, dbytes = storage_bytes(root)
    return {"predictions": n, "stored": stored, "seconds": seconds, "predictions_per_s": stored / seconds,
            "object_bytes": objects, "db_bytes": dbytes}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--alone", type=int, default=1000, help="predictions posted straight to the sink")
    p.add_argument("--quick", action="store_true", help="a smoke run (5 s, 100 predictions)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    if args.quick:
        args.duration, args.alone = 5.0, 100
    root = Path(tempfile.mkdtemp(prefix="capbench-"))
    images = make_images(64)
    bundle = make_bundle(root)
    served = served_run(bundle, images, root / "served", args.duration, args.concurrency)
    alone = capture_alone(bundle, images, root / "alone", args.alone)
    per_k_objects = alone["object_bytes"] / alone["stored"] * 1000
    per_k_db = alone["db_bytes"] / alone["stored"] * 1000
    mean_image = sum(map(len, images)) / len(images)
    result = {"served": served, "capture_alone": alone,
              "ratio_capture_alone_over_served": alone["predictions_per_s"] / served["served_per_s"],
              "storage_per_1000": {"object_bytes": per_k_objects, "db_bytes": per_k_db,
                                   "mean_image_bytes": mean_image}}
    print(f"served (gateway -> transformer -> Triton, c={args.concurrency}, {args.duration:.0f} s): "
          f"{served['served_per_s']:.1f} predictions/s, {served['errors']} errors; all "
          f"{served['captured']} captured {served['capture_lag_s']:.1f} s after the load stopped "
          f"(capture rate over the window {served['capture_per_s_over_window']:.1f}/s), logger drops "
          f"{served['logger_dropped']:.0f}")
    print(f"capture alone (events straight to the sink, c=8): {alone['predictions_per_s']:.1f} predictions/s "
          f"({alone['stored']} of {alone['predictions']} stored in {alone['seconds']:.1f} s)")
    print(f"capture alone / served: {result['ratio_capture_alone_over_served']:.2f}")
    print(f"storage per 1,000 predictions: objects {per_k_objects / 1e6:.2f} MB (mean image {mean_image / 1e3:.1f} kB), "
          f"metadata {per_k_db / 1e6:.2f} MB (SQLite incl. WAL)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

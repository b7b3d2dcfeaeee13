"""Drift detector throughput and detection delay, end to end over HTTP.

    .venv/bin/python benchmarks/detector_throughput.py [--bundle DIR --dataset DIR] [--events 600]

Without ``--bundle`` it builds the demo dataset and exports an untrained demo-spec model
into a temporary folder. It reports, in one run:
  * detector build time and load time (``load_detector`` re-runs the threshold bootstrap);
  * baseline: in-process embedding-only rate (ONNX Runtime, batches of 64), and the
    in-process embed + online-MMD rate (what the worker does, without HTTP);
  * end to end: ``python -m drift_detector`` on a free port, binary-mode CloudEvents
    POSTed by concurrent clients, events/s until all are processed, and the ratios;
  * detection delay: in-distribution events, then darkened images; samples and seconds
    from the first shifted event to ``drift_state`` 1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")

import numpy as np  # noqa: E402
from harness import free_port  # noqa: E402 - this folder's helpers
from PIL import Image  # noqa: E402

REQ = "org.kubeflow.serving.inference.request"


def headers(i: int) -> dict:
    return {"ce-specversion": "1.0", "ce-id": f"bench-{i}", "ce-type": REQ,
            "ce-source": "http://localhost:9081/", "ce-inferenceservicename": "food11",
            "ce-namespace": "bench", "ce-component": "transformer", "ce-endpoint": "default",
            "content-type": "application/json"}


def body(image: bytes) -> bytes:
    return json.dumps({"instances": [{"image": {"b64": base64.b64encode(image).decode()}}]}).encode()


def darken(data: bytes, factor: float = 0.4) -> bytes:
    out = io.BytesIO()
    Image.eval(Image.open(io.BytesIO(data)).convert("RGB"), lambda v: int(v * factor)).save(out, "JPEG", quality=90)
    return out.getvalue()



def make_bundle(work: Path) -> tuple[Path, Path]:
    import torch

    from gourmetgram.config import load_config
    from gourmetgram.data.demo import DEMO_CLASSES, build_demo_dataset
    from gourmetgram.export import export_bundle
    from gourmetgram.model import Classifier, ModelSpec

    dataset = build_demo_dataset(work / "demo", with_eval_sets=False)
    cfg = load_config("demo")
    torch.manual_seed(0)
    spec = ModelSpec(class_names=DEMO_CLASSES, image_size=cfg.model.image_size,
                     width_mult=cfg.model.width_mult, dropout=cfg.model.dropout)
    export_bundle(Classifier(spec).eval(), work / "bundle", cfg.export)
    return work / "bundle", dataset


async def post_all(port: int, payloads: list[tuple[dict, bytes]], concurrency: int) -> dict[int, int]:
    import httpx

    codes: dict[int, int] = {}
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        async def one(h, b):
            async with sem:
                r = await client.post("/", headers=h, content=b)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
        await asyncio.gather(*(one(h, b) for h, b in payloads))
    return codes


def status(port: int) -> dict:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/status", timeout=10).json()


def wait_processed(port: int, n: int, timeout: float = 300) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        s = status(port)
        if s["processed"] + s["dropped"] >= n:
            return time.perf_counter()
        time.sleep(0.02)
    raise TimeoutError(f"only {status(port)['processed']} of {n} events processed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle")
    parser.add_argument("--dataset")
    parser.add_argument("--events", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    from drift_detector.build import build_detector
    from drift_detector.detector import load_mmd, torch_threads
    from drift_detector.embedding import Embedder
    from gourmetgram.data.layout import list_images

    work = Path(tempfile.mkdtemp(prefix="ddbench-"))
    if args.bundle:
        bundle, dataset = Path(args.bundle), Path(args.dataset)
    else:
        bundle, dataset = make_bundle(work)
    t0 = time.perf_counter()
    build_detector(bundle, dataset)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    import alibi_detect.saving  # noqa: F401  (import cost reported apart from load)
    import_s = time.perf_counter() - t0
    cd, settings, load_s = load_mmd(bundle)
    print(f"build {build_s:.1f}s (embed {settings['timings']['embed_seconds']:.1f}s, "
          f"bootstrap {settings['timings']['configure_seconds']:.1f}s); alibi import {import_s:.1f}s; "
          f"load_detector {load_s:.1f}s")

    items = list_images(dataset / "evaluation")
    # Shuffled: traffic sorted by class is itself a (label) shift the detector would flag.
    order = np.random.default_rng(0).permutation(len(items))
    images = [items[i][0].read_bytes() for i in order]
    stream = (images * (args.events // len(images) + 1))[:args.events]

    emb = Embedder(bundle)
    emb.embed_images(stream[:64])
    t0 = time.perf_counter()
    x = np.concatenate([emb.embed_images(stream[i:i + 64]) for i in range(0, len(stream), 64)])
    embed_rate = len(stream) / (time.perf_counter() - t0)
    cd.reset_state()
    t0 = time.perf_counter()
    with torch_threads(1):
        for v in x:
            cd.predict(v)
    predict_rate = len(x) / (time.perf_counter() - t0)
    inproc_rate = 1 / (1 / embed_rate + 1 / predict_rate)
    print(f"in-process: embedding-only {embed_rate:.0f} img/s; MMD predict-only {predict_rate:.0f}/s; "
          f"embed + predict {inproc_rate:.0f}/s")

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "drift_detector", "--bundle", str(bundle), "--port",
                             str(port), "--max-queue", str(max(1000, 2 * args.events))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        t0 = time.perf_counter()
        while True:
            try:
                status(port)
                break
            except Exception as exc:
                if proc.poll() is not None or time.perf_counter() - t0 > 180:
                    raise RuntimeError("detector server did not start") from exc
                time.sleep(0.2)
        print(f"server start to ready: {time.perf_counter() - t0:.1f}s")
        payloads = [(headers(i), body(img)) for i, img in enumerate(stream)]
        t0 = time.perf_counter()
        codes = asyncio.run(post_all(port, payloads, args.concurrency))
        posted = time.perf_counter() - t0
        done = wait_processed(port, len(payloads)) - t0
        s = status(port)
        e2e = s["processed"] / done
        print(f"end to end: {len(payloads)} events, HTTP codes {codes}, POSTs done in {posted:.2f}s "
              f"({len(payloads) / posted:.0f} req/s accepted), all processed in {done:.2f}s -> "
              f"{e2e:.0f} events/s; dropped {s['dropped']}; drift flags {s['drift_flags']}")
        print(f"ratios: end-to-end / embedding-only = {e2e / embed_rate:.2f}; "
              f"end-to-end / in-process embed+predict = {e2e / inproc_rate:.2f}")

        # Detection delay: the detector is warm with in-distribution data; now the shift.
        t_before, flags_before = s["t"], s["drift_flags"]
        shifted = [(headers(10**6 + i), body(darken(img))) for i, img in enumerate(images[:100])]
        t0 = time.perf_counter()
        flagged_at = None

        async def send_and_watch():
            nonlocal flagged_at
            import httpx
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                for h, b in shifted:  # one at a time: a steady request stream
                    await client.post("/", headers=h, content=b)
                    st = (await client.get("/status")).json()
                    if flagged_at is None and any(t > t_before for t in st["recent_drift_t"]):
                        flagged_at = time.perf_counter() - t0
        asyncio.run(send_and_watch())
        wait_processed(port, len(payloads) + len(shifted))
        s = status(port)
        after = [t for t in s["recent_drift_t"] if t > t_before]
        delay = after[0] - t_before if after else None
        if flags_before:
            print(f"note: {flags_before} false alarm(s) in the in-distribution stream, at t = "
                  f"{[t for t in s['recent_drift_t'] if t <= t_before]}")
        print(f"detection delay: {delay} samples after the shift, {flagged_at and round(flagged_at, 2)}s "
              f"(window {settings['window_size']}, ERT {settings['ert']}, threshold {s['threshold']:.4g})")
    finally:
        proc.terminate()
        proc.wait(10)
        if not args.bundle:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

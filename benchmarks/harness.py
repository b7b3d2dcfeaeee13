"""What the benchmarks share: free ports, waiting for a server, percentiles, a spread over seeds,
the photos and bundle a serving benchmark runs on, and a closed-loop load generator.

The scripts in this folder run as ``python benchmarks/<name>.py``, so this folder is on
``sys.path`` and they import it as ``harness``.
"""

from __future__ import annotations

import base64
import http.client
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from gourmetgram.constants import HOST, MODEL_NAME
from gourmetgram.errors import BadInput, DependencyUnavailable
from gourmetgram.rollout.prometheus import free_port
from gourmetgram.tracking import home
from gourmetgram_app.local.bundles import find_latest_bundle

__all__ = ["free_port", "wait_http", "percentile", "percentiles", "spread", "load_images", "demo_bundle",
           "resolve_bundle", "run_load", "stack_caller"]


def wait_http(url_host: str, port: int, path: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Until ``GET path`` answers 200; a server that exits or never answers is exit 3."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DependencyUnavailable(f"server exited with code {proc.returncode} while starting")
        try:
            conn = http.client.HTTPConnection(url_host or HOST, port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise DependencyUnavailable(f"http://{url_host}:{port}{path} not ready after {timeout_s:.0f} s")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100, linear interpolation as numpy's default); NaN for none."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95, p99."""
    return percentile(values, 50), percentile(values, 95), percentile(values, 99)


def spread(values: Sequence[float]) -> str:
    """``mean ± sd (min..max)`` of one figure over seeds or runs."""
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f} ({min(values):.3f}..{max(values):.3f})"


# --- the photos and the bundle a serving benchmark runs on --------------------------------------

def load_images(folder: Path | None, limit: int) -> list[bytes]:
    if folder is None:
        folder = home() / "data" / "demo" / "evaluation"
        if not folder.is_dir():
            from gourmetgram.data.demo import build_demo_dataset

            build_demo_dataset(folder.parent)  # whole, as `make demo` expects to find it
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise BadInput(f"no JPEG/PNG images under {folder}")
    return [p.read_bytes() for p in paths[:limit]]


def demo_bundle(target: Path) -> Path:
    import torch

    from gourmetgram.config import ExportConfig
    from gourmetgram.data.demo import DEMO_CLASSES
    from gourmetgram.export import export_bundle
    from gourmetgram.model import ModelSpec, build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec(class_names=DEMO_CLASSES, image_size=64, width_mult=0.5)).eval()
    export_bundle(model, target, ExportConfig())
    return target


def resolve_bundle(arg: str | None, scratch: Path) -> Path:
    if arg:
        return Path(arg)
    try:
        return find_latest_bundle()
    except BadInput:
        print("no exported bundle found; exporting an untrained demo-spec model", file=sys.stderr)
        return demo_bundle(scratch / "demo-bundle")


# --- load ------------------------------------------------------------------------------------

def run_load(call: Callable[[bytes], None], images: list[bytes], requests: int,
             concurrency: int) -> dict:
    """``requests`` calls spread over ``concurrency`` threads; latency per call and throughput."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            call(images[i % len(images)])
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                latencies.append(dt)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    elapsed = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": len(latencies),
            "throughput_rps": len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "mean_ms": statistics.fmean(latencies)}


def stack_caller(url: str) -> Callable[[bytes], None]:
    local = threading.local()
    endpoint = f"{url}/v1/models/{MODEL_NAME}:predict"

    def call(image: bytes) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=60)
        body = {"instances": [{"image": {"b64": base64.b64encode(image).decode()}}]}
        r = client.post(endpoint, json=body)
        if r.status_code != 200:
            raise RuntimeError(f"{endpoint} answered {r.status_code}: {r.text[:200]}")

    return call

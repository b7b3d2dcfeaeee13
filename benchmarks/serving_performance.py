"""Serving performance: the in-process limit, the seed-style baseline and the served path.

One run, one model, one set of images, three measurements:

* **limit**: in this process, decode + preprocess + ONNX Runtime over the images at
  several batch sizes; the best batch size's images/s is what the hardware can do
  with no serving at all (no HTTP, no JSON/base64, no copies between processes).
* **baseline**: the course's seed design (``benchmarks/baseline_fastapi.py``): FastAPI,
  PyTorch eager, one image per request, in its own uvicorn process.
* **served**: the project's path, gateway -> KServe transformer -> Triton (PyTriton +
  ONNX Runtime, dynamic batching from ``config.pbtxt``), started with
  :class:`gourmetgram.local.stack.LocalStack`.

Each HTTP target is driven by closed-loop clients (threads, keep-alive connections) at
several concurrencies for a fixed duration; the table gives throughput, p50/p95/p99 and
errors, then the ratios served/limit and served/baseline.

The model is an untrained MobileNetV2 (speed does not depend on the weights) built from
a fixed seed. Images: the demo dataset's digits rendered as photos and upscaled to
512x384 JPEG (quality 90), so decoding costs what a phone photo's thumbnail would.

Run: ``python benchmarks/serving_performance.py`` (about 3-4 minutes) or ``--quick``
(a smoke run under a minute). ``--json FILE`` keeps the figures.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import http.client
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from gourmetgram.config import ExportConfig
from gourmetgram.constants import HOST, MODEL_NAME
from gourmetgram.errors import UserError

BENCH_DIR = Path(__file__).resolve().parent
NUM_CLASSES = 11
DEFAULT_CONCURRENCY = (1, 4, 16)
DEFAULT_BATCHES = (1, 4, 8, 16, 32)


@dataclasses.dataclass(frozen=True)
class Settings:
    image_size: int = 224
    width_mult: float = 1.0
    n_images: int = 64
    jpeg_size: tuple[int, int] = (512, 384)
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    duration_s: float = 12.0
    warmup_s: float = 2.0
    limit_batches: tuple[int, ...] = DEFAULT_BATCHES
    limit_rounds: int = 2
    int8: bool = False  # serve (and measure the limit of) a static INT8 model instead of FP32
    export: ExportConfig = ExportConfig(max_batch_size=32, preferred_batch_sizes=(),
                                        max_queue_delay_microseconds=2000, instance_count=1)


@dataclasses.dataclass(frozen=True)
class Point:
    """One measured point of the table."""

    target: str
    concurrency: int  # 0 for the in-process limit
    batch: int  # images per model call (1 for HTTP targets, the best size for the limit)
    requests: int
    errors: int
    seconds: float
    throughput: float  # images (= successful requests) per second
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_ms_per_image: dict = dataclasses.field(default_factory=dict)  # per process, incl. the client
    triton_avg_batch: float | None = None  # images per model execution, from Triton's metrics

    def row(self) -> str:
        conc = "-" if self.concurrency == 0 else str(self.concurrency)
        return (f"{self.target:<9} {conc:>5} {self.batch:>5} {self.requests:>7} {self.errors:>6} "
                f"{self.throughput:>9.1f} {self.p50_ms:>8.1f} {self.p95_ms:>8.1f} {self.p99_ms:>8.1f}")


HEADER = (f"{'target':<9} {'conc':>5} {'batch':>5} {'reqs':>7} {'errors':>6} "
          f"{'img/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")


def percentiles(latencies_ms: Sequence[float]) -> tuple[float, float, float]:
    if not latencies_ms:
        return (float("nan"),) * 3
    p = np.percentile(np.asarray(latencies_ms), [50, 95, 99])
    return float(p[0]), float(p[1]), float(p[2])


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User+system CPU seconds of each named process and all its descendants (and this
    process, the load generator, as ``client``): what each hop of the path costs."""
    import psutil

    out = {"client": sum(os.times()[:2])}
    for name, pid in pids.items():
        total = 0.0
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    total += t.user + t.system
        except psutil.Error:
            pass
        out[name] = total
    return out


def triton_counts(metrics_url: str) -> tuple[float, float]:
    """(images inferred, model executions) so far, from Triton's Prometheus metrics."""
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=5) as r:
        text = r.read().decode()
    inferred = executions = 0.0
    for line in text.splitlines():
        if line.startswith("nv_inference_count{"):
            inferred += float(line.rsplit(" ", 1)[1])
        elif line.startswith("nv_inference_exec_count{"):
            executions += float(line.rsplit(" ", 1)[1])
    return inferred, executions


def make_probe(pids: dict[str, int], metrics_url: str | None = None) -> Callable[[], dict]:
    """A snapshot function for :func:`run_load`: CPU seconds per process and Triton's counts."""
    def probe() -> dict:
        snap = {"cpu": cpu_seconds(pids)}
        if metrics_url:
            snap["triton"] = triton_counts(metrics_url)
        return snap
    return probe


def _attach(point: Point, before: dict, after: dict) -> Point:
    """CPU ms per successful image for each process, and Triton's average batch, over the
    measured window only (the warm-up is excluded)."""
    images = max(1, point.requests - point.errors)
    cpu = {k: 1000 * (after["cpu"][k] - before["cpu"][k]) / images for k in after["cpu"]}
    avg_batch = None
    if "triton" in after:
        executions = after["triton"][1] - before["triton"][1]
        avg_batch = (after["triton"][0] - before["triton"][0]) / executions if executions else None
    return dataclasses.replace(point, cpu_ms_per_image=cpu, triton_avg_batch=avg_batch)


# --------------------------------------------------------------------------- inputs


def make_images(n: int, size: tuple[int, int], seed: int = 0, quality: int = 90) -> list[bytes]:
    """``n`` JPEGs: demo-dataset digits rendered as photos, upscaled to ``size`` (w, h)."""
    from PIL import Image

    from gourmetgram.data.demo import load_digits, render_digit

    digits, _ = load_digits()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        photo = render_digit(digits[rng.randrange(len(digits))], rng)
        photo = photo.resize(size, Image.BICUBIC)
        buf = io.BytesIO()
        photo.save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def make_bundle(workdir: Path, settings: Settings, seed: int = 0) -> tuple[Path, Path]:
    """An untrained, seeded MobileNetV2 saved as a checkpoint and exported as a bundle."""
    import torch

    from gourmetgram.export import export_bundle
    from gourmetgram.model import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(seed)
    spec = ModelSpec(tuple(f"class_{i:02d}" for i in range(NUM_CLASSES)), settings.image_size,
                     "mobilenet_v2", settings.width_mult, 0.2)
    checkpoint = save_checkpoint(build_model(spec).eval(), workdir / "model.pt")
    export_bundle(checkpoint, workdir / "bundle", settings.export, overwrite=True)
    return checkpoint, workdir / "bundle"


# --------------------------------------------------------------------------- in-process limit


def measure_limit(onnx_path: Path, jpegs: Sequence[bytes], settings: Settings,
                  threads: int = 0) -> tuple[list[Point], dict]:
    """Decode + preprocess + ONNX Runtime in this process, per batch size; best-of rounds.

    Also times the two stages alone, which the report uses to say where the time goes.
    """
    from gourmetgram.preprocessing import preprocess_batch
    from gourmetgram.quantize import ort_session

    session = ort_session(onnx_path, threads)
    name = session.get_inputs()[0].name
    size = settings.image_size
    points: list[Point] = []
    session.run(None, {name: preprocess_batch(jpegs[:2], size)})  # warm-up
    for batch in settings.limit_batches:
        n = max(batch, len(jpegs) // batch * batch)
        images = [jpegs[i % len(jpegs)] for i in range(n)]
        best, lat = float("inf"), []
        for _ in range(settings.limit_rounds):
            lat = []
            start = time.perf_counter()
            for i in range(0, n, batch):
                t0 = time.perf_counter()
                session.run(None, {name: preprocess_batch(images[i:i + batch], size)})
                lat.append(1000 * (time.perf_counter() - t0))
            best = min(best, time.perf_counter() - start)
        p50, p95, p99 = percentiles(lat)
        points.append(Point("limit", 0, batch, n, 0, best, n / best, p50, p95, p99))
    # Stage costs, for the "where the time goes" section.
    start, cpu0 = time.perf_counter(), time.process_time()
    batch_arr = preprocess_batch(list(jpegs), size)
    decode_ms = 1000 * (time.perf_counter() - start) / len(jpegs)
    decode_cpu_ms = 1000 * (time.process_time() - cpu0) / len(jpegs)
    best_b = max(points, key=lambda p: p.throughput).batch
    start, cpu0 = time.perf_counter(), time.process_time()
    for i in range(0, len(batch_arr), best_b):
        session.run(None, {name: batch_arr[i:i + best_b]})
    ort_ms = 1000 * (time.perf_counter() - start) / len(batch_arr)
    ort_cpu_ms = 1000 * (time.process_time() - cpu0) / len(batch_arr)
    start = time.perf_counter()
    for i in range(len(batch_arr)):
        session.run(None, {name: batch_arr[i:i + 1]})
    ort1_ms = 1000 * (time.perf_counter() - start) / len(batch_arr)
    stages = {"decode_preprocess_ms_per_image": decode_ms, "ort_ms_per_image_best_batch": ort_ms,
              "decode_preprocess_cpu_ms_per_image": decode_cpu_ms, "ort_cpu_ms_per_image_best_batch": ort_cpu_ms,
              "ort_ms_per_image_batch1": ort1_ms, "best_batch": best_b}
    return points, stages


# --------------------------------------------------------------------------- load generation


def run_load(host: str, port: int, path: str, bodies: Sequence[bytes], concurrency: int,
             duration_s: float, warmup_s: float, target: str,
             check: Callable[[bytes], bool] = lambda body: True,
             probe: Callable[[], dict] | None = None) -> Point:
    """Closed-loop load: ``concurrency`` threads, each with one keep-alive connection,
    sending the bodies round-robin for ``warmup_s`` (not counted) then ``duration_s``."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: list[str] = []
    phase = {"measure": False, "stop": False}
    barrier = threading.Barrier(concurrency + 1)

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        i = k
        barrier.wait()
        while not phase["stop"]:
            body = bodies[i % len(bodies)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
                ok = response.status == 200 and check(payload)
                if not ok and not first_error:
                    first_error.append(f"HTTP {response.status}: {payload[:300]!r}")
            except (OSError, http.client.HTTPException) as exc:
                ok = False
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
            elapsed = 1000 * (time.perf_counter() - t0)
            if phase["measure"] and not phase["stop"]:
                if ok:
                    latencies[k].append(elapsed)
                else:
                    errors[k] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    time.sleep(warmup_s)
    before = probe() if probe else None
    phase["measure"] = True
    start = time.perf_counter()
    time.sleep(duration_s)
    phase["stop"] = True
    seconds = time.perf_counter() - start
    after = probe() if probe else None
    for t in threads:
        t.join(timeout=90)
    lat = [x for per in latencies for x in per]
    n_err = sum(errors)
    if n_err and first_error:
        print(f"  {target} c={concurrency}: {n_err} errors, first: {first_error[0]}", file=sys.stderr)
    p50, p95, p99 = percentiles(lat)
    point = Point(target, concurrency, 1, len(lat) + n_err, n_err, seconds, len(lat) / seconds, p50, p95, p99)
    return _attach(point, before, after) if probe else point


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_http(url_host: str, port: int, path: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise UserError(f"server exited with code {proc.returncode} while starting")
        try:
            conn = http.client.HTTPConnection(url_host, port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise UserError(f"http://{url_host}:{port}{path} not ready after {timeout_s:.0f} s")


@contextlib.contextmanager
def baseline_server(checkpoint: Path, log_path: Path) -> Iterator[tuple[int, int]]:
    """The seed-style FastAPI server in its own process, on a free port."""
    port = free_port()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "baseline_fastapi.py"), "--checkpoint", str(checkpoint),
             "--host", HOST, "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(HOST, port, "/health", 120, proc)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def write_manifest(path: Path) -> Path:
    """The staging InferenceService as rendered from the chart, without its inference logger:
    no detector is needed, so the figures are the request path alone."""
    import yaml

    from gourmetgram.local.manifests import MANIFEST_DIR

    docs = yaml.safe_load_all((MANIFEST_DIR / "staging.yaml").read_text())
    isvc = next(d for d in docs if d and d.get("kind") == "InferenceService")
    isvc["spec"]["predictor"].pop("logger", None)
    isvc["metadata"] = {"name": "food11-bench", "namespace": "gourmetgram-bench",
                        "annotations": isvc["metadata"].get("annotations", {})}
    path.write_text(yaml.safe_dump(isvc, sort_keys=False))
    return path


# --------------------------------------------------------------------------- the run


def _ok_served(payload: bytes) -> bool:
    return b'"predictions"' in payload


def _ok_baseline(payload: bytes) -> bool:
    return b'"prediction"' in payload


def summarise(points: list[Point]) -> dict:
    """Ratios: best served vs the limit, and served vs baseline at each concurrency."""
    by = {}
    for p in points:
        by.setdefault(p.target, []).append(p)
    best = {t: max(ps, key=lambda p: p.throughput) for t, ps in by.items()}
    ratios: dict = {}
    if "served" in best and "limit" in best:
        ratios["served_best/limit"] = best["served"].throughput / best["limit"].throughput
    if "served" in best and "baseline" in best:
        ratios["served_best/baseline_best"] = best["served"].throughput / best["baseline"].throughput
        base = {p.concurrency: p for p in by["baseline"]}
        for p in by["served"]:
            if p.concurrency in base and base[p.concurrency].throughput > 0:
                ratios[f"served/baseline@c{p.concurrency}"] = p.throughput / base[p.concurrency].throughput
    if "served" in by and "limit" in best:
        for p in by["served"]:
            ratios[f"served/limit@c{p.concurrency}"] = p.throughput / best["limit"].throughput
    return ratios


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run(settings: Settings, targets: Sequence[str], workdir: Path, out=sys.stdout) -> dict:
    """Measure every target in ``targets`` (limit, baseline, served); return the figures."""
    started = time.perf_counter()
    print(f"load average before: {load_average()} on {os.cpu_count()} cores", file=out, flush=True)
    checkpoint, bundle = make_bundle(workdir, settings)
    jpegs = make_images(settings.n_images, settings.jpeg_size)
    onnx_path = bundle / "triton" / MODEL_NAME / "1" / "model.onnx"
    if settings.int8:
        # Static INT8 for the limit and the served path alike (the baseline stays PyTorch FP32).
        from gourmetgram.preprocessing import preprocess_batch
        from gourmetgram.quantize import quantize_onnx

        fp32 = onnx_path.with_name("model_fp32.onnx")
        onnx_path.replace(fp32)
        quantize_onnx(fp32, onnx_path, "static", preprocess_batch(jpegs, settings.image_size))
        fp32.replace(workdir / "model_fp32.onnx")  # keep Triton's version folder to model.onnx alone
    points: list[Point] = []
    stages: dict = {}
    if "limit" in targets:
        limit_points, stages = measure_limit(onnx_path, jpegs, settings)
        points += limit_points
    b64 = [base64.b64encode(j).decode() for j in jpegs]
    if "baseline" in targets:
        bodies = [json.dumps({"image": s}).encode() for s in b64]
        with baseline_server(checkpoint, workdir / "baseline.log") as (port, pid):
            for c in settings.concurrency:
                points.append(run_load(HOST, port, "/predict", bodies, c, settings.duration_s,
                                       settings.warmup_s, "baseline", _ok_baseline,
                                       make_probe({"server": pid})))
    if "served" in targets:
        from gourmetgram.local.stack import LocalStack, Ports

        bodies = [json.dumps({"instances": [{"image": {"b64": s}}]}).encode() for s in b64]
        manifest = write_manifest(workdir / "staging.yaml")
        stack = LocalStack(bundle, "staging", Ports.free(), manifest=manifest, log_dir=workdir / "logs")
        with stack:
            port, path = stack.ports.gateway, f"/v1/models/{stack.model_name}:predict"
            for c in settings.concurrency:
                points.append(run_load(HOST, port, path, bodies, c, settings.duration_s,
                                       settings.warmup_s, "served", _ok_served,
                                       make_probe(stack.pids(), stack.triton_metrics_url)))
    ratios = summarise(points)
    result = {
        "settings": {**dataclasses.asdict(settings), "export": dataclasses.asdict(settings.export)},
        "images": f"{settings.n_images} demo digits rendered as photos, JPEG {settings.jpeg_size[0]}x"
                  f"{settings.jpeg_size[1]} q90, mean {np.mean([len(j) for j in jpegs]) / 1024:.1f} KiB",
        "points": [dataclasses.asdict(p) for p in points], "ratios": ratios, "stages": stages,
        "load_average_after": load_average(), "cpu_count": os.cpu_count(),
        "seconds": time.perf_counter() - started,
    }
    print_report(result, out)
    return result


def print_report(result: dict, out=sys.stdout) -> None:
    s = result["settings"]
    print(f"\nMobileNetV2 {s['image_size']}x{s['image_size']} width {s['width_mult']}, {NUM_CLASSES} classes, "
          f"{'INT8 (static) in ONNX Runtime' if s['int8'] else 'FP32'}; "
          f"images: {result['images']}", file=out)
    e = s["export"]
    print(f"served config: max_batch_size {e['max_batch_size']}, preferred {list(e['preferred_batch_sizes'])}, "
          f"queue delay {e['max_queue_delay_microseconds']} us, instances {e['instance_count']}", file=out)
    print(HEADER, file=out)
    for p in result["points"]:
        print(Point(**p).row(), file=out)
    print("CPU ms per image by process (client = the load generator):", file=out)
    for p in result["points"]:
        if p["cpu_ms_per_image"]:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in p["cpu_ms_per_image"].items())
            batch = f"; Triton batch {p['triton_avg_batch']:.1f}" if p["triton_avg_batch"] else ""
            print(f"  {p['target']:<9} c={p['concurrency']:<3} {parts}{batch}", file=out)
    if result["stages"]:
        st = result["stages"]
        print(f"stages (in process): decode+preprocess {st['decode_preprocess_ms_per_image']:.2f} ms/img, "
              f"ORT {st['ort_ms_per_image_best_batch']:.2f} ms/img at batch {st['best_batch']}, "
              f"{st['ort_ms_per_image_batch1']:.2f} ms/img at batch 1; CPU time: decode+preprocess "
              f"{st['decode_preprocess_cpu_ms_per_image']:.2f}, ORT {st['ort_cpu_ms_per_image_best_batch']:.2f} "
              f"ms/img", file=out)
    print("ratios:", file=out)
    for k, v in result["ratios"].items():
        print(f"  {k:<28} {v:6.2f}", file=out)
    print(f"load average after: {result['load_average_after']} on {result['cpu_count']} cores; "
          f"{result['seconds']:.0f} s in all", file=out, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run (< 1 minute): small model, short points")
    p.add_argument("--targets", default="limit,baseline,served", help="comma-separated subset")
    p.add_argument("--concurrency", default=None, help="comma-separated, default 1,4,16")
    p.add_argument("--duration", type=float, default=None, help="seconds per point (default 12)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--width-mult", type=float, default=None)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--preferred", default="", help="preferred batch sizes, comma-separated")
    p.add_argument("--queue-delay-us", type=int, default=2000)
    p.add_argument("--instances", type=int, default=1, help="Triton instance count")
    p.add_argument("--int8", action="store_true", help="limit and served path run a static INT8 model")
    p.add_argument("--workdir", type=Path, default=None, help="keep the bundle and logs here")
    p.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    export = ExportConfig(max_batch_size=args.max_batch_size,
                          preferred_batch_sizes=tuple(int(x) for x in args.preferred.split(",") if x),
                          max_queue_delay_microseconds=args.queue_delay_us, instance_count=args.instances)
    base = Settings(export=export, int8=args.int8)
    if args.quick:
        base = dataclasses.replace(base, image_size=96, width_mult=0.5, n_images=16, concurrency=(1, 4),
                                   duration_s=1.5, warmup_s=0.5, limit_batches=(1, 8), limit_rounds=1)
    changes = {}
    if args.concurrency:
        changes["concurrency"] = tuple(int(x) for x in args.concurrency.split(","))
    if args.duration:
        changes["duration_s"] = args.duration
    if args.image_size:
        changes["image_size"] = args.image_size
    if args.width_mult:
        changes["width_mult"] = args.width_mult
    return dataclasses.replace(base, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - {"limit", "baseline", "served"}
    if unknown:
        print(f"error: unknown target(s) {sorted(unknown)}; choose from limit, baseline, served", file=sys.stderr)
        return 2
    try:
        settings = settings_from(args)
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            result = run(settings, targets, args.workdir)
        else:
            with tempfile.TemporaryDirectory(prefix="gg-bench-") as tmp:
                result = run(settings, targets, Path(tmp))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

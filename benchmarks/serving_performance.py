"""Serving performance: the in-process limit, the seed baseline and the served path, interleaved.

One run, one model, one set of images; every measured configuration is a *cell*:

* **limit**: in this process, decode + preprocess + ONNX Runtime over the images at a
  batch size (ONNX Runtime with every core, with and without thread spinning): what the
  hardware can do with no serving at all;
* **baseline**: the course's seed design (``benchmarks/baseline_fastapi.py``: FastAPI,
  PyTorch eager, one image per request) in its own uvicorn process, tuned: PyTorch with 1
  thread (concurrent requests side by side on the cores) and with 2, at several concurrencies;
* **served**: gateway -> KServe transformer -> Triton (PyTriton + ONNX Runtime, dynamic
  batching from ``config.pbtxt``), started with :class:`gourmetgram_app.local.stack.LocalStack`,
  with the JSON/base64 contract (``json``) and with raw JPEG bytes (``raw``,
  ``Content-Type: application/octet-stream``).

All servers start first; then the cells are measured in round-robin windows (``--rounds``
windows of ``--window`` seconds each, a short unmeasured lead-in per window), so a load
change on a shared machine hits every cell alike; the limit is measured in the same windows.
HTTP cells are closed-loop clients (threads, keep-alive sockets, pre-built requests). After the
rounds, one open-loop window offers the best served variant half its peak rate (arrivals on a
fixed schedule; latency counted from the scheduled time), for "p95 at half of peak".

The table gives throughput, p50/p95/p99 and errors per cell, the CPU ms per image of every
process (the load generator as ``client``), Triton's formed batch, the ratios, and the issue-14
checks. The model is an untrained MobileNetV2 (speed does not depend on the weights) built from
a fixed seed. Images: the demo dataset's digits rendered as photos and upscaled to 512x384 JPEG
(quality 90). With ``--int8`` the limit and the served path run a static INT8 model
calibrated on other images than the timed ones.

Run: ``python benchmarks/serving_performance.py`` (about 5 minutes) or ``--quick`` (a smoke
run under a minute). ``--json FILE`` keeps the figures.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import functools
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
from harness import free_port, percentiles, wait_http  # this folder's helpers

from gourmetgram.bundle import Bundle
from gourmetgram.config import ExportConfig
from gourmetgram.constants import HOST, MODEL_NAME
from gourmetgram.errors import BadInput

BENCH_DIR = Path(__file__).resolve().parent
NUM_CLASSES = 11
DEFAULT_CONCURRENCY = (1, 4, 16, 32, 64)
DEFAULT_BASELINE_CONCURRENCY = (1, 2, 4)
DEFAULT_BASELINE_THREADS = (1, 2)
DEFAULT_BATCHES = (1, 8, 32)
DEFAULT_VARIANTS = ("json", "raw")


@dataclasses.dataclass(frozen=True)
class Settings:
    image_size: int = 224
    width_mult: float = 1.0
    n_images: int = 64
    jpeg_size: tuple[int, int] = (512, 384)
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    baseline_concurrency: tuple[int, ...] = DEFAULT_BASELINE_CONCURRENCY
    baseline_threads: tuple[int, ...] = DEFAULT_BASELINE_THREADS
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    window_s: float = 3.0  # one measured window per cell per round
    lead_s: float = 0.5  # unmeasured start of every window (connections, caches)
    rounds: int = 3
    limit_batches: tuple[int, ...] = DEFAULT_BATCHES
    half_peak_s: float = 8.0  # the open-loop window at half the peak rate (0: skip)
    int8: bool = False  # serve (and measure the limit of) a static INT8 model instead of FP32
    export: ExportConfig = ExportConfig(max_batch_size=32, preferred_batch_sizes=(),
                                        max_queue_delay_microseconds=5000, instance_count=2)


@dataclasses.dataclass(frozen=True)
class Point:
    """One measured point of the table."""

    target: str
    concurrency: int  # 0 for the in-process limit; for the open-loop point, its worker count
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
    variant: str = ""  # limit: spin|nospin; baseline: t<threads>; served: json|raw (+ @rate open loop)

    def row(self) -> str:
        conc = "-" if self.concurrency == 0 else str(self.concurrency)
        return (f"{self.target:<9} {self.variant:<12} {conc:>5} {self.batch:>5} {self.requests:>7} "
                f"{self.errors:>6} {self.throughput:>9.1f} {self.p50_ms:>8.1f} {self.p95_ms:>8.1f} "
                f"{self.p99_ms:>8.1f}")


HEADER = (f"{'target':<9} {'variant':<12} {'conc':>5} {'batch':>5} {'reqs':>7} {'errors':>6} "
          f"{'img/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")



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


# --------------------------------------------------------------------------- windows and cells


@dataclasses.dataclass
class Window:
    """One measured window of one cell."""

    ok: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    first_error: str | None = None
    before: dict | None = None  # probe snapshots at the window's measured start and end
    after: dict | None = None


@dataclasses.dataclass
class Cell:
    """One configuration measured in every round: ``measure(lead_s, seconds)`` -> a Window."""

    target: str
    variant: str
    concurrency: int
    batch: int
    measure: Callable[[float, float], Window]
    windows: list[Window] = dataclasses.field(default_factory=list)

    def point(self) -> Point:
        ok = sum(w.ok for w in self.windows)
        errors = sum(w.errors for w in self.windows)
        seconds = sum(w.seconds for w in self.windows)
        lat = [x for w in self.windows for x in w.latencies_ms]
        p50, p95, p99 = percentiles(lat)
        images = ok * (self.batch if self.target == "limit" else 1)
        cpu: dict[str, float] = {}
        executions = inferred = 0.0
        for w in self.windows:
            if w.before and w.after:
                for k in w.after["cpu"]:
                    cpu[k] = cpu.get(k, 0.0) + w.after["cpu"][k] - w.before["cpu"].get(k, 0.0)
                if "triton" in w.after:
                    inferred += w.after["triton"][0] - w.before["triton"][0]
                    executions += w.after["triton"][1] - w.before["triton"][1]
        per_image = {k: 1000 * v / max(1, images) for k, v in cpu.items()}
        return Point(self.target, self.concurrency, self.batch, images + errors, errors, seconds,
                     images / seconds if seconds else 0.0, p50, p95, p99, per_image,
                     inferred / executions if executions else None, self.variant)


def limit_session(onnx_path: Path, spinning: bool):
    """ONNX Runtime with every core, as the served path's Triton instances run it (spinning or not)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def limit_window(session, jpegs: Sequence[bytes], batch: int, image_size: int, lead_s: float,
                 seconds: float, probe: Callable[[], dict]) -> Window:
    """Decode + preprocess + ORT in this process, ``batch`` images per call, for a window."""
    from gourmetgram.preprocessing import preprocess_batch

    name = session.get_inputs()[0].name
    n, i, calls, lat = len(jpegs), 0, 0, []
    before = None
    start = time.perf_counter()
    measure_from, end = start + lead_s, start + lead_s + seconds
    last = measure_from
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        if before is None and t0 >= measure_from:
            before, measure_from = probe(), t0
        images = [jpegs[(i + k) % n] for k in range(batch)]
        i += batch
        session.run(None, {name: preprocess_batch(images, image_size)})
        last = time.perf_counter()
        if before is not None:
            calls += 1
            lat.append(1000 * (last - t0))
    return Window(calls, 0, last - measure_from, lat, None, before or probe(), probe())


def measure_stages(session, jpegs: Sequence[bytes], image_size: int, batch: int) -> dict:
    """CPU ms per image of decode + preprocess alone and of ORT alone (where the time goes)."""
    from gourmetgram.preprocessing import preprocess_batch

    cpu0 = time.process_time()
    arr = preprocess_batch(list(jpegs), image_size)
    decode = 1000 * (time.process_time() - cpu0) / len(jpegs)
    name = session.get_inputs()[0].name
    session.run(None, {name: arr[:batch]})
    cpu0 = time.process_time()
    for i in range(0, len(arr), batch):
        session.run(None, {name: arr[i:i + batch]})
    ort_ms = 1000 * (time.process_time() - cpu0) / len(arr)
    return {"decode_preprocess_cpu_ms_per_image": decode, "ort_cpu_ms_per_image": ort_ms, "batch": batch}


# --------------------------------------------------------------------------- load generation


class RawHTTP:
    """A minimal keep-alive HTTP/1.1 client on one socket: the load generator's own CPU per
    request stays small (pre-built request bytes, Content-Length responses only)."""

    def __init__(self, host: str, port: int, timeout_s: float = 60.0) -> None:
        self.address, self.timeout_s = (host, port), timeout_s
        self.sock: socket.socket | None = None
        self.buf = b""

    def call(self, request: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout_s)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf = b""
        self.sock.sendall(request)
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv()
        head, rest = buf[:end].decode("latin-1"), buf[end + 4:]
        status, length = int(head.split(" ", 2)[1]), None
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                length = int(value)
        if length is None:
            raise http.client.HTTPException(f"response without Content-Length: {head[:200]!r}")
        while len(rest) < length:
            rest += self._recv()
        body, self.buf = rest[:length], rest[length:]
        return status, body

    def _recv(self) -> bytes:
        assert self.sock is not None
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None


def http_request(host: str, port: int, path: str, body: bytes, content_type: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _call(client: RawHTTP, request: bytes, check: Callable[[bytes], bool]) -> str | None:
    """None if the answer is a correct 200, else what went wrong."""
    try:
        status, payload = client.call(request)
    except (OSError, http.client.HTTPException, ValueError, IndexError) as exc:
        client.close()
        return f"{type(exc).__name__}: {exc}"
    if status == 200 and check(payload):
        return None
    return f"HTTP {status}: {payload[:300]!r}"


def closed_loop(host: str, port: int, requests: Sequence[bytes], concurrency: int, lead_s: float,
                seconds: float, check: Callable[[bytes], bool] = lambda body: True,
                probe: Callable[[], dict] | None = None) -> Window:
    """``concurrency`` threads, each with one keep-alive connection, sending the requests
    round-robin: ``lead_s`` not counted, then ``seconds`` measured."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: list[str] = []
    phase = {"measure": False, "stop": False}
    barrier = threading.Barrier(concurrency + 1)

    def worker(k: int) -> None:
        client, i = RawHTTP(host, port), k
        barrier.wait()
        while not phase["stop"]:
            t0 = time.perf_counter()
            error = _call(client, requests[i % len(requests)], check)
            i += concurrency
            elapsed = 1000 * (time.perf_counter() - t0)
            if phase["measure"] and not phase["stop"]:
                if error is None:
                    latencies[k].append(elapsed)
                else:
                    errors[k] += 1
                    if not first_error:
                        first_error.append(error)
        client.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    time.sleep(lead_s)
    before = probe() if probe else None
    phase["measure"] = True
    start = time.perf_counter()
    time.sleep(seconds)
    phase["stop"] = True
    elapsed = time.perf_counter() - start
    after = probe() if probe else None
    for t in threads:
        t.join(timeout=90)
    lat = [x for per in latencies for x in per]
    return Window(len(lat), sum(errors), elapsed, lat, first_error[0] if first_error else None, before, after)


def open_loop(host: str, port: int, requests: Sequence[bytes], rate: float, seconds: float,
              workers: int = 64, check: Callable[[bytes], bool] = lambda body: True,
              probe: Callable[[], dict] | None = None) -> Window:
    """Requests offered at ``rate`` per second on a fixed schedule, whatever the answers do;
    each latency counts from the request's scheduled time, so queueing shows."""
    n = max(1, int(rate * seconds))
    lock, nxt = threading.Lock(), [0]
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter() + 0.3

    def worker() -> None:
        client = RawHTTP(host, port)
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= n:
                break
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            error = _call(client, requests[i % len(requests)], check)
            with lock:
                if error is None:
                    latencies.append(1000 * (time.perf_counter() - due))
                else:
                    errors.append(error)
        client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start - time.perf_counter()))
    before = probe() if probe else None
    for t in threads:
        t.join(timeout=seconds + 120)
    elapsed = time.perf_counter() - start
    after = probe() if probe else None
    return Window(len(latencies), len(errors), elapsed, latencies, errors[0] if errors else None, before, after)




@contextlib.contextmanager
def baseline_server(checkpoint: Path, log_path: Path, threads: int = 0) -> Iterator[tuple[int, int]]:
    """The seed-style FastAPI server in its own process, on a free port (``threads``: PyTorch's)."""
    port = free_port()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "baseline_fastapi.py"), "--checkpoint", str(checkpoint),
             "--host", HOST, "--port", str(port), "--threads", str(threads)],
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

    from gourmetgram_app.local.manifests import MANIFEST_DIR

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


def _tag(p: Point) -> str:
    return f"{p.target}[{p.variant}]" if p.variant else p.target


def summarise(points: list[Point]) -> dict:
    """Ratios: best served vs the best limit and the best (tuned) baseline, per served variant
    and concurrency; the issue-14 latency figure (p95 at half of peak vs the single-request p50)."""
    closed = [p for p in points if "@" not in p.variant]
    by: dict[str, list[Point]] = {}
    for p in closed:
        by.setdefault(p.target, []).append(p)
    best = {t: max(ps, key=lambda p: p.throughput) for t, ps in by.items()}
    ratios: dict = {}
    if "served" in best and "limit" in best:
        ratios["served_best/limit"] = best["served"].throughput / best["limit"].throughput
    if "served" in best and "baseline" in best:
        ratios["served_best/baseline_best"] = best["served"].throughput / best["baseline"].throughput
        base = {p.concurrency: p for p in sorted(by["baseline"], key=lambda p: p.throughput)}
        for p in by["served"]:
            if p.concurrency in base and base[p.concurrency].throughput > 0:
                ratios[f"{_tag(p)}/baseline@c{p.concurrency}"] = p.throughput / base[p.concurrency].throughput
    if "served" in by and "limit" in best:
        for p in by["served"]:
            ratios[f"{_tag(p)}/limit@c{p.concurrency}"] = p.throughput / best["limit"].throughput
    for p in points:
        if p.target == "served" and "@" in p.variant:
            variant = p.variant.split("@")[0]
            single = next((q for q in closed if q.target == "served" and q.variant == variant
                           and q.concurrency == 1), None)
            if single and single.p50_ms > 0:
                ratios["half_peak_p95/single_p50"] = p.p95_ms / single.p50_ms
    return ratios


CHECKS = (("served_best/limit", ">=", 0.85), ("served_best/baseline_best", ">=", 2.5),
          ("half_peak_p95/single_p50", "<=", 3.0))


def checks(ratios: dict) -> list[tuple[str, str, float, float | None, bool]]:
    """The issue-14 targets: (name, op, target, measured, met)."""
    out = []
    for name, op, target in CHECKS:
        value = ratios.get(name)
        met = value is not None and (value >= target if op == ">=" else value <= target)
        out.append((name, op, target, value, met))
    return out


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run(settings: Settings, targets: Sequence[str], workdir: Path, out=sys.stdout) -> dict:
    """Start every server, measure every cell in round-robin windows, return the figures."""
    started = time.perf_counter()
    load_before = load_average()
    print(f"load average before: {load_before} on {os.cpu_count()} cores", file=out, flush=True)
    checkpoint, bundle = make_bundle(workdir, settings)
    jpegs = make_images(settings.n_images, settings.jpeg_size)
    onnx_path = Bundle(bundle, MODEL_NAME).onnx_path
    if settings.int8:
        # Static INT8 for the limit and the served path alike (the baseline stays PyTorch FP32),
        # calibrated on images the benchmark does not time (another seed).
        from gourmetgram.preprocessing import preprocess_batch
        from gourmetgram.quantize import quantize_onnx

        calibration = make_images(settings.n_images, settings.jpeg_size, seed=1)
        fp32 = onnx_path.with_name("model_fp32.onnx")
        onnx_path.replace(fp32)
        quantize_onnx(fp32, onnx_path, "static", preprocess_batch(calibration, settings.image_size))
        fp32.replace(workdir / "model_fp32.onnx")  # keep Triton's version folder to model.onnx alone
    cells: list[Cell] = []
    stages: dict = {}
    served_requests: dict[str, list[bytes]] = {}
    with contextlib.ExitStack() as stack:
        if "limit" in targets:
            in_process = make_probe({})
            for spinning in (False, True):
                session = limit_session(onnx_path, spinning)
                for batch in (settings.limit_batches if not spinning else settings.limit_batches[-2:-1]):
                    cells.append(Cell("limit", "spin" if spinning else "nospin", 0, batch,
                                      functools.partial(limit_window, session, jpegs, batch, settings.image_size,
                                                        probe=in_process)))
                if not spinning:
                    stages = measure_stages(session, jpegs, settings.image_size, settings.limit_batches[-1])
        b64 = [base64.b64encode(j).decode() for j in jpegs]
        if "baseline" in targets:
            bodies = [json.dumps({"image": x}).encode() for x in b64]
            for threads in settings.baseline_threads:
                port, pid = stack.enter_context(baseline_server(checkpoint, workdir / f"baseline-t{threads}.log",
                                                                threads))
                requests = [http_request(HOST, port, "/predict", b, "application/json") for b in bodies]
                for c in settings.baseline_concurrency:
                    cells.append(Cell("baseline", f"t{threads}", c, 1, functools.partial(
                        closed_loop, HOST, port, requests, c, check=_ok_baseline,
                        probe=make_probe({"server": pid}))))
        if "served" in targets:
            from gourmetgram_app.local.ports import Ports
            from gourmetgram_app.local.stack import LocalStack

            manifest = write_manifest(workdir / "staging.yaml")
            local = stack.enter_context(LocalStack(bundle, "staging", Ports.free(), manifest=manifest,
                                                   log_dir=workdir / "logs"))
            port, path = local.ports.gateway, f"/v1/models/{local.model_name}:predict"
            probe = make_probe(local.pids(), local.triton_metrics_url)
            variants = {
                "json": [http_request(HOST, port, path, json.dumps({"instances": [{"image": {"b64": x}}]}).encode(),
                                      "application/json") for x in b64],
                "raw": [http_request(HOST, port, path, j, "application/octet-stream") for j in jpegs],
            }
            for variant in settings.variants:
                served_requests[variant] = variants[variant]
                for c in settings.concurrency:
                    cells.append(Cell("served", variant, c, 1, functools.partial(
                        closed_loop, HOST, port, variants[variant], c, check=_ok_served, probe=probe)))
        print(f"{len(cells)} cells x {settings.rounds} rounds of {settings.window_s:.0f} s windows",
              file=out, flush=True)
        for r in range(settings.rounds):
            order = cells if r % 2 == 0 else cells[::-1]  # no cell always first after a server's idle time
            for cell in order:
                window = cell.measure(settings.lead_s, settings.window_s)
                cell.windows.append(window)
                if window.first_error:
                    print(f"  {cell.target}[{cell.variant}] c={cell.concurrency}: {window.errors} errors, "
                          f"first: {window.first_error}", file=sys.stderr)
            print(f"  round {r + 1}/{settings.rounds} done, load average {load_average()}", file=out, flush=True)
        points = [c.point() for c in cells]
        served = [p for p in points if p.target == "served"]
        if served and settings.half_peak_s > 0:
            peak = max(served, key=lambda p: p.throughput)
            rate = peak.throughput / 2
            half = Cell("served", f"{peak.variant}@{rate:.0f}/s", 64, 1, lambda lead, secs: open_loop(
                HOST, local.ports.gateway, served_requests[peak.variant], rate, secs, 64, _ok_served, probe))
            half.windows.append(half.measure(0.0, settings.half_peak_s))
            points.append(half.point())
    ratios = summarise(points)
    result = {
        "settings": {**dataclasses.asdict(settings), "export": dataclasses.asdict(settings.export)},
        "images": f"{settings.n_images} demo digits rendered as photos, JPEG {settings.jpeg_size[0]}x"
                  f"{settings.jpeg_size[1]} q90, mean {np.mean([len(j) for j in jpegs]) / 1024:.1f} KiB",
        "points": [dataclasses.asdict(p) for p in points], "ratios": ratios, "stages": stages,
        "checks": [dict(zip(("name", "op", "target", "value", "met"), c)) for c in checks(ratios)],
        "load_average_before": load_before, "load_average_after": load_average(), "cpu_count": os.cpu_count(),
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
          f"queue delay {e['max_queue_delay_microseconds']} us, instances {e['instance_count']}; "
          f"{s['rounds']} interleaved rounds of {s['window_s']} s per cell", file=out)
    print(HEADER, file=out)
    for p in result["points"]:
        print(Point(**p).row(), file=out)
    print("CPU ms per image by process (client = this process: the load generator, or the limit itself):", file=out)
    for p in result["points"]:
        if p["cpu_ms_per_image"]:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in p["cpu_ms_per_image"].items())
            total = sum(v for k, v in p["cpu_ms_per_image"].items() if k != "client" or p["target"] == "limit")
            batch = f"; Triton batch {p['triton_avg_batch']:.1f}" if p["triton_avg_batch"] else ""
            print(f"  {p['target']:<9} {p['variant']:<12} c={p['concurrency']:<3} b={p['batch']:<3} {parts}; "
                  f"servers {total:.1f}{batch}", file=out)
    if result["stages"]:
        st = result["stages"]
        print(f"stages (in process, CPU): decode+preprocess {st['decode_preprocess_cpu_ms_per_image']:.2f} ms/img, "
              f"ORT {st['ort_cpu_ms_per_image']:.2f} ms/img at batch {st['batch']}", file=out)
    print("ratios:", file=out)
    for k, v in result["ratios"].items():
        print(f"  {k:<34} {v:6.2f}", file=out)
    print("issue 14 targets:", file=out)
    for c in result["checks"]:
        value = "n/a" if c["value"] is None else f"{c['value']:.2f}"
        print(f"  {c['name']:<34} {value:>6} (target {c['op']} {c['target']}): "
              f"{'met' if c['met'] else 'NOT met'}", file=out)
    print(f"load average before: {result['load_average_before']}, after: {result['load_average_after']} on "
          f"{result['cpu_count']} cores; {result['seconds']:.0f} s in all", file=out, flush=True)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run (< 1 minute): small model, short windows")
    p.add_argument("--targets", default="limit,baseline,served", help="comma-separated subset")
    p.add_argument("--concurrency", default=None, help="served, comma-separated (default 1,4,16,32,64)")
    p.add_argument("--baseline-concurrency", default=None, help="comma-separated (default 1,2,4)")
    p.add_argument("--baseline-threads", default=None, help="PyTorch threads per baseline server (default 1,2)")
    p.add_argument("--variants", default=None, help="served request kinds: json,raw (default both)")
    p.add_argument("--window", type=float, default=None, help="seconds per measured window (default 3)")
    p.add_argument("--rounds", type=int, default=None, help="round-robin rounds (default 3)")
    p.add_argument("--half-peak", type=float, default=None,
                   help="seconds of the open-loop window at half the peak rate (default 8; 0 skips it)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--width-mult", type=float, default=None)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--preferred", default="", help="preferred batch sizes, comma-separated")
    p.add_argument("--queue-delay-us", type=int, default=5000, help="Triton's batching window (demo: 5000)")
    p.add_argument("--instances", type=int, default=2, help="Triton instance count (demo: 2)")
    p.add_argument("--int8", action="store_true", help="limit and served path run a static INT8 model")
    p.add_argument("--workdir", type=Path, default=None, help="keep the bundle and logs here")
    p.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    export = ExportConfig(max_batch_size=args.max_batch_size, preferred_batch_sizes=_ints(args.preferred),
                          max_queue_delay_microseconds=args.queue_delay_us, instance_count=args.instances)
    base = Settings(export=export, int8=args.int8)
    if args.quick:
        base = dataclasses.replace(base, image_size=96, width_mult=0.5, n_images=16, concurrency=(1, 4),
                                   baseline_concurrency=(1, 2), baseline_threads=(1,), window_s=1.0,
                                   lead_s=0.3, rounds=2, limit_batches=(1, 8), half_peak_s=2.0)
    changes: dict = {}
    for flag, field in (("concurrency", "concurrency"), ("baseline_concurrency", "baseline_concurrency"),
                        ("baseline_threads", "baseline_threads")):
        if getattr(args, flag):
            changes[field] = _ints(getattr(args, flag))
    if args.variants:
        variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
        if not variants or set(variants) - set(DEFAULT_VARIANTS):
            raise BadInput(f"--variants: choose from {', '.join(DEFAULT_VARIANTS)}")
        changes["variants"] = variants
    for flag, field in (("window", "window_s"), ("rounds", "rounds"), ("half_peak", "half_peak_s"),
                        ("image_size", "image_size"), ("width_mult", "width_mult")):
        if getattr(args, flag) is not None:
            changes[field] = getattr(args, flag)
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
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

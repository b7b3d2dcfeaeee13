"""Serving latency and throughput through the local stack, against an in-process baseline.

Starts the real stack (PyTriton + kserve transformer + gateway) on free ports, then measures,
on the same JPEG images:

* single-request latency (one image per request, sequential): p50 / p95;
* throughput and latency at concurrency 1, 4 and 16 (threads, one image per request);
* the same for the baseline in the same run: decode + the shared preprocessing + ONNX
  Runtime on the exported ``model.onnx`` in this process (no HTTP, no batching), so the
  ratios say what the serving path costs on this machine.

Usage::

    python benchmarks/serving_latency.py [--bundle DIR] [--images DIR] [--requests 200]

Without ``--bundle`` it uses the newest bundle under ``$GOURMETGRAM_HOME/models``, or
exports an untrained demo-spec model when there is none (latency does not depend on the
weights). Without ``--images`` it uses the demo dataset's evaluation split (built if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

from harness import load_images, resolve_bundle, run_load, stack_caller  # this folder's helpers

from gourmetgram.bundle import Bundle
from gourmetgram.constants import MODEL_NAME
from gourmetgram.preprocessing import preprocess_bytes, softmax
from gourmetgram_app.local.ports import Ports
from gourmetgram_app.local.stack import LocalStack


def baseline_caller(bundle: Path, image_size: int) -> Callable[[bytes], None]:
    """In-process: decode + preprocess + ONNX Runtime + softmax, one image per call."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(Bundle(bundle, MODEL_NAME).onnx_path), options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def call(image: bytes) -> None:
        x = preprocess_bytes(image, image_size)[None]
        softmax(session.run(None, {name: x})[0])

    return call


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", help="export bundle (default: newest, or a demo export)")
    p.add_argument("--images", type=Path, help="folder of JPEG/PNG images (default: demo evaluation split)")
    p.add_argument("--requests", type=int, default=200, help="requests per measurement")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    from gourmetgram.export import load_model_spec

    with tempfile.TemporaryDirectory() as scratch:
        bundle = resolve_bundle(args.bundle, Path(scratch))
        spec = load_model_spec(bundle)
        images = load_images(args.images, 256)
        print(f"bundle {bundle} (image_size {spec.image_size}, {spec.num_classes} classes); "
              f"{len(images)} images; {os.cpu_count()} CPU cores", flush=True)
        results: dict[str, list[dict]] = {"stack": [], "transformer": [], "baseline": []}
        baseline = baseline_caller(bundle, spec.image_size)
        for _ in range(20):
            baseline(images[0])
        with LocalStack(bundle, "staging", Ports.free(), log_dir=Path(scratch) / "logs") as stack:
            call = stack_caller(stack.gateway_url)
            direct = stack_caller(stack.transformer_url)  # the same path minus the gateway hop
            run_load(call, images, 30, 4)  # warm-up: connections, ORT, batcher
            for c in levels:
                results["stack"].append(run_load(call, images, args.requests, c))
                results["transformer"].append(run_load(direct, images, args.requests, c))
                results["baseline"].append(run_load(baseline, images, args.requests, c))
    print(f"\n{'path':<11} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for name in ("baseline", "transformer", "stack"):
        for r in results[name]:
            print(f"{name:<11} {r['concurrency']:>4} {r['throughput_rps']:>8.1f} "
                  f"{r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f}")
    print("\nstack / baseline:")
    for s, b in zip(results["stack"], results["baseline"]):
        print(f"  concurrency {s['concurrency']:>2}: p50 x{s['p50_ms'] / b['p50_ms']:.1f}, "
              f"p95 x{s['p95_ms'] / b['p95_ms']:.1f}, throughput x{s['throughput_rps'] / b['throughput_rps']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

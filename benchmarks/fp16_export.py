"""FP32 vs FP16 export of one model (issue 14): file size, parity with PyTorch FP32, what ONNX
Runtime's CPU provider does with the float16 graph, and CPU time per image (ratio in one run).

    python benchmarks/fp16_export.py [--checkpoint model.pt] [--image-size 224] [--images 64]

Without a checkpoint it exports a freshly initialised MobileNetV2 (11 classes): sizes, casts and
time do not depend on the weights; parity figures of an untrained model are only indicative
(its logits are small). GPU speed (CUDA / TensorRT FP16) is not measured: no GPU here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gourmetgram.config import ExportConfig  # noqa: E402
from gourmetgram.export import export_bundle  # noqa: E402
from gourmetgram.export.onnx_graph import ort_session  # noqa: E402


def _ms_per_image(sessions: dict[str, object], images: np.ndarray, rounds: int, batch: int) -> dict[str, float]:
    """Interleaved rounds, so both graphs see the same machine load; median per image."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            inp = session.get_inputs()[0].name  # type: ignore[attr-defined]
            start = time.perf_counter()
            for i in range(0, len(images), batch):
                session.run(None, {inp: images[i:i + batch]})  # type: ignore[attr-defined]
            times[name].append((time.perf_counter() - start) * 1000 / len(images))
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a training checkpoint (default: a fresh MobileNetV2)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", type=int, default=64, help="random parity/timing images")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args(argv)

    import torch

    from gourmetgram.classes import FOOD11_CLASSES
    from gourmetgram.model import ModelSpec, build_model, load_checkpoint

    if args.checkpoint:
        model = load_checkpoint(args.checkpoint)
    else:
        torch.manual_seed(0)
        model = build_model(ModelSpec(tuple(FOOD11_CLASSES), args.image_size)).eval()
    size = model.spec.image_size
    images = np.random.default_rng(0).standard_normal((args.images, 3, size, size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        results = {precision: export_bundle(model, Path(tmp) / precision, ExportConfig(precision=precision),
                                            parity_images=images)
                   for precision in ("fp32", "fp16")}
        sessions = {name: ort_session(r.onnx_path) for name, r in results.items()}
        ms = _ms_per_image(sessions, images, args.rounds, args.batch)
        for name, r in results.items():
            q = r.parity
            print(f"{name}: model.onnx {Path(r.onnx_path).stat().st_size / 1e6:.2f} MB, max |logit diff| vs "
                  f"PyTorch FP32 {q.max_abs_diff:.2e}, top-1 agreement {q.top1_agreement:.3f} on {q.n_images} "
                  f"images, CPU casts inserted {q.cpu_upcast_casts}, ONNX Runtime CPU {ms[name]:.2f} ms/image "
                  f"(batch {args.batch})")
    print(f"fp16/fp32 CPU time ratio {ms['fp16'] / ms['fp32']:.2f} (same run, interleaved); "
          "GPU (CUDA/TensorRT FP16) not measured here")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training speed on a GPU against the CPU of the same machine (the baseline in the same run).

Two measurements, each on every device asked for (``--devices cpu,cuda``):

1. **The project's own training** (``gourmetgram.training.train``, the function the pipeline's
   train step calls) on the demo dataset with the demo config, ``train.device`` set per device:
   wall time per epoch, images per second, the validation accuracy it reached (same seed).
2. **Train-step throughput** of each model spec (the demo's MobileNetV2 width 0.5 at 64x64, the
   Food-11 config's MobileNetV2 at 224x224) on tensors already on the device: forward, backward
   and AdamW step in FP32, and on CUDA also under bf16 autocast; images per second after warm-up.

    python benchmarks/gpu_training.py                       # cpu and, when present, cuda
    python benchmarks/gpu_training.py --devices cpu --quick # a smoke run (what the test runs)

The project's training has no mixed-precision option: the bf16 rows say what one would buy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from gourmetgram.config import load_config, override  # noqa: E402
from gourmetgram.errors import BadInput, entry_point  # noqa: E402
from gourmetgram.model import ModelSpec, build_model  # noqa: E402

SPECS = {"demo": "demo", "food11": "food11"}  # model spec from configs/<name>.yaml


def project_training(devices: list[str], epochs: int, work: Path, num_workers: int | None) -> list[dict]:
    """``train()`` on the demo dataset once per device: seconds per epoch, images/s, accuracy."""
    from gourmetgram.data.demo import build_demo_dataset
    from gourmetgram.data.layout import validate_dataset
    from gourmetgram.training import train

    root = build_demo_dataset(work / "demo", with_eval_sets=False)
    report = validate_dataset(root, progress=False)
    rows = []
    for device in devices:
        cfg = override(load_config("demo"), "train", device=device, epochs=epochs, patience=epochs + 1,
                       num_workers=num_workers)
        started = time.perf_counter()
        result = train(root, report, cfg, work / f"{device}.pt", log_to_mlflow=False, progress=False)
        seconds = time.perf_counter() - started
        images = report.total("training") * epochs
        rows.append({"device": device, "epochs": epochs, "seconds": seconds, "s_per_epoch": seconds / epochs,
                     "images_per_s": images / seconds, "val_accuracy": result.best_val_accuracy})
    return rows


def step_throughput(spec_name: str, device: str, precision: str, batch: int, steps: int) -> float:
    """Images per second of forward + backward + AdamW on random tensors already on ``device``."""
    mc = load_config(SPECS[spec_name]).model
    spec = ModelSpec(tuple(f"c{i}" for i in range(11)), mc.image_size, mc.arch, mc.width_mult, mc.dropout)
    model = build_model(spec).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, mc.image_size, mc.image_size, device=device)
    y = torch.randint(0, 11, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: cuDNN autotuning, allocator
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - started)


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped (said) when absent")
    p.add_argument("--epochs", type=int, default=5, help="epochs of the project's training per device")
    p.add_argument("--steps", type=int, default=20, help="timed train steps per throughput row")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--num-workers", type=int, help="DataLoader workers of the project's training (default: the config's)")
    p.add_argument("--quick", action="store_true", help="1 epoch, 2 steps, batch 8: a smoke run")
    args = p.parse_args(argv)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if not devices or set(devices) - {"cpu", "cuda"}:
        raise BadInput(f"--devices {args.devices!r}: use cpu and/or cuda")
    if "cuda" in devices and not torch.cuda.is_available():
        print("no CUDA device here: measuring the CPU only")
        devices = [d for d in devices if d != "cuda"]
    epochs, steps, batch = (1, 2, 8) if args.quick else (args.epochs, args.steps, args.batch)
    threads = torch.get_num_threads()
    gpu = torch.cuda.get_device_name(0) if "cuda" in devices else "-"
    print(f"torch {torch.__version__}; CPU threads {threads}; GPU {gpu}")

    with tempfile.TemporaryDirectory(prefix="gg-gpu-training-") as tmp:
        rows = project_training(devices, epochs, Path(tmp), args.num_workers)
    workers = "the config's" if args.num_workers is None else args.num_workers
    print(f"\nthe project's training (train(), demo config and dataset, {epochs} epoch(s), seed as configured, "
          f"DataLoader workers {workers})")
    print(f"{'device':<7} {'s/epoch':>8} {'img/s':>8} {'val acc':>8} {'vs cpu':>7}")
    cpu = next((r for r in rows if r["device"] == "cpu"), None)
    for r in rows:
        ratio = f"{r['images_per_s'] / cpu['images_per_s']:.1f}x" if cpu else "-"
        print(f"{r['device']:<7} {r['s_per_epoch']:>8.2f} {r['images_per_s']:>8.0f} {r['val_accuracy']:>8.3f} {ratio:>7}")

    print(f"\ntrain-step throughput (batch {batch}, {steps} timed steps after 3 warm-up; images/s)")
    print(f"{'spec':<7} {'device':<7} {'precision':<9} {'img/s':>9} {'vs cpu fp32':>12}")
    for spec_name in SPECS:
        base = None
        for device in devices:
            for precision in (("fp32", "bf16") if device == "cuda" else ("fp32",)):
                rate = step_throughput(spec_name, device, precision, batch, steps)
                base = rate if device == "cpu" else base
                ratio = f"{rate / base:.1f}x" if base else "-"
                print(f"{spec_name:<7} {device:<7} {precision:<9} {rate:>9.0f} {ratio:>12}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

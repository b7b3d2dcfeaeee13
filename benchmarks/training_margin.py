"""How far above the demo's evaluation thresholds does training land, across seeds and CPU kernels?

Training numerics differ between CPU types (AVX2 vs AVX-512 kernels, thread counts), and a
short training run amplifies the difference. This script trains the demo model several times,
each in its own process, varying the seed and the kernels torch may use
(``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA`` stand in for other CPUs) and the thread count,
and prints every checked figure with its threshold: the minimum over the runs, minus a margin,
is what a test may assert on any machine.

    python benchmarks/training_margin.py --epochs 20 --seeds 0,1,2 --json margins.json

It takes about (runs x 80 s) on 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Kernel sets standing in for other CPUs: the machine's best, AVX2 only, and plain C++ / SSE4.1.
KERNELS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}

CHILD = r"""
import json, sys, torch
from pathlib import Path
from gourmetgram.config import load_config, override
from gourmetgram.data.layout import validate_dataset
from gourmetgram.evaluation.suite import evaluate
from gourmetgram.model import load_checkpoint
from gourmetgram.training import train

dataset, out, config = sys.argv[1], Path(sys.argv[2]), sys.argv[6]
epochs, seed, threads = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
cfg = override(load_config(config), "train", epochs=epochs, seed=seed)
report = validate_dataset(Path(dataset), progress=False)
trained = train(dataset, report, cfg, out / "model.pt", log_to_mlflow=False, progress=False)
result = evaluate(load_checkpoint(trained.checkpoint), Path(dataset), cfg.evaluation, out / "eval")
print("RESULT " + json.dumps({"passed": result.passed, "epochs_run": trained.epochs_run,
      "checks": {c.name: [c.value, c.threshold] for c in result.checks},
      "min_class": min(result.per_class_accuracy.values())}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="demo dataset (built in a temporary folder when omitted)")
    parser.add_argument("--config", default="demo", help="run configuration (name or YAML path)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--kernels", default=",".join(KERNELS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--json", help="write every run's figures here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="margin-"))
    dataset = args.dataset
    if not dataset:
        from gourmetgram.data.demo import build_demo_dataset

        dataset = str(build_demo_dataset(work / "demo"))
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for kernel in args.kernels.split(","):
            for threads in [int(t) for t in args.threads.split(",")]:
                out = work / f"s{seed}-{kernel}-t{threads}"
                out.mkdir()
                env = {**os.environ, **KERNELS[kernel]}
                proc = subprocess.run([sys.executable, "-c", CHILD, dataset, str(out), str(args.epochs), str(seed),
                                       str(threads), args.config], env=env, capture_output=True, text=True)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    print(proc.stderr[-2000:], file=sys.stderr)
                    return 1
                run = {"seed": seed, "kernel": kernel, "threads": threads, **json.loads(line[7:])}
                runs.append(run)
                figures = " ".join(f"{name.split()[-2] if ' ' in name else name}={v:.3f}"
                                   for name, (v, _) in run["checks"].items())
                print(f"seed {seed} {kernel:>7} t{threads}: passed={run['passed']} epochs={run['epochs_run']} "
                      f"min_class={run['min_class']:.3f} {figures}", flush=True)
    print(f"\nover {len(runs)} runs ({args.epochs} epochs): check, threshold, min, max, min - threshold")
    for name in runs[0]["checks"]:
        values = [r["checks"][name][0] for r in runs]
        threshold = runs[0]["checks"][name][1]
        print(f"  {name:<40} {threshold:.3f}  {min(values):.3f}  {max(values):.3f}  {min(values) - threshold:+.3f}")
    print(f"  passed in {sum(r['passed'] for r in runs)}/{len(runs)} runs")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Client latency through the gateway with no shadow, a live shadow and a DEAD shadow.

The shadow is mirrored fire-and-forget (gourmetgram_app/local/shadow.py), so a dead one should
cost the client nothing: its copies fail to connect in a background task and are counted as
dropped. This measures it on the real local stack (PyTriton + transformer + gateway) in one
run, as ratios to the no-shadow baseline measured in the same run (before AND after, so
drift of the machine shows):

1. baseline: no shadow;
2. live shadow mirroring 100% (on a shared CPU the shadow's own work competes with
   production's: this ratio is the CPU cost of running a shadow on the same machine, which
   on the cluster is a separate pod);
3. dead shadow mirroring 100%: its Triton and transformer killed (SIGKILL);
4. baseline again, after `shadow stop`.

Usage::

    python benchmarks/shadow_latency.py [--requests 200] [--concurrency 4] [--quick] [--json OUT]

Bundles are untrained demo-spec exports (latency does not depend on the weights) in a
scratch GOURMETGRAM_HOME's model store, where the gateway takes shadow bundles from.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import demo_bundle, load_images, run_load, stack_caller  # noqa: E402


def _errors_counting(call):
    errors = [0]

    def wrapped(image: bytes) -> None:
        try:
            call(image)
        except Exception:  # noqa: BLE001 - a failed request is counted, the run goes on
            errors[0] += 1

    return wrapped, errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="40 requests per phase (a smoke run)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    n = 40 if args.quick else args.requests
    with tempfile.TemporaryDirectory(prefix="gg-shadow-bench-") as scratch:
        os.environ["GOURMETGRAM_HOME"] = scratch  # the gateway's model store and control token
        from gourmetgram.rollout.local import LocalRollout
        from gourmetgram_app.local.ports import Ports
        from gourmetgram_app.local.stack import LocalStack

        stable = demo_bundle(Path(scratch) / "models" / "stable")
        candidate = demo_bundle(Path(scratch) / "models" / "candidate")
        images = load_images(None, 64)
        print(f"{len(images)} images; {n} requests per phase at concurrency {args.concurrency}; "
              f"{os.cpu_count()} CPU cores", flush=True)
        phases: dict[str, dict] = {}
        with LocalStack(stable, "production", Ports.free(), logger_url="",
                        log_dir=Path(scratch) / "logs") as stack:
            rollout = LocalRollout(stack.gateway_url, stack.control_token)
            call, errors = _errors_counting(stack_caller(stack.gateway_url))
            run_load(call, images, 30, args.concurrency)  # warm-up: connections, ORT, batcher

            def phase(name: str) -> None:
                errors[0] = 0
                phases[name] = {**run_load(call, images, n, args.concurrency), "errors": errors[0]}
                r = phases[name]
                print(f"{name:<16} p50 {r['p50_ms']:8.1f} ms  p95 {r['p95_ms']:8.1f} ms  "
                      f"{r['throughput_rps']:7.1f} req/s  errors {r['errors']}", flush=True)

            phase("baseline")
            rollout.shadow_start(str(candidate), 100)
            run_load(call, images, 10, args.concurrency)
            phase("live_shadow")
            detail = rollout.shadow_detail()
            for pid in detail["pids"].values():
                os.killpg(pid, signal.SIGKILL)
            phase("dead_shadow")
            dropped = httpx.get(f"{stack.gateway_url}/_gourmetgram/rollout").json()["shadow"]["dropped"]
            rollout.shadow_stop()
            phase("baseline_after")
        base = [phases["baseline"], phases["baseline_after"]]
        ratios = {}
        for name in ("live_shadow", "dead_shadow"):
            for q in ("p50_ms", "p95_ms"):
                ratios[f"{name}/baseline {q[:3]}"] = phases[name][q] / min(b[q] for b in base)
        ratios["baseline_after/baseline p50"] = phases["baseline_after"]["p50_ms"] / phases["baseline"]["p50_ms"]
        print("ratios (to the better of the two baselines):")
        for key, value in ratios.items():
            print(f"  {key:<30} {value:6.2f}")
        print(f"dead shadow: mirrored copies dropped {dropped}")
        result = {"phases": phases, "ratios": ratios, "dropped": dropped, "requests": n,
                  "concurrency": args.concurrency, "cpus": os.cpu_count()}
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if any(phases[k]["errors"] for k in phases) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Fault recovery of the local stack: ``kill -9`` each process under steady load, measure the gap.

Starts the real stack (PyTriton, transformer, drift detector, the loop's capture sink and
broker, gateway, Prometheus; all supervised, see gourmetgram_app/local/supervisor.py) on free ports, runs steady load (``--workers``
users, ``--pause`` s between each user's requests), and for each component in turn:

* throughput (good answers/s) over ``--window`` s before the kill;
* ``kill -9`` of its main process (for Triton the ``tritonserver`` binary);
* **ready again**: kill -> the supervisor has restarted it and its readiness probe passes;
* **first good answer**: kill -> the first 200 after the gap (serving components; side
  components never interrupt answers, so that is the first 200 after the kill);
* **503s in the gap** and any other non-200 answer (there should be none: not a refused
  connection, not another 5xx);
* throughput over ``--window`` s after the first good answer (after ready for side ones).

At the end it checks the loop's books: every prediction served (200) was captured whole by the
capture sink, across all the kills (the broker's and the capture sink's included), with no
event dropped by the gateway's logger or the broker ("events lost"; exit 1 when any is).

Usage::

    python benchmarks/fault_recovery.py [--bundle DIR] [--components triton,transformer,...]
        [--workers 2] [--pause 0.05] [--window 10] [--json out.json]

Without ``--bundle`` it uses the newest exported bundle (or exports an untrained demo-spec
model, which recovers the same way); the detector runs when the bundle has one (a small one is
built for a scratch demo export). It is a measurement, not a test: figures depend on the
machine's load, so compare rows of one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import load_images, resolve_bundle  # noqa: E402

from gourmetgram.bundle import Bundle  # noqa: E402
from gourmetgram.tracking import home  # noqa: E402
from gourmetgram_app.local.faults import kill9  # noqa: E402
from gourmetgram_app.local.loop import LoopServices, account  # noqa: E402
from gourmetgram_app.local.ports import Ports  # noqa: E402
from gourmetgram_app.local.stack import GATEWAY, LocalStack  # noqa: E402
from gourmetgram_app.local.supervisor import READY, SERVING, SIDE  # noqa: E402
from gourmetgram_app.local.traffic import BackgroundTraffic  # noqa: E402


def good_rate(answers: list[tuple[float, int]], start: float, end: float) -> float:
    n = sum(1 for t, c in answers if start <= t < end and c == 200)
    return n / (end - start) if end > start else float("nan")


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def measure(stack: LocalStack, load: BackgroundTraffic, component, window_s: float,
            timeout_s: float) -> dict:
    """Kill one component under load and describe the gap it left."""
    time.sleep(window_s)  # a clean "before" window
    before = good_rate(load.answers, time.monotonic() - window_s, time.monotonic())
    restarts = component.restarts
    others = {c.key: c.pid for c in stack.supervisor.components() if c is not component}
    t_kill = time.monotonic()
    killed = kill9(component.name, component.pid)
    ok = wait_until(lambda: component.restarts > restarts and component.state == READY, timeout_s)
    t_ready = time.monotonic()
    row = {"component": component.key, "role": component.role, "killed_pid": killed,
           "ready_again_s": round(t_ready - t_kill, 2) if ok else None}
    if not ok:
        return {**row, "error": f"not ready again within {timeout_s:.0f} s"}
    # First good answer: the first 200 after the last failure that followed the kill.
    wait_until(lambda: any(t > t_ready and c == 200 for t, c in load.answers), 60)
    since = [(t, c) for t, c in list(load.answers) if t > t_kill]
    failures = [t for t, c in since if c != 200]
    last_failure = max(failures) if failures else t_kill
    t_good = next((t for t, c in since if c == 200 and t > last_failure), None)
    gap = [c for t, c in since if t_good is None or t <= t_good]
    start_after = t_good if component.role == SERVING and t_good is not None else t_ready
    time.sleep(max(0.0, start_after + window_s - time.monotonic()))
    after = good_rate(load.answers, start_after, start_after + window_s)
    untouched = all(c.pid == others[c.key] for c in stack.supervisor.components() if c.key in others)
    return {**row,
            "first_good_answer_s": None if t_good is None else round(t_good - t_kill, 2),
            "gap_503": sum(1 for c in gap if c == 503),
            "gap_other_errors": sum(1 for c in gap if c not in (200, 503)),
            "good_rps_before": round(before, 1), "good_rps_after": round(after, 1),
            "others_kept_pids": untouched}


def print_report(rows: list[dict], bound_s: float, load_avg: str, out=sys.stdout) -> None:
    print(f"\nkill -9 under steady load (load average at start: {load_avg}); stated bound per "
          f"component: ready again within {bound_s:.0f} s (first back-off + one start timeout)", file=out)
    head = (f"{'component':<44} {'ready again s':>13} {'1st good s':>10} {'503s':>5} {'other':>5} "
            f"{'good/s before':>13} {'after':>6}  others kept pids")
    print(head, file=out)
    for r in rows:
        if "error" in r:
            print(f"{r['component']:<44} {r['error']}", file=out)
            continue
        good = "-" if r["first_good_answer_s"] is None else f"{r['first_good_answer_s']:.2f}"
        print(f"{r['component']:<44} {r['ready_again_s']:>13.2f} {good:>10} {r['gap_503']:>5} "
              f"{r['gap_other_errors']:>5} {r['good_rps_before']:>13.1f} {r['good_rps_after']:>6.1f}  "
              f"{'yes' if r['others_kept_pids'] else 'NO'}", file=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", help="export bundle (default: newest, or a demo export)")
    p.add_argument("--images", type=Path, help="folder of images (default: demo evaluation split)")
    p.add_argument("--components", help="comma-separated names to kill, in order (default: every "
                   "supervised component but the gateway)")
    p.add_argument("--workers", type=int, default=2, help="concurrent users (default: %(default)s)")
    p.add_argument("--pause", type=float, default=0.05, help="s between a user's requests")
    p.add_argument("--window", type=float, default=10.0, help="s of throughput before/after")
    p.add_argument("--no-prometheus", action="store_true")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="gg-faults-"))
    images = load_images(args.images, 40)
    bundle = resolve_bundle(args.bundle, scratch)
    if not Bundle(bundle).has_detector() and bundle.is_relative_to(scratch):
        from drift_detector.build import build_detector

        build_detector(bundle, home() / "data" / "demo", n_reference=200, window_size=20, ert=1000,
                       n_bootstraps=4000)
    detector = Bundle(bundle).has_detector()
    if not detector:
        print(f"note: {bundle} has no drift detector; running without it", file=sys.stderr)
    ports = Ports.free()
    db = f"sqlite:///{scratch / 'loop.db'}"
    loop = LoopServices(bundle, scratch / "logs", detector_url=f"http://127.0.0.1:{ports.detector}/",
                        db_url=db, objects_url=(scratch / "objects").as_uri())
    stack = LocalStack(bundle, "staging", ports, log_dir=scratch / "logs", detector=detector,
                       prometheus=not args.no_prometheus, logger_url=loop.broker_url + "/",
                       feedback_url=loop.capture_url,
                       extra_services=[(loop.capture, SIDE), (loop.broker, SIDE)])
    bound_s = stack.supervisor.policy.worst_recovery_s()
    load_avg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"starting the stack from {bundle} (logs in {scratch / 'logs'}) ...", flush=True)
    rows = []
    with stack, BackgroundTraffic(stack.gateway_url, images, workers=args.workers,
                                  pause_s=args.pause) as load:
        components = [c for c in stack.supervisor.components() if c.name != GATEWAY]
        if args.components:
            wanted = [n.strip() for n in args.components.split(",") if n.strip()]
            unknown = set(wanted) - {c.name for c in components}
            if unknown:
                print(f"error: no component(s) {sorted(unknown)}; have {[c.name for c in components]}",
                      file=sys.stderr)
                return 2
            components = [next(c for c in components if c.name == n) for n in wanted]
        for component in components:
            print(f"killing {component.key} ...", flush=True)
            rows.append(measure(stack, load, component, args.window, bound_s + 30))
            print(f"  {rows[-1]}", flush=True)
        load.stop()
        codes = list(load.codes)
        books = account(load.served_ids, db, stack.gateway_url, loop.broker_url)
    print_report(rows, bound_s, load_avg)
    print(f"all answers: {len(codes)}; 200: {codes.count(200)}, 503: {codes.count(503)}, "
          f"refused/broken: {codes.count(-1)}, other: {sum(1 for c in codes if c not in (200, 503, -1))}")
    print(f"loop across the kills: {books.line()}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "bound_s": bound_s, "load_average": load_avg,
                                         "loop": {**dataclasses.asdict(books), "lost": list(books.lost)}},
                                        indent=1))
    return 0 if all("error" not in r and r["gap_other_errors"] == 0 for r in rows) and books.ok else 1


if __name__ == "__main__":
    sys.exit(main())

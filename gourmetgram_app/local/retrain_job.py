"""One triggered retrain, in its own process: ``python -m gourmetgram_app.local.retrain_job``.

Started by :class:`gourmetgram_app.local.retrain.LocalLauncher`, which hands it the lock. It runs
one turn of the loop (:class:`gourmetgram_app.local.cycle.Cycle`): export the labelled production
data, retrain with ``kfp.local`` (the differential gate inside), register; and, given the
production stack (``--gateway``), the staging gate (the compiled pipeline on kfp.local against
a staging stack) and the canary raised through the rollout config's steps, then promote or roll
back (the retrain config's ``release`` section). Each step and the outcome go to the run
history; the lock is freed whatever happens. If the process is killed outright, the lock names
a dead pid and counts as free.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from gourmetgram.environment import environment
from gourmetgram.errors import entry_point
from gourmetgram.retrain.history import History
from gourmetgram.retrain.lock import RunLock


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gourmetgram_app.local.retrain_job")
    p.add_argument("--run-id", required=True)
    p.add_argument("--lock", required=True)
    p.add_argument("--history", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--config", default="demo")
    p.add_argument("--epochs", type=int, default=-1)
    p.add_argument("--retrain-config", default="retrain", help="its release section: staging gate and canary")
    p.add_argument("--db", help="the loop database to export labelled production data from (default: the local one)")
    p.add_argument("--objects", help="the loop's object store URL (default: the local one)")
    p.add_argument("--gateway", help="the production stack to stage and canary the new version on "
                   "(none: stop after register)")
    p.add_argument("--prometheus", help="that stack's Prometheus (none: `rollout auto` starts one)")
    args = p.parse_args(argv)
    lock, history = RunLock(args.lock), History(args.history)
    reasons = environment().retrain_reasons or ""
    print(f"retrain {args.run_id}: reasons {reasons or '-'}; dataset {args.dataset}, config {args.config}"
          + (f"; then staging and canary on {args.gateway}" if args.gateway else ""), flush=True)
    result = None
    try:
        from gourmetgram.retrain.settings import load_retrain_settings
        from gourmetgram_app.local.cycle import CycleSettings, run_recorded

        settings = CycleSettings(
            base=args.dataset, gateway=args.gateway, prometheus=args.prometheus, train_config=args.config,
            epochs=args.epochs, release=load_retrain_settings(args.retrain_config).release, db=args.db,
            objects=args.objects, workdir=Path(args.history).parent / "runs" / args.run_id)
        result = run_recorded(settings, args.run_id, history, out=lambda line: print(line, flush=True))
    except Exception as exc:  # noqa: BLE001 - a bad config: record it like any failure
        history.append({"event": "finished", "run_id": args.run_id, "status": "failed",
                        "error": f"{type(exc).__name__}: {exc}", "finished_at": datetime.now(timezone.utc).isoformat()})
        print(f"retrain {args.run_id} failed: {exc}", file=sys.stderr, flush=True)
    finally:
        lock.release(args.run_id)
    return 0 if result is not None and result.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

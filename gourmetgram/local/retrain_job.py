"""One triggered retrain, in its own process: ``python -m gourmetgram.local.retrain_job``.

Started by :class:`gourmetgram.local.retrain.LocalLauncher`, which hands it the lock. It runs
the training pipeline with ``kfp.local`` (the same runner as ``gourmetgram pipeline run``),
appends the outcome (registered version, or why not) to the run history, and frees the lock
whatever happens. If it is killed outright, the lock names a dead pid and counts as free.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone

from gourmetgram.retrain.history import History
from gourmetgram.retrain.lock import RunLock


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gourmetgram.local.retrain_job")
    p.add_argument("--run-id", required=True)
    p.add_argument("--lock", required=True)
    p.add_argument("--history", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--config", default="demo")
    p.add_argument("--epochs", type=int, default=-1)
    args = p.parse_args(argv)
    lock, history = RunLock(args.lock), History(args.history)
    reasons = os.environ.get("GOURMETGRAM_RETRAIN_REASONS", "")
    print(f"retrain {args.run_id}: reasons {reasons or '-'}; dataset {args.dataset}, config {args.config}",
          flush=True)
    record: dict = {"event": "finished", "run_id": args.run_id}
    code = 1
    try:
        from gourmetgram.cli.commands.pipeline import format_summary, run_local

        result = run_local(args.dataset, args.config, args.epochs)
        print(format_summary(result), flush=True)
        record.update(status="registered" if result.registered else "rejected",
                      version=result.outcome.version or None, mlflow_run_id=result.mlflow_run_id,
                      reasons=result.reasons if not result.registered else [])
        code = 0 if result.registered else 1
    except BaseException as exc:  # noqa: BLE001 - record any failure, then free the lock
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        print(f"retrain {args.run_id} failed: {exc}", file=sys.stderr, flush=True)
    finally:
        record["finished_at"] = datetime.now(timezone.utc).isoformat()
        history.append(record)
        lock.release(args.run_id)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""One triggered retrain, in its own process: ``python -m gourmetgram_app.local.retrain_job``.

Started by :class:`gourmetgram_app.local.retrain.LocalLauncher`, which hands it the lock. It runs
the training pipeline with ``kfp.local`` (the same runner as ``gourmetgram pipeline run``) on
the base dataset plus the labelled production data it exports first (``loop export``: the
annotators' labels, else users' corrections; none yet -> the base dataset alone), appends
the outcome (registered version, or why not) to the run history, and frees the lock
whatever happens. If it is killed outright, the lock names a dead pid and counts as free.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from gourmetgram.errors import entry_point
from gourmetgram.retrain.history import History
from gourmetgram.retrain.lock import RunLock


def export_production(dataset: str, db: str | None, objects: str | None, out: Path) -> tuple[str, dict[str, int]]:
    """Export the labelled production data next to a local base dataset: (its path, labels by source).

    ("", {}) when there is nothing to add: the base is not a local folder, or no sample is labelled.
    """
    from gourmetgram.data.layout import validate_dataset
    from gourmetgram.loop.export import export_dataset
    from gourmetgram.loop.settings import load_loop_settings
    from gourmetgram.loop.store import open_store
    from gourmetgram.objectstore import ObjectStore

    if not Path(dataset).is_dir():
        print(f"production data: not exported ({dataset} is not a local folder)", flush=True)
        return "", {}
    classes = validate_dataset(Path(dataset), progress=False).class_names
    report = export_dataset(open_store(db), ObjectStore(objects), out, classes,
                            load_loop_settings().export, base=dataset, overwrite=True)
    if not report.files:
        print("production data: no labelled sample yet; training on the base dataset alone", flush=True)
        return "", {}
    print(f"production data: exported to {out}: {report.summary()}; labels {report.labels}", flush=True)
    return str(out), report.labels


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gourmetgram_app.local.retrain_job")
    p.add_argument("--run-id", required=True)
    p.add_argument("--lock", required=True)
    p.add_argument("--history", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--config", default="demo")
    p.add_argument("--epochs", type=int, default=-1)
    p.add_argument("--db", help="the loop database to export labelled production data from (default: the local one)")
    p.add_argument("--objects", help="the loop's object store URL (default: the local one)")
    args = p.parse_args(argv)
    lock, history = RunLock(args.lock), History(args.history)
    reasons = os.environ.get("GOURMETGRAM_RETRAIN_REASONS", "")
    print(f"retrain {args.run_id}: reasons {reasons or '-'}; dataset {args.dataset}, config {args.config}",
          flush=True)
    record: dict = {"event": "finished", "run_id": args.run_id}
    code = 1
    try:
        from gourmetgram.tracking import home
        from gourmetgram_app.cli.commands.pipeline import format_summary, run_local

        production, labels = export_production(args.dataset, args.db, args.objects,
                                               home() / "data" / f"production-{args.run_id}")
        record.update(production_dataset=production or None, labels=labels)
        result = run_local(args.dataset, args.config, args.epochs, production_dataset_uri=production)
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

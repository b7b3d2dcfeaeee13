"""``gourmetgram loop``: the closed loop's state and its steps.

``status`` (captured, feedback, queued, labelled, production accuracy per model version, and the
last retrain runs: what triggered each, its steps and outcome, from the retrain history),
``queue`` (select by the policy and push to Label Studio), ``sync`` (pull annotations),
``export`` (labelled production data in the Food-11 layout with lineage), ``labelstudio``
(start a local Label Studio with credentials from the environment), ``retrain`` and ``receiver``
(the re-training triggers: :mod:`gourmetgram_app.local.retrain_cli`), ``cycle`` (one turn of the
loop: export -> retrain -> gates -> staging -> canary with feedback: :mod:`gourmetgram_app.local.cycle`).

Exit codes: 0 ok; 1 a check failed (export cannot make a valid dataset); 2 bad input;
3 a dependency is unavailable (Label Studio not installed, down, or refusing the token).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EXIT_UNAVAILABLE = 3


def _store(args):
    from gourmetgram.loop.store import open_store

    return open_store(args.db)


def _objects(args):
    from gourmetgram.objectstore import ObjectStore

    return ObjectStore(args.objects)


def _settings(args):
    from gourmetgram.loop.settings import load_loop_settings

    return load_loop_settings(args.config)


def _classes(args) -> list[str]:
    from gourmetgram.loop.settings import class_names_from

    bundle = args.bundle
    if bundle is None and not args.class_names:
        from gourmetgram_app.local.bundles import find_latest_bundle

        bundle = find_latest_bundle()  # every bundle of one model has the same classes
    return class_names_from(bundle, args.class_names)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_status(st: dict) -> str:
    lines = [
        f"captured {st['captured']} (partial {st['partial']}), with feedback {st['with_feedback']}, "
        f"queued {st['queued']} (in Label Studio {st['pushed']}), labelled {st['labelled']} "
        f"(annotator {st['labelled_by_annotator']}, user corrections {st['corrected_by_user']})"
        + (f", user corrections waiting for an annotator {st['corrections_pending_review']}"
           if st.get("corrections_pending_review") else ""),
    ]
    if st["by_stage"]:
        lines.append("captured by stage: " + ", ".join(f"{k or 'unknown'} {v}" for k, v in st["by_stage"].items()))
    if st["queued_by_reason"]:
        lines.append("queued by reason: " + ", ".join(f"{k} {v}" for k, v in st["queued_by_reason"].items()))
    if st["accuracy"]:
        lines.append(f"{'model version':<14} {'feedback acc':>12} {'n':>5} {'label acc':>10} {'n':>5} "
                     f"{'random-share acc':>16} {'n':>5}")
        for version, acc in sorted(st["accuracy"].items()):
            f, lab, r = acc["feedback"], acc["labels"], acc["labels_random"]
            lines.append(f"{version:<14} {_pct(f['value']):>12} {f['n']:>5} {_pct(lab['value']):>10} {lab['n']:>5} "
                         f"{_pct(r['value']):>16} {r['n']:>5}")
    if st["feedback"]:
        lines.append("feedback by version/kind: " + ", ".join(f"{k} {v}" for k, v in st["feedback"].items()))
    return "\n".join(lines)


def format_runs(runs: list[dict]) -> str:
    """The retrain runs (newest first): when, what started each (the trigger), every step, the outcome."""
    from gourmetgram_app.local.loopwatch import describe_step

    if not runs:
        return "retrain runs: none on record"
    lines = ["retrain runs (newest first):"]
    for run in runs:
        end = run.get("finished")
        outcome = (str(end.get("status", "?")).upper() + (f" version {end['version']}" if end.get("version") else "")
                   if end else "RUNNING")
        lines.append(f"  {run['run_id']}: started {run.get('started_at', '?')} by {run.get('source', '?')} "
                     f"(reasons: {', '.join(run.get('reasons') or []) or '-'}): {outcome}")
        for step in run.get("steps", []):
            lines.append(f"    {step.get('at', '')[11:19]}  {describe_step(step)}")
        if end and end.get("error"):
            lines.append(f"    error: {end['error']}")
    return "\n".join(lines)


def _status(args) -> int:
    from gourmetgram.loop import quality
    from gourmetgram.retrain.history import History, retrain_home

    store = _store(args)
    with store.session() as s:
        st = quality.status(s)
    history = History((Path(args.state_dir) if args.state_dir else retrain_home()) / "history.jsonl")
    runs = history.runs(args.runs)
    if args.json:
        print(json.dumps({**st, "retrain_runs": runs}, indent=1, default=str))
    else:
        print(format_status(st) + "\n" + format_runs(runs))
    return 0


def _label_queue(args, store, objects):
    from gourmetgram.loop.labelstudio import LabelQueue, client

    settings = _settings(args)
    return LabelQueue(store, objects, _classes(args), client(args.labelstudio_url),
                      title=settings.labelstudio.project_title)


def _queue(args) -> int:
    from gourmetgram.loop.labelstudio import LabelStudioUnavailable, ls_url
    from gourmetgram.loop.policy import queue_samples

    settings = _settings(args)
    store, objects = _store(args), _objects(args)
    chosen = queue_samples(store, settings.policy)
    reasons: dict[str, int] = {}
    for _, r in chosen:
        reasons[r] = reasons.get(r, 0) + 1
    print(f"queued {len(chosen)} sample(s) by policy ({', '.join(f'{k} {v}' for k, v in reasons.items()) or 'none'};"
          f" daily budget {settings.policy.daily_budget})")
    if args.no_push:
        return 0
    try:
        queue = _label_queue(args, store, objects)
        pushed = queue.push()
    except LabelStudioUnavailable as exc:
        print(f"error: {exc}; the samples stay queued and go out with the next `loop queue`", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(f"pushed {pushed} task(s) to Label Studio project {queue.project_id} ({ls_url(args.labelstudio_url)})")
    return 0


def _sync(args) -> int:
    from gourmetgram.loop.labelstudio import LabelStudioUnavailable

    store, objects = _store(args), _objects(args)
    try:
        result = _label_queue(args, store, objects).pull()
    except LabelStudioUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(f"annotations pulled: {result['created']} new label(s), {result['updated']} updated, "
          f"{result['skipped']} skipped")
    return 0


def _export(args) -> int:
    from gourmetgram.loop.export import ExportError, export_dataset
    from gourmetgram.tracking import home

    out = args.output or home() / "data" / "production"
    try:
        report = export_dataset(_store(args), _objects(args), out, _classes(args), _settings(args).export,
                                base=args.base, overwrite=args.overwrite)
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(f"exported to {report.root}: {report.summary()}; lineage in {report.root / 'lineage.json'}")
    if report.conflicts:
        print(f"{len(report.conflicts)} image(s) had conflicting labels: " + "; ".join(report.conflicts[:5]))
    print(f"check it with: gourmetgram data validate {report.root}")
    return 0


def _labelstudio(args) -> int:
    import signal
    import time

    from gourmetgram.loop.labelstudio import LabelStudioUnavailable
    from gourmetgram.loop.settings import loop_home
    from gourmetgram_app.local.labelstudio import LabelStudioServer

    server = LabelStudioServer(args.data_dir or loop_home() / "label-studio", port=args.port)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"starting Label Studio on {server.url} (data in {server.data_dir}; the first start runs "
          "its database migrations: a minute or more)", flush=True)
    try:
        server.start()
    except LabelStudioUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(f"ready: open {server.url} and log in as {server.username}; LABEL_STUDIO_URL={server.url} "
          "for `loop queue`/`loop sync`. Ctrl-C to stop.", flush=True)
    try:
        while server.service.alive():
            time.sleep(1)
        print("error: Label Studio exited", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "loop", help="closing the loop: captured samples, feedback, labelling queue, labelled export",
        description="Production captures and user feedback (stored by the capture sink), the labelling "
        "queue into Label Studio, annotations back, and a labelled export. Storage from the environment: "
        "GOURMETGRAM_LOOP_DB (SQLAlchemy URL), GOURMETGRAM_LOOP_OBJECTS (file:///dir or s3://bucket/prefix), "
        "GOURMETGRAM_S3_ENDPOINT_URL; Label Studio from LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY.")
    sub = parser.add_subparsers(dest="loop_command", metavar="ACTION", required=True)

    def common(p, classes: bool = False, labelstudio: bool = False):
        p.add_argument("--db", help="SQLAlchemy URL of the loop database (default: $GOURMETGRAM_LOOP_DB or "
                       "sqlite under $GOURMETGRAM_HOME/loop/)")
        p.add_argument("--objects", help="object store URL (default: $GOURMETGRAM_LOOP_OBJECTS or "
                       "$GOURMETGRAM_HOME/loop/objects)")
        p.add_argument("--config", default="loop", help="loop config name or path (default: %(default)s)")
        if classes:
            p.add_argument("--bundle", help="exported bundle naming the classes (default: the newest)")
            p.add_argument("--class-names", help="comma-separated class names instead of a bundle")
        if labelstudio:
            p.add_argument("--labelstudio-url", help="Label Studio URL (default: $LABEL_STUDIO_URL or "
                           "http://127.0.0.1:8085)")

    p = sub.add_parser("status", help="captured, with feedback, queued, labelled; production accuracy per version; "
                       "the last retrain runs (trigger, steps, outcome)")
    common(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--runs", type=int, default=3, help="retrain runs shown, newest first (default: %(default)s)")
    p.add_argument("--state-dir", help="the retrain history's folder (default: $GOURMETGRAM_HOME/retrain)")
    p.set_defaults(func=_status)
    p = sub.add_parser("queue", help="select samples by the policy and push them to Label Studio")
    common(p, classes=True, labelstudio=True)
    p.add_argument("--no-push", action="store_true", help="only record the queue entries")
    p.set_defaults(func=_queue)
    p = sub.add_parser("sync", help="pull annotations from Label Studio into the store")
    common(p, classes=True, labelstudio=True)
    p.set_defaults(func=_sync)
    p = sub.add_parser("export", help="write labelled production data in the Food-11 layout with lineage")
    common(p, classes=True)
    p.add_argument("--output", help="target folder (default: $GOURMETGRAM_HOME/data/production)")
    p.add_argument("--base", help="add the production samples to a copy of this dataset")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty target folder")
    p.set_defaults(func=_export)
    p = sub.add_parser("labelstudio", help="start a local Label Studio (credentials from the environment)")
    from gourmetgram.constants import LABEL_STUDIO_PORT

    p.add_argument("--port", type=int, default=LABEL_STUDIO_PORT, help="(default: %(default)s)")
    p.add_argument("--data-dir", help="Label Studio's data folder (default: $GOURMETGRAM_HOME/loop/label-studio)")
    p.set_defaults(func=_labelstudio)
    from gourmetgram_app.local.retrain_cli import add_retrain_parsers

    add_retrain_parsers(sub, common)
    from gourmetgram_app.local.cycle import add_cycle_parser

    add_cycle_parser(sub, common)

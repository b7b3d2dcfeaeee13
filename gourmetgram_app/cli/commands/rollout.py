"""``gourmetgram rollout``: canary, promote, rollback, status, analyze and auto.

Without ``--cluster`` the commands drive the local stack's gateway (``gourmetgram serve
--stage production``); with ``--cluster`` they patch the production InferenceService
through the Kubernetes API. Registry aliases follow each step (canary -> production), so
MLflow always says what serves where (:mod:`gourmetgram.rollout.release`, which the loop's
cycle calls too).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from typing import TYPE_CHECKING

from gourmetgram import constants
from gourmetgram.errors import BadInput
from gourmetgram.rollout import release

if TYPE_CHECKING:
    from gourmetgram.rollout.prometheus import PrometheusClient


def _backend(args: argparse.Namespace):
    if args.cluster:
        from gourmetgram.rollout.kube import KubeRollout

        name, namespace = _isvc(args)
        return KubeRollout(name, namespace)
    from gourmetgram.rollout.local import LocalRollout

    return LocalRollout(args.gateway)


def _isvc(args: argparse.Namespace) -> tuple[str, str]:
    if args.name and args.namespace:
        return args.name, args.namespace
    from gourmetgram_app.local.manifests import load_stage_manifest

    manifest = load_stage_manifest(constants.PRODUCTION)
    return args.name or manifest.name, args.namespace or manifest.namespace


def _print_state(backend) -> None:
    state = backend.state()
    print(f"InferenceService {state.namespace}/{state.inferenceservice}: canaryTrafficPercent "
          f"{'unset (promoted)' if state.canary_percent is None else state.canary_percent}")
    print(f"  stable (prev):   {state.stable or '-'}")
    print(f"  canary (latest): {state.canary or '-'}")
    print(f"  {'revision':<32} {'percent':>7}  {'tag':<7} {'version':<8} bundle")
    for r in state.revisions:
        print(f"  {r.get('name') or '-':<32} {r.get('percent', 0) or 0:>7}  {r.get('tag') or '-':<7} "
              f"{r.get('version') or '-':<8} {r.get('bundle') or ''}")


def _print_components(status: dict) -> None:
    """The local stack's processes (the supervisor's view) and which revisions take traffic."""
    down = [f"{r['name']} ({r.get('not_ready_reason') or 'not ready'})"
            for r in status.get("revisions", []) if r.get("ready") is False]
    print("  revisions not ready (answering 503): " + ("; ".join(down) if down else "none"))
    components = status.get("components") or []
    if not components:
        return
    print(f"  {'component':<12} {'revision':<32} {'state':<9} {'restarts':>8}  {'pid':>7}  last exit")
    for c in components:
        last = c.get("last_exit_code")
        print(f"  {c.get('name', '-'):<12} {c.get('revision') or '-':<32} {c.get('state', '-'):<9} "
              f"{c.get('restarts', 0):>8}  {c.get('pid') or '-':>7}  {'-' if last is None else last}")


def _status(args: argparse.Namespace) -> int:
    backend = _backend(args)
    _print_state(backend)
    if hasattr(backend, "raw_status"):  # local stack: also its processes
        _print_components(backend.raw_status())
    try:
        from gourmetgram import registry

        stages = registry.stages()
        print("registry aliases: " + ", ".join(f"{k} -> {v if v is not None else '-'}" for k, v in stages.items()))
    except Exception as exc:  # noqa: BLE001 - status must print even when MLflow is unreachable
        print(f"registry aliases: unavailable ({type(exc).__name__}: {exc})")
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def _canary(args: argparse.Namespace) -> int:
    backend = _backend(args)
    if args.version is None and args.bundle is None:
        backend.set_percent(args.percent)  # re-weight the running canary
        print(f"canary now at {args.percent}%")
    else:
        release.start_canary(backend, args.percent, args.version, args.bundle, out=_say)
    _print_state(backend)
    return 0


def _promote(args: argparse.Namespace) -> int:
    backend = _backend(args)
    release.promote(backend, out=_say)
    _print_state(backend)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    backend = _backend(args)
    release.rollback(backend, out=_say)
    _print_state(backend)
    return 0


def _config(args: argparse.Namespace):
    from gourmetgram.config import override
    from gourmetgram.rollout.analysis import load_config

    config = load_config(args.config)
    config = override(config, "analysis", window=args.window, min_requests=args.min_requests,
                      min_feedback=getattr(args, "min_feedback", None))
    changes = {name: getattr(args, name, None) for name in ("interval_s", "timeout_s", "passes_per_step")}
    if getattr(args, "steps", None) is not None:
        try:
            changes["steps"] = tuple(int(s) for s in args.steps.split(",") if s.strip()) if args.steps else ()
        except ValueError:
            raise BadInput(f"--steps {args.steps!r}: percentages within 1..99, comma-separated") from None
    return override(config, "auto", **changes)


def _prometheus(args: argparse.Namespace) -> "contextlib.AbstractContextManager[PrometheusClient]":
    return release.prometheus_for(args.prometheus, args.gateway, args.detector, args.cluster, out=_say)


def _feedback(args: argparse.Namespace):
    """With --feedback: what users said about each revision, from the loop store."""
    if not getattr(args, "feedback", False):
        return None
    from gourmetgram.loop.store import open_store
    from gourmetgram.rollout.feedback import StoreFeedback

    return StoreFeedback(open_store(args.db))


def _analyze(args: argparse.Namespace) -> int:
    import time

    from gourmetgram.rollout.analysis import ROLLBACK, analyze, queries
    from gourmetgram.rollout.queries import since_range

    config = _config(args)
    backend = _backend(args)
    state = backend.state()
    with _prometheus(args) as client:
        if args.show_queries:
            since = since_range(time.time() - state.canary_started) if state.canary_started else None
            for name, q in queries(state, config.analysis.window, since).items():
                print(f"# {name}\n{q}")
        verdict = analyze(client, state, config.analysis, feedback=_feedback(args))
    print(verdict.report())
    return 1 if verdict.decision == ROLLBACK else 0


def _auto(args: argparse.Namespace) -> int:
    config = _config(args)
    backend = _backend(args)
    with _prometheus(args) as client:
        promoted = release.auto(backend, client, config, feedback=_feedback(args), out=_say)
    return 0 if promoted else 1


def _local_shadow(args: argparse.Namespace):
    if args.cluster:
        raise BadInput("on the cluster the shadow is declared in the chart (values `shadow:`: "
                        "enabled, version/storageUri, percent; `helm upgrade`), not started by this "
                        "command; see README 'Shadow deployment'")
    from gourmetgram.rollout.local import LocalRollout

    return LocalRollout(args.gateway)


def _print_shadow(status: dict | None) -> None:
    if not status:
        print("shadow: none (start one with `gourmetgram rollout shadow start --version N --percent P`)")
        return
    dropped = status.get("dropped") or {}
    print(f"shadow: {status['name']} (version {status.get('version') or '-'}) mirrors "
          f"{status['percent']}% of model requests; its answers are logged, never served")
    print(f"  mirrored {status['mirrored']:.0f}, answered {status['answered']:.0f}, dropped "
          f"{sum(dropped.values()):.0f} (" + ", ".join(f"{k} {v:.0f}" for k, v in dropped.items())
          + f"), in flight {status['inflight']}, answer pairs kept {status['pairs']}")
    print(f"  bundle {status.get('bundle') or '-'}")


def _shadow_start(args: argparse.Namespace) -> int:
    backend = _local_shadow(args)
    bundle, version = args.bundle, args.version
    if version is not None:
        from gourmetgram import registry

        bundle = registry.bundle_for(int(version))
    if bundle is None:
        raise BadInput("shadow start needs --version N or --bundle DIR")
    print(f"starting shadow {('version ' + str(version)) if version else bundle} mirroring "
          f"{args.percent}% ...", flush=True)
    _print_shadow(backend.shadow_start(bundle, args.percent, version).get("shadow"))
    return 0


def _shadow_status(args: argparse.Namespace) -> int:
    backend = _local_shadow(args)
    if args.percent is not None:
        backend.shadow_percent(args.percent)
    _print_shadow(backend.raw_status().get("shadow"))
    return 0


def _shadow_stop(args: argparse.Namespace) -> int:
    backend = _local_shadow(args)
    backend.shadow_stop()
    print("shadow stopped: no request is mirrored any more")
    return 0


def _read_labels(path: str | None) -> dict[str, str]:
    """``inference_id,label`` per line (a header line is fine): feedback or annotations."""
    if not path:
        return {}
    import csv

    try:
        with open(path, newline="") as handle:
            rows = [r for r in csv.reader(handle) if r]
    except OSError as exc:
        raise BadInput(f"--labels {path}: {exc.strerror}") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["inference_id", "label"]:
        rows = rows[1:]
    if any(len(r) < 2 for r in rows):
        raise BadInput(f"--labels {path}: every line must be inference_id,label")
    return {r[0].strip(): r[1].strip() for r in rows}


def _shadow_analyze(args: argparse.Namespace) -> int:
    from gourmetgram.config import override
    from gourmetgram.rollout.analysis import load_config
    from gourmetgram.rollout.shadow import NOT_READY, decide, figures, paired_answers

    thresholds = override(load_config(args.config), "shadow", min_pairs=args.min_pairs).shadow
    if args.from_store:
        # The captured samples: shadow answers joined with production's on the inference id,
        # with feedback and annotations as labels (works for the cluster's capture too).
        from gourmetgram.loop.store import open_store
        from gourmetgram.rollout.shadow import captured_answers

        store = open_store(args.db)
        try:
            rows = store.shadow_comparisons(args.revision)
        finally:
            store.dispose()
        if not rows:
            raise BadInput("the capture store holds no shadow answer joined with a production sample "
                            "yet; is the capture sink behind the logger (`gourmetgram serve --loop`)?")
        answers = captured_answers(rows)
        labels = _read_labels(args.labels)
        if labels:
            answers = [dataclasses.replace(a, label=labels.get(a.inference_id, a.label)) for a in answers]
        verdict = decide(figures(answers), thresholds)
        verdict.production = ", ".join(sorted({str(r["production_revision"]) for r in rows}))
        verdict.shadow = str(rows[0]["revision"])
    else:
        backend = _local_shadow(args)
        detail = backend.shadow_detail()
        if not detail.get("shadow"):
            raise BadInput("no shadow revision is running: nothing to analyse")
        production = backend.raw_status().get("latest_rolledout_revision") or "production"
        verdict = decide(figures(paired_answers(detail["pairs"], _read_labels(args.labels))), thresholds)
        verdict.production, verdict.shadow = production, detail["shadow"]["name"]
    print(verdict.report())
    return 1 if verdict.decision == NOT_READY else 0


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway", default=f"http://{constants.HOST}:{constants.GATEWAY_PORT}",
                   help="local stack's gateway URL (default: %(default)s)")
    p.add_argument("--cluster", action="store_true",
                   help="act on the cluster's InferenceService (kubeconfig or in-cluster credentials)")
    p.add_argument("--name", help="InferenceService name (default: from inference_services/production.yaml)")
    p.add_argument("--namespace", help="its namespace (default: from inference_services/production.yaml)")


def _analysis_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prometheus", help="Prometheus URL (default: start a local one against --gateway)")
    p.add_argument("--detector", help="also scrape the drift detector at this URL (local Prometheus)")
    p.add_argument("--config", help="rollout config (default: configs/rollout.yaml)")
    p.add_argument("--window", help="PromQL range of the p95 latency, e.g. 30s or 5m (default: from the "
                   "config); the comparisons count everything since the canary started")
    p.add_argument("--min-requests", type=int, help="requests needed on each revision before deciding")
    p.add_argument("--feedback", action="store_true", help="also compare user feedback (feedback accuracy, "
                   "marked-wrong rate) per revision from the loop store")
    p.add_argument("--min-feedback", type=int, help="feedback answers needed on each revision before "
                   "feedback counts (default: from the config)")
    p.add_argument("--db", help="with --feedback: loop store URL (default: $GOURMETGRAM_LOOP_DB, else the "
                   "loop home's loop.db)")


def _percent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError("a percentage is within 0..100")
    return value


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "rollout", help="canary rollout: canary, promote, rollback, status, analyze, auto, shadow",
        description="Staged rollout of the production InferenceService: a new model version as a "
        "canary at N%% of traffic, canary analysis from Prometheus, promote or roll back. Local stack "
        "by default (the gateway splits traffic exactly as KServe does), the cluster with --cluster.")
    sub = parser.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)

    p = sub.add_parser("status", help="revisions, traffic percentages and registry aliases")
    _target_args(p)
    p.set_defaults(func=_status)

    p = sub.add_parser("canary", help="serve a model version as the canary at N%% (or re-weight it)")
    _target_args(p)
    p.add_argument("--percent", type=_percent, required=True, help="canary traffic percentage 0..100")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="registered model version (its bundle.uri tag)")
    which.add_argument("--bundle", help="an export bundle folder/URI instead of a registry version")
    p.set_defaults(func=_canary)

    p = sub.add_parser("promote", help="the canary takes all traffic (canaryTrafficPercent removed)")
    _target_args(p)
    p.set_defaults(func=_promote)

    p = sub.add_parser("rollback", help="all traffic back to the previous revision (canaryTrafficPercent 0)")
    _target_args(p)
    p.set_defaults(func=_rollback)

    p = sub.add_parser("analyze", help="compare canary with stable once; exit 1 when it should roll back")
    _target_args(p)
    _analysis_args(p)
    p.add_argument("--show-queries", action="store_true", help="print the PromQL first")
    p.set_defaults(func=_analyze)

    shadow = sub.add_parser(
        "shadow", help="shadow deployment: mirror N%% of requests to a candidate, compare, never serve it",
        description="A candidate model answers a copy of N%% of production requests; its answers "
        "are logged (CloudEvents, endpoint shadow) and compared with production's on the same "
        "requests, never returned to users.")
    shadow_sub = shadow.add_subparsers(dest="shadow_command", metavar="ACTION", required=True)
    p = shadow_sub.add_parser("start", help="start (or replace) the shadow revision")
    _target_args(p)
    p.add_argument("--percent", type=_percent, default=100, help="share of requests mirrored 0..100 "
                   "(default: %(default)s)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int, help="registered model version (its bundle.uri tag)")
    which.add_argument("--bundle", help="an export bundle folder in the model store")
    p.set_defaults(func=_shadow_start)
    p = shadow_sub.add_parser("status", help="what is mirrored, answered and dropped")
    _target_args(p)
    p.add_argument("--percent", type=_percent, help="first re-weight the mirrored share")
    p.set_defaults(func=_shadow_status)
    p = shadow_sub.add_parser("stop", help="stop mirroring and the shadow's processes")
    _target_args(p)
    p.set_defaults(func=_shadow_stop)
    p = shadow_sub.add_parser("analyze", help="compare shadow with production on the same requests; "
                              "exit 1 when not ready for a canary")
    _target_args(p)
    p.add_argument("--config", help="rollout config (default: configs/rollout.yaml, section shadow)")
    p.add_argument("--labels", help="CSV of inference_id,label (feedback/annotations) for accuracy")
    p.add_argument("--min-pairs", type=int, help="answer pairs needed before deciding")
    p.add_argument("--from-store", action="store_true", help="compare the CAPTURED answers (loop store: "
                   "shadow predictions joined with production samples, feedback/annotations as labels) "
                   "instead of the gateway's recent pairs")
    p.add_argument("--db", help="loop store URL (default: $GOURMETGRAM_LOOP_DB, else the loop home's loop.db)")
    p.add_argument("--revision", help="with --from-store: which shadow revision (default: the latest captured)")
    p.set_defaults(func=_shadow_analyze)

    p = sub.add_parser("auto", help="analyse in a loop: raise the canary step by step, promote or roll back")
    _target_args(p)
    _analysis_args(p)
    p.add_argument("--steps", help="comma-separated canary percentages to walk through ('' = none)")
    p.add_argument("--interval", dest="interval_s", type=float, help="seconds between analyses")
    p.add_argument("--timeout", dest="timeout_s", type=float, help="give up after this many seconds")
    p.add_argument("--passes-per-step", type=int, help="passing analyses needed per step")
    p.set_defaults(func=_auto)


"""``gourmetgram loop retrain`` and ``gourmetgram loop receiver``: the retrain triggers by hand
and as the Alertmanager webhook receiver (added to the ``loop`` command's parser).

``python -m gourmetgram_app.local.retrain_cli receiver ...`` runs the same commands without the rest
of the CLI, whose other commands import the ML stack: the receiver's container image
(``gourmetgram/retrain/Dockerfile``) has none of it.
"""

from __future__ import annotations

import argparse
import sys

from gourmetgram.errors import entry_point


def _trigger(args: argparse.Namespace):
    from gourmetgram.retrain.settings import load_retrain_settings
    from gourmetgram_app.local.retrain import build_trigger

    return build_trigger(load_retrain_settings(args.retrain_config), args.db, args.kfp_host,
                         args.kfp_package, args.namespace, args.state_dir,
                         gateway=getattr(args, "gateway", None), prometheus=getattr(args, "prometheus", None),
                         retrain_config=args.retrain_config)


def _retrain(args: argparse.Namespace) -> int:
    from gourmetgram.errors import DependencyUnavailable
    from gourmetgram.retrain.policy import DRIFT, MANUAL
    from gourmetgram.retrain.trigger import LaunchFailed

    trigger, _ = _trigger(args)
    alerts = [MANUAL] if args.force else []
    if args.drift:
        alerts.append(DRIFT)
    if not args.if_needed and not args.force and not args.drift:
        decision = trigger.evaluate(alerts)
        print(f"{'would start' if decision.start else 'would not start'}: {decision.message}")
        return 0 if decision.start else 1
    try:
        outcome = trigger.fire(alerts, source="cli")
    except LaunchFailed as exc:
        raise DependencyUnavailable(str(exc)) from None
    if not outcome.started:
        print(f"no retrain: {outcome.decision.message}")
        return 1
    details = ", ".join(f"{k} {v}" for k, v in outcome.details.items())
    print(f"started retrain {outcome.run_id}: {outcome.decision.message} ({details})")
    return 0


def _receiver(args: argparse.Namespace) -> int:
    import logging

    from gourmetgram_app.local.retrain import serve

    # every decision (started / held back / not needed) with its reason, one line each
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("gourmetgram.retrain").setLevel(logging.INFO)
    trigger, signals = _trigger(args)
    token = None
    if args.token_file:
        try:
            with open(args.token_file) as f:
                token = f.read().strip()
        except OSError as exc:
            print(f"error: cannot read the token file: {exc}", file=sys.stderr)
            return 2
    release = f"; a run stages and canaries its version on {args.gateway}" if args.gateway else ""
    print(f"retrain receiver on http://{args.host}:{args.port}/alerts (Alertmanager webhook); "
          f"launcher {trigger.launcher.kind}; state in {trigger.lock.path.parent}{release}", flush=True)
    try:
        serve(trigger, args.host, args.port, token, signals.feedback_counts)
    except KeyboardInterrupt:
        pass
    return 0


def add_retrain_parsers(sub, common) -> None:
    from gourmetgram.constants import HOST, RETRAIN_RECEIVER_PORT

    def options(p):
        common(p)
        p.add_argument("--retrain-config", default="retrain",
                       help="retrain config name or path (default: %(default)s)")
        p.add_argument("--kfp-host", help="start runs on this KFP API (kfp.Client) instead of kfp.local")
        p.add_argument("--kfp-package", help="compiled pipeline (default: pipelines/training_pipeline.yaml)")
        p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")
        p.add_argument("--state-dir", help="lock and run history (default: $GOURMETGRAM_HOME/retrain)")

    p = sub.add_parser("retrain", help="re-train when a trigger fires and the guard rails allow it",
                       description="Apply the retrain policy (configs/retrain.yaml): triggers schedule, "
                       "drift, degradation (production accuracy from feedback); guard rails minimum new "
                       "labels, cool-down, one run at a time. Exit 0: started (or would start); 1: not "
                       "needed or held back, with the reason.")
    options(p)
    p.add_argument("--if-needed", action="store_true", help="start a run when the policy says so")
    p.add_argument("--drift", action="store_true", help="count a drift alert as received")
    p.add_argument("--force", action="store_true",
                   help="a manual trigger (the guard rails still apply)")
    p.set_defaults(func=_retrain)
    p = sub.add_parser("receiver", help="serve the Alertmanager webhook that starts retrains",
                       description="POST /alerts takes Alertmanager's webhook (v4); GET /status, /metrics.")
    options(p)
    p.add_argument("--host", default=HOST, help="(default: %(default)s)")
    p.add_argument("--port", type=int, default=RETRAIN_RECEIVER_PORT, help="(default: %(default)s)")
    p.add_argument("--token-file", help="require 'Authorization: Bearer <token>' (default: "
                   "$GOURMETGRAM_RETRAIN_TOKEN if set)")
    p.add_argument("--gateway", help="local runs: after register, stage the new version and canary it on this "
                   "production gateway, then promote or roll back (configs/retrain.yaml, release)")
    p.add_argument("--prometheus", help="local runs: the Prometheus of that stack (the canary analysis)")
    p.set_defaults(func=_receiver)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gourmetgram_app.local.retrain_cli",
                                     description="The retrain trigger and its Alertmanager receiver.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p, **_):  # the loop command's option the trigger reads (its store)
        p.add_argument("--db", help="SQLAlchemy URL of the loop database (default: $GOURMETGRAM_LOOP_DB or "
                       "sqlite under $GOURMETGRAM_HOME/loop/)")

    add_retrain_parsers(sub, common)
    return parser


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

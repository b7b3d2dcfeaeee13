"""``python -m gourmetgram_app.local.gateway``: one stage's gateway from its manifest (what
``gourmetgram serve`` starts). A bad flag or manifest is exit 2."""

from __future__ import annotations

import argparse

from gourmetgram import constants
from gourmetgram import control as policy
from gourmetgram.errors import entry_point
from gourmetgram_app.local.gateway.discovery import Revision
from gourmetgram_app.local.gateway.logger import LOGGER_QUEUE_BYTES, LOGGER_QUEUE_EVENTS
from gourmetgram_app.local.gateway.routing import MAX_BODY_BYTES
from gourmetgram_app.local.gateway.server import Gateway
from gourmetgram_app.local.manifests import load_manifest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gourmetgram_app.local.gateway",
                                description="Local stand-in for the KServe ingress (one stage).")
    p.add_argument("--manifest", required=True, help="inference_services/<stage>.yaml")
    p.add_argument("--revision", action="append", required=True, metavar="NAME=URL",
                   help="a transformer revision; the first is the rolled-out one")
    p.add_argument("--bundle", help="the first revision's model bundle (for status)")
    p.add_argument("--triton-metrics", help="the first revision's Triton metrics URL (for Prometheus)")
    p.add_argument("--triton-url", help="the first revision's Triton HTTP URL (readiness probe)")
    p.add_argument("--status-file", help="the serve supervisor's component states (shown in status)")
    p.add_argument("--log-dir", help="where canary revisions write their logs (default: cwd)")
    p.add_argument("--logger-url", help="inference logger sink (default: the manifest's logger.url; "
                   "a cluster-only URL becomes the local detector)")
    p.add_argument("--no-logger", action="store_true", help="do not send logger CloudEvents")
    p.add_argument("--feedback-url", help="the capture/feedback service that POST /v1/feedback goes to")
    p.add_argument("--model-version", help="the first revision's registered model version (for capture)")
    p.add_argument("--logger-queue", type=int, default=LOGGER_QUEUE_EVENTS,
                   help="most events waiting for (or retried to) the logger sink (default: %(default)s)")
    p.add_argument("--logger-timeout", type=float, default=2.0,
                   help="seconds the logger waits on its sink per attempt before retrying (default: %(default)s)")
    p.add_argument("--logger-queue-bytes", type=int, default=LOGGER_QUEUE_BYTES,
                   help="most bytes of events waiting for (or retried to) the logger sink (default: %(default)s)")
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                   help="largest request body accepted, else 413 (default: %(default)s)")
    p.add_argument("--control-token-file",
                   help="file holding the control API's token (default: the stack's state folder "
                        "$GOURMETGRAM_HOME/stacks/<host>-<port>/control-token, created if missing)")
    p.add_argument("--state-file",
                   help="where the rollout (revisions, split, shadow) is saved after each change and "
                        "restored from at start (default: rollout.json in the stack's state folder "
                        "$GOURMETGRAM_HOME/stacks/<host>-<port>/)")
    p.add_argument("--model-store", help="canary bundles must be inside this folder "
                   "(default: $GOURMETGRAM_HOME/models)")
    p.add_argument("--host", default=constants.HOST, help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=constants.GATEWAY_PORT)
    p.add_argument("--timeout", type=float, default=60.0, help="upstream timeout in seconds")
    return p.parse_args(argv)


@entry_point
def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = parse_args(argv)
    revisions = [Revision.parse(r) for r in args.revision]
    revisions[0].bundle, revisions[0].triton_metrics_url = args.bundle, args.triton_metrics
    revisions[0].version = args.model_version
    revisions[0].triton_url = args.triton_url
    for r in revisions[1:]:
        r.percent = 0
    gateway = Gateway(load_manifest(args.manifest), revisions, timeout_s=args.timeout,
                      logger_url=args.logger_url, logger_enabled=not args.no_logger,
                      logger_queue=args.logger_queue, logger_timeout_s=args.logger_timeout,
                      log_dir=args.log_dir, host=args.host,
                      control_token=policy.gateway_token(args.control_token_file, args.host,
                                                          args.port),
                      model_store=args.model_store, max_body_bytes=args.max_body_bytes,
                      logger_queue_bytes=args.logger_queue_bytes, feedback_url=args.feedback_url,
                      status_file=args.status_file,
                      state_file=args.state_file or policy.stack_state_dir(args.host, args.port) / policy.ROLLOUT_STATE_FILE)
    uvicorn.run(gateway.app(), host=args.host, port=args.port, log_level="warning",
                access_log=False)
    return 0

"""``python -m gourmetgram_webapp``: serve the web app (uvicorn).

Every flag has an environment variable (the container is configured through them):
``GOURMETGRAM_API_URL``, ``GOURMETGRAM_WEBAPP_STAGES`` (space-separated ``--stage``
values), ``GOURMETGRAM_FEEDBACK_SUMMARY_URL``, ``GOURMETGRAM_PROMETHEUS_URL``, ``GOURMETGRAM_RETRAIN_URL``,
``GOURMETGRAM_CLASSES``, ``WEBAPP_HOST``,
``WEBAPP_PORT``.
"""

from __future__ import annotations

import argparse
import os
import sys

from gourmetgram import constants
from gourmetgram.errors import entry_point
from gourmetgram_webapp.config import StageSource, WebConfig, read_class_names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m gourmetgram_webapp",
                                description="The GourmetGram web app: a user page and a read-only operator page.")
    p.add_argument("--api", default=env("GOURMETGRAM_API_URL", f"http://{constants.HOST}:{constants.GATEWAY_PORT}"),
                   help="the platform's public API: the gateway or ingress (default: %(default)s)")
    p.add_argument("--model", default=env("GOURMETGRAM_MODEL_NAME", constants.MODEL_NAME),
                   help="model name in /v1/models/<name>:predict (default: %(default)s)")
    p.add_argument("--stage", action="append", metavar="STAGE:served=SRC,detector=URL",
                   help="a stage for the operator page; SRC is local:<gateway URL> or "
                   "kube:<namespace>/<inferenceservice> (repeatable)")
    p.add_argument("--feedback-summary", default=env("GOURMETGRAM_FEEDBACK_SUMMARY_URL", ""),
                   help="URL of the feedback store's summary (production accuracy, labelling backlog)")
    p.add_argument("--prometheus", default=env("GOURMETGRAM_PROMETHEUS_URL", ""),
                   help="Prometheus URL: the label-free accuracy estimates the transformers export")
    p.add_argument("--retrain", default=env("GOURMETGRAM_RETRAIN_URL", ""),
                   help="the retrain receiver's base URL: the operator page shows its last runs (trigger, "
                   "steps, outcome)")
    p.add_argument("--model-spec", help="a bundle's model_spec.json: the class names to offer")
    p.add_argument("--classes", default=env("GOURMETGRAM_CLASSES"),
                   help="comma-separated class names (default: Food-11's)")
    p.add_argument("--no-registry", action="store_true", help="do not read the MLflow registry")
    p.add_argument("--host", default=env("WEBAPP_HOST", constants.HOST), help="bind address (default: %(default)s)")
    p.add_argument("--port", type=int, default=int(env("WEBAPP_PORT", str(constants.WEBAPP_PORT))))
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> WebConfig:
    stage_texts = args.stage or os.environ.get("GOURMETGRAM_WEBAPP_STAGES", "").split()
    return WebConfig(api_url=args.api, model_name=args.model,
                     class_names=read_class_names(args.model_spec, args.classes),
                     stages=tuple(StageSource.parse(t) for t in stage_texts),
                     feedback_summary_url=args.feedback_summary, prometheus_url=args.prometheus.rstrip("/"),
                     retrain_url=args.retrain.rstrip("/"),
                     registry=not args.no_registry)


@entry_point
def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from gourmetgram_webapp.app import create_app

    args = parse_args(argv)
    config = config_from_args(args)
    print(f"GourmetGram web app on http://{args.host}:{args.port}/ (public API {config.api_url})", flush=True)
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

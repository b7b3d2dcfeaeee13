"""Entry point, in the container and locally:

    python -m food_transformer --model_name food11 --predictor_host HOST:PORT --protocol v2 \\
        [--model_spec BUNDLE/model_spec.json | --image_size 224 --labels_file labels.txt] \\
        [--top_k 3] [--max_batch 64] [--coalesce_images 32] [--revision NAME] [--http_port 8080] [--host 127.0.0.1] \\
        [--calibration BUNDLE/calibration.json] [--model_version 3] [--stage production]

All of kserve's ModelServer flags are accepted (``parents=[kserve.model_server.parser]``).
It listens on ``--host`` only (127.0.0.1 unless ``$TRANSFORMER_HOST`` says otherwise; the
container sets 0.0.0.0), over HTTP only (kserve's gRPC server is off unless
``--enable_grpc true`` with an all-addresses host), and refuses bodies over
``--max_body_bytes`` with 413 (:mod:`food_transformer.server`).
Exit code 2 with a message for bad flags or files.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from kserve import model_server as kserve_model_server
from kserve.predictor_config import PredictorConfig

from food_transformer import metrics
from food_transformer.model import DEFAULT_COALESCE_IMAGES, DEFAULT_ESTIMATE_WINDOW, DEFAULT_TOP_K, FoodTransformer
from food_transformer.server import DEFAULT_MAX_BODY_BYTES, BoundModelServer
from food_transformer.spec import read_calibration, resolve_partial
from food_transformer.validation import DEFAULT_MAX_BATCH
from gourmetgram.constants import HOST, MODEL_NAME
from gourmetgram.errors import BadInput, entry_point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m food_transformer",
        description="GourmetGram KServe transformer: images -> shared preprocessing -> "
        "Triton (v2) -> labels, confidences and top-k.",
        parents=[kserve_model_server.parser],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    group = parser.add_argument_group("food transformer")
    group.add_argument("--model_spec", default=None,
                       help="export bundle's model_spec.json (or the bundle folder): image size "
                       "and class names. Flags below override it; whatever is still missing is "
                       "read from the predictor's v2 model metadata.")
    group.add_argument("--image_size", type=int, default=None, help="input side in pixels")
    group.add_argument("--labels_file", default=None,
                       help="labels.txt with one class name per line, in index order")
    group.add_argument("--class_names", default=None, help="comma-separated class names, index order")
    group.add_argument("--top_k", type=int, default=DEFAULT_TOP_K, help="classes listed per image")
    group.add_argument("--max_batch", type=int, default=DEFAULT_MAX_BATCH,
                       help="most images accepted in one request")
    group.add_argument("--coalesce_images", type=int, default=DEFAULT_COALESCE_IMAGES,
                       help="most images of concurrent requests sent to the predictor in one call "
                       "(at most Triton's max_batch_size; 1 sends each image alone)")
    group.add_argument("--revision", default=None,
                       help="metrics label; env K_REVISION (set by Knative) wins, else 'local'")
    group.add_argument("--host", default=os.environ.get("TRANSFORMER_HOST", HOST),
                       help="address to listen on (kserve alone would bind 0.0.0.0)")
    group.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                       help="largest request body accepted, else 413")
    group.add_argument("--calibration", default=None,
                       help="the bundle's calibration.json (temperature, OOD and ATC thresholds); default: "
                       "the one next to --model_spec, else none (T = 1, every image in distribution)")
    group.add_argument("--model_version", default=os.environ.get("GOURMETGRAM_MODEL_VERSION", ""),
                       help="registered version served (label of the accuracy estimate; env GOURMETGRAM_MODEL_VERSION)")
    group.add_argument("--stage", default=os.environ.get("GOURMETGRAM_STAGE", ""),
                       help="stage served (label of the accuracy estimate; env GOURMETGRAM_STAGE)")
    group.add_argument("--estimate_window", type=int, default=DEFAULT_ESTIMATE_WINDOW,
                       help="recent predictions (at most an hour old) behind the accuracy estimate")
    # kserve opens a gRPC port by default; the transformer is reached over HTTP only.
    parser.set_defaults(enable_grpc=False)
    return parser


def _given(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` if it was passed explicitly (kserve's defaults hide that)."""
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


def resolve_protocol(argv: Sequence[str]) -> str:
    """``--protocol`` (what KServe samples pass) or ``--predictor_protocol``; default v2.

    kserve 0.20's ModelServer reads only ``--predictor_protocol`` and silently ignores the
    deprecated ``--protocol``; the transformer honours both, and refuses v1 (Triton is v2).
    """
    given = {v for v in (_given(argv, "--protocol"), _given(argv, "--predictor_protocol")) if v}
    if len(given) > 1:
        raise BadInput(f"--protocol and --predictor_protocol disagree: {sorted(given)}")
    protocol = given.pop() if given else "v2"
    if protocol == "v1":
        raise BadInput("the predictor (Triton) speaks only the v2 protocol: pass --protocol v2 or grpc-v2")
    return protocol


def build_model(args: argparse.Namespace, argv: Sequence[str]) -> tuple[FoodTransformer, PredictorConfig]:
    """Flags -> a loaded FoodTransformer and the PredictorConfig it talks through."""
    if not args.predictor_host:
        raise BadInput("pass --predictor_host HOST:PORT (the predictor's HTTP address, e.g. Triton's)")
    config = PredictorConfig(
        predictor_host=args.predictor_host,
        predictor_protocol=resolve_protocol(argv),
        predictor_use_ssl=args.predictor_use_ssl,
        predictor_request_timeout_seconds=args.predictor_request_timeout_seconds,
        predictor_request_retries=args.predictor_request_retries,
        predictor_health_check=args.enable_predictor_health_check,
    )
    spec = resolve_partial(args.image_size, args.labels_file, args.class_names, args.model_spec)
    model_name = args.model_name if _given(argv, "--model_name") else MODEL_NAME
    if args.estimate_window < 1:
        raise BadInput("--estimate_window must be at least 1")
    model = FoodTransformer(
        model_name, config, spec, top_k=args.top_k, max_batch=args.max_batch,
        revision=metrics.resolve_revision(args.revision), coalesce_images=args.coalesce_images,
        calibration=read_calibration(args.calibration, args.model_spec), model_version=args.model_version,
        stage=args.stage, estimate_window=args.estimate_window,
    )
    model.load()
    return model, config


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    model, config = build_model(args, argv)
    server = BoundModelServer(
        args.host, args.max_body_bytes,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
        predictor_config=config,
    )
    server.start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())

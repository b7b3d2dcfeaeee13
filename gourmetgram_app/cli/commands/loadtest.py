"""``gourmetgram loadtest``: a headless Locust run against staging, judged by the SLOs."""

from __future__ import annotations

import argparse
from pathlib import Path

from gourmetgram.constants import GATEWAY_PORT, HOST
from gourmetgram.tracking import home


def _run(args: argparse.Namespace) -> int:
    from gourmetgram.config import load_slo
    from gourmetgram.loadtest import run_loadtest

    slo = load_slo(args.slo)
    images = Path(args.images) if args.images else home() / "data" / "demo" / "evaluation"
    out = Path(args.out) if args.out else home() / "loadtests" / args.shape
    summary = run_loadtest(args.host, images, out, slo, shape=args.shape, users=args.users,
                           spawn_rate=args.spawn_rate, run_time=args.run_time,
                           bad_request_share=args.bad_request_share)
    print(summary.format())
    return 0 if summary.passed else 1


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "loadtest", help="load-test an endpoint with Locust and check the SLOs",
        description="Run the Locust suite (loadtests/) headless against an endpoint, write Locust's CSV and "
        "HTML report plus summary.json, and exit 1 when an SLO (configs/slo.yaml) is missed.")
    parser.add_argument("--host", default=f"http://{HOST}:{GATEWAY_PORT}", help="endpoint (default: the local gateway)")
    parser.add_argument("--images", help="folder of images to send (default: the demo evaluation split)")
    parser.add_argument("--shape", default="constant", choices=["constant", "ramp", "step", "soak"],
                        help="load shape: constant users for --run-time, or a shape from loadtests/shapes/")
    parser.add_argument("--users", type=int, default=4, help="users for the constant shape")
    parser.add_argument("--spawn-rate", type=float, default=2.0, help="users started per second")
    parser.add_argument("--run-time", default="60s", help="duration for the constant shape, e.g. 30s, 5m")
    parser.add_argument("--bad-request-share", type=float, default=0.05, help="share of deliberately bad requests")
    parser.add_argument("--slo", default="slo", help="SLO file or built-in name (default: configs/slo.yaml)")
    parser.add_argument("--out", help="report folder (default: $GOURMETGRAM_HOME/loadtests/<shape>)")
    parser.set_defaults(func=_run)

"""``gourmetgram detector``: build the drift detector for a bundle, or serve it."""

from __future__ import annotations

import argparse
import json


def _build(args: argparse.Namespace) -> int:
    from drift_detector.build import build_detector
    from drift_detector.detector import SETTINGS_FILE

    out = build_detector(args.bundle, args.dataset, n_reference=args.n_reference,
                         window_size=args.window_size, ert=args.ert,
                         n_bootstraps=args.n_bootstraps, seed=args.seed)
    settings = json.loads((out / SETTINGS_FILE).read_text())
    t = settings["timings"]
    print(f"drift detector written to {out}: {settings['n_reference']} reference embeddings "
          f"(dim {settings['embedding_dim']}), window {settings['window_size']}, ERT {settings['ert']}, "
          f"final threshold {settings['thresholds'][-1]:.4g}; embed {t['embed_seconds']:.1f}s, "
          f"configure {t['configure_seconds']:.1f}s")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from drift_detector.server import serve
    from gourmetgram import control

    # The ingest token the local gateway's logger also sends (env, else $GOURMETGRAM_HOME/secrets).
    token, path = control.detector_token()
    print(f"ingest token: {path or '$' + control.DETECTOR_TOKEN_ENV}", flush=True)
    serve(args.bundle, host=args.host, port=args.port, max_queue=args.max_queue, token=token)
    return 0


def add_parser(subparsers) -> None:
    from drift_detector import build as defaults
    from gourmetgram.constants import DETECTOR_PORT, HOST

    parser = subparsers.add_parser(
        "detector", help="build or serve the drift detector (the inference logger's sink)",
        description="Online MMD drift detection on the served model's embeddings (alibi-detect), "
        "plus label drift of the predicted classes.")
    sub = parser.add_subparsers(dest="detector_command", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="embed reference images and save the detector in the bundle",
                           description="Writes <bundle>/detector/ (alibi-detect config, label prior, settings).")
    build.add_argument("--bundle", required=True, help="exported model bundle folder")
    build.add_argument("--dataset", required=True, help="dataset root in the Food-11 layout")
    build.add_argument("--n-reference", type=int, default=defaults.N_REFERENCE)
    build.add_argument("--window-size", type=int, default=defaults.WINDOW_SIZE)
    build.add_argument("--ert", type=float, default=defaults.ERT,
                       help="expected run time (events) between false alarms without drift")
    build.add_argument("--n-bootstraps", type=int, default=defaults.N_BOOTSTRAPS)
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=_build)
    serve = sub.add_parser("serve", help="run the logger sink (POST / CloudEvents; /metrics, /status)")
    serve.add_argument("--bundle", required=True, help="exported model bundle with detector/ built")
    serve.add_argument("--host", default=HOST)
    serve.add_argument("--port", type=int, default=DETECTOR_PORT)
    serve.add_argument("--max-queue", type=int, default=1000)
    serve.set_defaults(func=_serve)

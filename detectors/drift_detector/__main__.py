"""``python -m drift_detector --bundle DIR [--host] [--port]``: run the logger sink."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")  # alibi-detect imports numba

from gourmetgram.errors import entry_point  # noqa: E402 - after the numba setting


@entry_point
def main(argv: list[str] | None = None) -> int:
    from gourmetgram.constants import DETECTOR_PORT, HOST

    parser = argparse.ArgumentParser(
        prog="python -m drift_detector",
        description="Drift detector: the KServe inference logger's sink (CloudEvents in, "
        "online-MMD and label drift out on /metrics and /status).")
    parser.add_argument("--bundle", required=True, help="exported model bundle with detector/ built")
    parser.add_argument("--host", default=os.environ.get("DETECTOR_HOST", HOST))
    parser.add_argument("--port", type=int, default=int(os.environ.get("DETECTOR_PORT", DETECTOR_PORT)))
    parser.add_argument("--max-queue", type=int, default=1000, help="events held before dropping")
    parser.add_argument("--token-file", help="require this ingest token on POST / (default: "
                        "$GOURMETGRAM_DETECTOR_TOKEN if set, else none: restrict access otherwise, "
                        "e.g. a NetworkPolicy on the cluster)")
    args = parser.parse_args(argv)
    from drift_detector.server import serve
    from gourmetgram import control

    token = (control.read_token(Path(args.token_file)) if args.token_file
             else os.environ.get(control.DETECTOR_TOKEN_ENV, "").strip() or None)
    serve(args.bundle, host=args.host, port=args.port, max_queue=args.max_queue, token=token)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m capture_sink``: the capture sink + feedback API (one process, one port)."""

from __future__ import annotations

import argparse
import os
import sys

from gourmetgram.errors import BadInput, entry_point


@entry_point
def main(argv: list[str] | None = None) -> int:
    from gourmetgram.constants import CAPTURE_PORT, HOST

    p = argparse.ArgumentParser(
        prog="python -m capture_sink",
        description="Capture sink: logger CloudEvents in (images to the object store, predictions to "
        "the metadata database, sampled per stage), the user feedback API, loop metrics.")
    p.add_argument("--db", help="SQLAlchemy URL (default: $GOURMETGRAM_LOOP_DB or sqlite under "
                   "$GOURMETGRAM_HOME/loop/)")
    p.add_argument("--objects", help="object store URL: file:///dir or s3://bucket/prefix (default: "
                   "$GOURMETGRAM_LOOP_OBJECTS or $GOURMETGRAM_HOME/loop/objects)")
    p.add_argument("--config", default=os.environ.get("GOURMETGRAM_LOOP_CONFIG", "loop"),
                   help="loop config name or path (default: %(default)s)")
    p.add_argument("--bundle", help="exported bundle whose model_spec.json names the classes")
    p.add_argument("--class-names", help="comma-separated class names (instead of --bundle)")
    p.add_argument("--host", default=os.environ.get("CAPTURE_HOST", HOST))
    p.add_argument("--port", type=int, default=int(os.environ.get("CAPTURE_PORT", CAPTURE_PORT)))
    args = p.parse_args(argv)
    import uvicorn

    from capture_sink.server import CaptureService, create_app
    from gourmetgram.loop.settings import class_names_from, db_url, load_loop_settings
    from gourmetgram.loop.store import Store
    from gourmetgram.objectstore import ObjectStore

    settings = load_loop_settings(args.config)
    if not (args.bundle or args.class_names):
        raise BadInput("the capture sink needs the class names: --bundle DIR or --class-names a,b,c")
    names = class_names_from(args.bundle, args.class_names)
    store = Store(db_url(args.db))
    objects = ObjectStore(args.objects)
    service = CaptureService(store, objects, settings, names)
    print(f"capture sink: db {store.safe_url}, objects {objects.url}, "
          f"listening on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

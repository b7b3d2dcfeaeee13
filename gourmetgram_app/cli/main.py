"""Entry point of the ``gourmetgram`` command.

Each module in :mod:`gourmetgram_app.cli.commands` adds one subcommand through
``add_parser(subparsers)`` and sets ``func`` (``args -> int`` exit code).

Errors are mapped to exit codes by :func:`gourmetgram.errors.entry_point`, as in every other
process (by cause, see :mod:`gourmetgram.errors`); commands return 0 or 1 and raise for
everything else.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from gourmetgram import __version__
from gourmetgram.errors import EXIT_BAD_INPUT, EXIT_OK, entry_point

EXIT_CODES_HELP = """exit codes:
  0    success
  1    a check failed: the evaluation gate, an SLO, a canary analysis (rolled back)
  2    bad input: an argument, a config file, a dataset (the reason is on stderr)
  3    a dependency is unavailable: Prometheus, the Kubernetes API, MLflow, or a
       service that did not come up (the message says which and what to do)
  130  interrupted"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gourmetgram",
        description="GourmetGram Food-11 ML platform: train, evaluate, export, serve and roll out "
        "an image classifier with Kubeflow Pipelines, Triton and KServe (or locally, with no cluster).",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    from gourmetgram_app.cli import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.add_parser(subparsers)
    return parser


@entry_point
def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")  # alibi-detect's numba
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    return int(args.func(args) or EXIT_OK)


if __name__ == "__main__":
    sys.exit(main())

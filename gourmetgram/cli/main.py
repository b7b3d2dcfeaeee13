"""Entry point of the ``gourmetgram`` command.

Each module in :mod:`gourmetgram.cli.commands` adds one subcommand through
``add_parser(subparsers)`` and sets ``func`` (``args -> int`` exit code).

Exit codes: 0 success; 1 the command ran but its check failed (an evaluation gate, an
SLO, a rollout decision to roll back); 2 bad input (arguments, config, dataset) with the
reason on stderr; 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from gourmetgram import __version__
from gourmetgram.errors import UserError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gourmetgram",
        description="GourmetGram Food-11 ML platform: train, evaluate, export, serve and roll out "
        "an image classifier with Kubeflow Pipelines, Triton and KServe (or locally, with no cluster).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    from gourmetgram.cli import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")  # alibi-detect's numba
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or EXIT_OK)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

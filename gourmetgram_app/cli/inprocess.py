"""Run one ``gourmetgram`` command in this process, through its command-line interface.

The demo drives ``loop``, ``data`` and ``rollout`` exactly as a person would
type them (so the commands' own checks, output and decisions apply), without a subprocess.
"""

from __future__ import annotations

import argparse
import importlib

from gourmetgram.errors import EXIT_OK


def run_command(name: str, *argv: str) -> int:
    """``gourmetgram NAME ARGV...``; errors propagate to the caller, whose own entry point maps
    them to exit codes."""
    module = importlib.import_module(f"gourmetgram_app.cli.commands.{name}")
    parser = argparse.ArgumentParser(prog="gourmetgram")
    module.add_parser(parser.add_subparsers())
    args = parser.parse_args([name, *argv])
    return int(args.func(args) or EXIT_OK)

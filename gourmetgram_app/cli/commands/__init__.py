"""Subcommands of ``gourmetgram``; each module defines ``add_parser(subparsers)``."""

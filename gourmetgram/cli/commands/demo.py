"""``gourmetgram demo``: the whole loop on this machine, from nothing, in one command.

The demo is a sequence of stages over one shared :class:`DemoContext`; each stage prints
a heading, does one thing and records what later stages need. Add a stage by writing a
``(context) -> None`` function and appending it to :data:`STAGES`.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Callable

from gourmetgram.constants import SPLITS
from gourmetgram.tracking import home

DEMO_CONFIG = "demo"


@dataclasses.dataclass
class DemoContext:
    """What the stages share: the arguments in, the results out."""

    args: argparse.Namespace
    home: Path
    dataset: Path | None = None
    run: object | None = None  # gourmetgram.cli.commands.pipeline.LocalRunResult
    exit_code: int = 0
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


def _heading(title: str) -> None:
    print(f"\n{'#' * 78}\n# {title}\n{'#' * 78}", flush=True)


# -- stage 1: data ------------------------------------------------------------------------------

def _dataset_present(root: Path) -> bool:
    return (root / "classes.txt").is_file() and all((root / s).is_dir() for s in SPLITS)


def stage_data(ctx: DemoContext) -> None:
    """Build the embedded demo dataset unless it is already there."""
    from gourmetgram.data.demo import build_demo_dataset

    root = ctx.home / "data" / "demo"
    if ctx.args.rebuild_data or not _dataset_present(root):
        print(f"building the demo dataset in {root} (scikit-learn's handwritten digits, no download)")
        build_demo_dataset(root)
    else:
        print(f"using the demo dataset in {root} (--rebuild-data to write it again)")
    ctx.dataset = root


# -- stage 2: the training pipeline ------------------------------------------------------------

def stage_pipeline(ctx: DemoContext) -> None:
    """Run the KFP training pipeline locally with the demo config."""
    from gourmetgram.cli.commands.pipeline import run_local

    ctx.run = run_local(str(ctx.dataset), DEMO_CONFIG, epochs=ctx.args.epochs, stage=ctx.args.stage)
    if not ctx.run.registered:
        ctx.exit_code = 1


# -- stage 3: report ----------------------------------------------------------------------------

def stage_report(ctx: DemoContext) -> None:
    """The evaluation report, the gate's verdict and where everything is."""
    from gourmetgram.cli.commands.pipeline import format_summary

    print(format_summary(ctx.run))


# -- (serving, load test and monitoring stages are appended here; give them the predicate
#     ``lambda ctx: ctx.run is not None and ctx.run.registered`` so a rejected model stops) --------

Stage = tuple[str, Callable[[DemoContext], None], Callable[[DemoContext], bool]]

STAGES: list[Stage] = [
    # (heading, run, should it run? e.g. later stages only when a model was registered)
    ("1. data: the demo dataset", stage_data, lambda ctx: True),
    ("2. pipeline: ingest -> train -> evaluate -> gate -> export -> register (kfp.local)", stage_pipeline,
     lambda ctx: True),
    ("3. report", stage_report, lambda ctx: ctx.run is not None),
]


def run_demo(args: argparse.Namespace) -> int:
    ctx = DemoContext(args=args, home=home())
    for title, run, wanted in STAGES:
        if not wanted(ctx):
            continue
        _heading(title)
        started = time.perf_counter()
        run(ctx)
        ctx.timings[title] = time.perf_counter() - started
    print("\nstage timings: " + ", ".join(f"{t.split(':')[0]} {s:.0f}s" for t, s in ctx.timings.items()))
    if ctx.exit_code:
        print("the model was rejected by the evaluation gate (see the reasons above)")
    return ctx.exit_code


def _epochs(value: str) -> int:
    from gourmetgram.cli.commands.pipeline import _int_at_least_minus_one

    return _int_at_least_minus_one(value)


def add_parser(subparsers) -> None:
    from gourmetgram.constants import STAGES as MODEL_STAGES, STAGING

    parser = subparsers.add_parser(
        "demo", help="run the whole loop locally on the embedded demo dataset",
        description="Build the demo dataset if needed, run the training pipeline with kfp.local "
                    "(config 'demo'), and print the evaluation report and where the model went. "
                    "State goes to $GOURMETGRAM_HOME (default ./.gourmetgram). Exit 1 if the "
                    "evaluation gate rejects the model.")
    parser.add_argument("--epochs", type=_epochs, default=-1,
                        help="-1: from configs/demo.yaml; 0: untrained (watch the gate reject it)")
    parser.add_argument("--stage", default=STAGING, choices=MODEL_STAGES, help="registry alias (default staging)")
    parser.add_argument("--rebuild-data", action="store_true", help="write the demo dataset again")
    parser.set_defaults(func=run_demo)

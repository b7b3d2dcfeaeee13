"""`serve` without --bundle serves what the registry alias for the stage points at, not the
newest folder under models/; with no such alias it says so and what to do (exit 2)."""

from __future__ import annotations

import os
import time

import pytest
import torch

from gourmetgram import registry
from gourmetgram.config import ExportConfig
from gourmetgram.constants import PRODUCTION, STAGING
from gourmetgram.errors import BadInput
from gourmetgram.export import export_bundle
from gourmetgram.model import ModelSpec, build_model
from gourmetgram.tracking import configure_mlflow
from gourmetgram_app.cli.main import main

SPEC = ModelSpec(tuple(f"dish_{i}" for i in range(4)), image_size=32, width_mult=0.25)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A private GOURMETGRAM_HOME (its own sqlite registry), restored afterwards."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("serve_home")
    mp.setenv("GOURMETGRAM_HOME", str(path))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield path
    mp.undo()


def test_serve_uses_the_stage_alias_not_the_newest_bundle(home, capsys):
    # No alias yet: a clear error naming the alias and the ways out, exit 2 on the CLI.
    from gourmetgram_app.local.bundles import find_latest_bundle, registered_bundle
    from gourmetgram_app.local.stack import LocalStack

    # No alias yet: a clear error naming the alias and the ways out, exit 2 on the CLI.
    with pytest.raises(BadInput, match=rf"alias '{STAGING}'.*pipeline run.*--bundle"):
        registered_bundle(STAGING)
    assert main(["serve", "--stage", STAGING, "--free-ports"]) == 2
    err = capsys.readouterr().err
    assert f"alias '{STAGING}'" in err and "--bundle DIR" in err

    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    good = home / "models" / "good"
    export_bundle(model, good, ExportConfig(max_batch_size=4, preferred_batch_sizes=(2,)))
    # A newer folder (like the demo's bad canary) that nothing points at.
    newer = home / "models" / "bad-canary"
    (newer / "triton").mkdir(parents=True)
    later = time.time() + 60
    os.utime(newer / "triton", (later, later))
    assert find_latest_bundle() == newer  # what serve used to pick

    mlflow = configure_mlflow()
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                                        pip_requirements=["torch"])
    tags = registry.version_tags(evaluation_passed=True, accuracy=0.9, dataset_fingerprint="t",
                                 bundle_uri=str(good))
    registry.register_model(info.model_uri, tags, alias=STAGING)
    registry.register_model(info.model_uri, {**tags, registry.TAG_BUNDLE: str(newer)}, alias=None)

    assert registered_bundle(STAGING) == good.resolve()
    assert LocalStack(stage=STAGING).bundle == good.resolve()
    # Another stage's alias is another question: production has none.
    with pytest.raises(BadInput, match=f"alias '{PRODUCTION}'"):
        LocalStack(stage=PRODUCTION)
    # An alias whose bundle is not on this machine is a clear error too.
    gone = registry.register_model(info.model_uri, {**tags, registry.TAG_BUNDLE: str(home / "gone")},
                                   alias=PRODUCTION)
    with pytest.raises(BadInput, match=f"version {gone} .*not a folder on this machine"):
        LocalStack(stage=PRODUCTION)


def test_messages_name_only_commands_that_exist():
    """Every "`gourmetgram X ...`" a message or doc tells users to run names a real subcommand
    (two messages once sent users to `gourmetgram export`, which never existed)."""
    import argparse
    import re

    from gourmetgram.constants import REPO_ROOT
    from gourmetgram_app.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = set(sub.choices)
    docs = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    files = docs + [p for d in ("gourmetgram", "components", "pipelines", "transformers", "detectors")
                    for p in (REPO_ROOT / d).rglob("*.py")]
    named = {(p.relative_to(REPO_ROOT).as_posix(), m) for p in files
             for m in re.findall(r"`gourmetgram ([a-z][a-z-]*)", p.read_text())}
    assert named, "the scan found no command names at all"
    unknown = sorted((f, m) for f, m in named if m not in commands)
    assert not unknown, f"messages name commands that do not exist: {unknown}"

"""What every step shares: the error channel, config and stage checks, artifact copies and
MLflow tags. No kfp import: the step runtime must not load kfp.dsl's authoring API."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from components.steps.outcomes import StepError
from gourmetgram.config import RunConfig, load_config, override
from gourmetgram.constants import STAGES
from gourmetgram.errors import BadInput, ConfigError, GourmetGramError

# A file (JSON lines of StepError) the local runner names for its steps, which inherit the
# environment: how a step's known error reaches the CLI instead of KFP's generic "task failed".
# Unset on the cluster, where the error line is the last thing in the failed pod's log.
STEP_ERRORS_ENV = "GOURMETGRAM_STEP_ERRORS"


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a known error into one line, a :class:`StepError` record and its exit status
    (2 bad input, 3 a dependency unavailable...; no traceback to dig through)."""
    try:
        yield
    except GourmetGramError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        path = os.environ.get(STEP_ERRORS_ENV)
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(StepError(str(exc), exc.exit_code).to_json() + "\n")
        raise SystemExit(exc.exit_code) from None


def step_errors(path: str | Path) -> list[StepError]:
    """The errors the steps recorded in ``path`` (see :data:`STEP_ERRORS_ENV`), oldest first."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [StepError.from_json(line) for line in lines if line.strip()]


def resolve_config(config: str, epochs: int = -1) -> RunConfig:
    """``demo`` | ``food11`` | a YAML path, with the pipeline's ``epochs`` (-1 keeps the file's;
    otherwise it sets both the from-scratch and the fine-tune epochs: whichever the run does)."""
    if epochs < -1:
        raise ConfigError(f"epochs must be -1 (from the config) or >= 0, got {epochs}")
    cfg = load_config(config)
    if epochs < 0:
        return cfg
    fine_tune = dataclasses.asdict(cfg.train.fine_tune)
    return override(cfg, "train", epochs=epochs, fine_tune={**fine_tune, "epochs": epochs})


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    return stage


def is_local_uri(uri: str) -> bool:
    """True for artifacts on this machine (``kfp.local``), False for minio:// s3:// gs://."""
    return urllib.parse.urlparse(uri).scheme in ("", "file")


def link_or_copy(src: str, dst: str) -> str:
    """Hard-link when source and target share a file system (free), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def copy_bundle(src: str | Path, dst: str | Path) -> Path:
    """A fresh copy of a bundle folder (hard links where possible): artifacts are immutable."""
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=link_or_copy)
    return dst


def set_run_tags(run_id: str | None, tags: dict[str, str]) -> None:
    if not run_id:
        return
    from gourmetgram.tracking import configure_mlflow

    client = configure_mlflow().MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value)[:5000])


def check_version(version: int, registered_model_name: str) -> int:
    """Fail fast (before a long load test) when ``version`` is not registered."""
    from gourmetgram import registry

    if isinstance(version, bool) or int(version) < 1:
        raise BadInput(f"version must be a registered model version (>= 1), got {version}")
    registry.get_version(int(version), registered_model_name)
    return int(version)


def tag_version(version: int, registered_model_name: str, tags: dict[str, str]) -> None:
    from gourmetgram.tracking import configure_mlflow

    client = configure_mlflow().MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_model_name, str(int(version)), key, str(value)[:5000])


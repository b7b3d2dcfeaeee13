"""Shared fixtures: a small demo dataset built once per session, an isolated home."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("gghome")
    os.environ["GOURMETGRAM_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return home


@pytest.fixture(scope="session")
def demo_dataset(session_home) -> Path:
    """The full demo dataset (with evaluation sets), built once."""
    from gourmetgram.data.demo import build_demo_dataset

    return build_demo_dataset(session_home / "data" / "demo")

"""MLflow registry: register, tag, move stages (aliases), on each database MLflow's store runs
on: a temporary sqlite file (the local default) and a throwaway PostgreSQL server (the cluster's
backend store; the MLflow server in front of it is tested in test_mlflow_server.py)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from gourmetgram import registry
from gourmetgram.constants import CANARY, PRODUCTION, REGISTERED_MODEL_NAME, STAGING
from gourmetgram.errors import BadInput
from gourmetgram.model import Classifier, ModelSpec
from gourmetgram.tracking import EXPERIMENT, configure_mlflow

SPEC = ModelSpec(tuple(f"dish_{i}" for i in range(10)), image_size=64, width_mult=0.5)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def logged(request, tmp_path_factory):
    """A model logged the way training.py logs it, in a private GOURMETGRAM_HOME, on the
    default sqlite store or (``MLFLOW_TRACKING_URI``) a new PostgreSQL database."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("registry_home")
    mp.setenv("GOURMETGRAM_HOME", str(home))
    database = None
    if request.param == "postgresql":
        postgres = request.getfixturevalue("postgres")
        database = postgres.create_database()
        mp.setenv("MLFLOW_TRACKING_URI", database)
    else:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("GIT_COMMIT", raising=False)
    mlflow = configure_mlflow()
    torch.manual_seed(0)
    model = Classifier(SPEC).eval()
    example = np.zeros((2, 3, SPEC.image_size, SPEC.image_size), np.float32)
    with mlflow.start_run() as run:
        # pip_requirements skips MLflow's requirement inference (a slow subprocess)
        info = mlflow.pytorch.log_model(model, name="model", input_example=example,
                                        serialization_format="pickle", pip_requirements=["torch"])
    yield home, info.model_uri, run.info.run_id, model
    mp.undo()
    if database is not None:
        postgres.drop_database(database)


def _tags(bundle: str, run_id: str | None = None) -> dict[str, str]:
    return registry.version_tags(evaluation_passed=True, accuracy=0.9125, dataset_fingerprint="abc123",
                                 bundle_uri=bundle, run_id=run_id)


def test_register_tags_and_alias(logged):
    home, model_uri, run_id, model = logged
    uri = configure_mlflow().get_tracking_uri()
    assert str(home) in uri or uri.startswith("postgresql")  # the temp store, not the user's
    assert configure_mlflow().get_experiment_by_name(EXPERIMENT).artifact_location.startswith(
        (home / "mlartifacts").as_uri())  # a database store's artifacts: in the state folder
    assert model_uri.startswith("models:/")
    v1 = registry.register_model(model_uri, _tags("/bundles/v1"))
    assert registry.version_for(STAGING) == v1
    info = registry.get_version(v1)
    assert info.aliases == (STAGING,)
    assert info.tags[registry.TAG_EVALUATION_PASSED] == "true"
    assert info.tags[registry.TAG_ACCURACY] == "0.9125"
    assert info.tags[registry.TAG_DATASET_FINGERPRINT] == "abc123"
    assert info.tags[registry.TAG_BUNDLE] == "/bundles/v1"
    assert info.tags[registry.TAG_RUN_ID] == run_id  # filled in from the logged model
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=registry.REPO_ROOT, capture_output=True, text=True)
    assert info.tags[registry.TAG_GIT_COMMIT] == (head.stdout.strip() if head.returncode == 0 else "unknown")
    assert registry.bundle_for(STAGING) == "/bundles/v1" == registry.bundle_for(v1)
    # the registered version loads back as the same network
    loaded = configure_mlflow().pytorch.load_model(f"models:/{REGISTERED_MODEL_NAME}@{STAGING}")
    x = torch.randn(2, 3, SPEC.image_size, SPEC.image_size)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.eval()(x), model(x))


def test_stage_moves(logged, monkeypatch):
    _, model_uri, _, _ = logged
    monkeypatch.setenv("GIT_COMMIT", "feedbeef")
    first = registry.version_for(STAGING) or registry.register_model(model_uri, _tags("/bundles/a"))
    second = registry.register_model(model_uri, _tags("/bundles/b"))
    assert second > first
    assert registry.get_version(second).tags[registry.TAG_GIT_COMMIT] == "feedbeef"
    assert registry.version_for(STAGING) == second  # the alias moved to the new version

    registry.set_stage(PRODUCTION, first)
    registry.set_stage(CANARY, second)
    assert registry.stages() == {STAGING: second, CANARY: second, PRODUCTION: first}
    assert registry.bundle_for(PRODUCTION).endswith(("/bundles/v1", "/bundles/a"))

    registry.set_stage(PRODUCTION, second)  # promote the canary
    registry.clear_stage(CANARY)
    registry.clear_stage(CANARY)  # clearing an unset stage is fine
    assert registry.stages() == {STAGING: second, CANARY: None, PRODUCTION: second}
    with pytest.raises(BadInput, match="no model version is in stage 'canary'"):
        registry.bundle_for(CANARY)


def test_bad_stage_and_version(logged):
    with pytest.raises(BadInput, match="unknown stage 'prod'"):
        registry.set_stage("prod", 1)
    with pytest.raises(BadInput, match="unknown stage"):
        registry.version_for("Staging")
    with pytest.raises(BadInput, match="has no version 999"):
        registry.set_stage(PRODUCTION, 999)
    with pytest.raises(BadInput, match="unknown stage"):
        registry.register_model(logged[1], {}, alias="champion")


def test_unregistered_model_has_no_stages(logged):
    assert registry.stages(name="never-registered") == {STAGING: None, CANARY: None, PRODUCTION: None}
    registry.clear_stage(STAGING, name="never-registered")


def test_git_commit_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("GIT_COMMIT", "0123abc")
    assert registry.git_commit() == "0123abc"
    monkeypatch.delenv("GIT_COMMIT")
    monkeypatch.setattr(registry, "REPO_ROOT", tmp_path)  # not a git checkout
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert registry.git_commit() == "unknown"

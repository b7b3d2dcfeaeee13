"""The MLflow model registry: one registered model, one alias per stage.

A model version is registered after the evaluation gate passes and carries tags that
tie it to its evidence (evaluation result, dataset fingerprint, git commit, MLflow run)
and to the exported bundle that serving deploys. Stages (``staging``, ``canary``,
``production``) are registry aliases: stage transitions are deprecated since MLflow 2.9,
and an alias points at exactly one version, which is what a rollout needs.

The store is whatever :func:`gourmetgram.tracking.configure_mlflow` selects: the local
sqlite file by default, the cluster's MLflow server when ``MLFLOW_TRACKING_URI`` is set.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from typing import Mapping

from gourmetgram.constants import REGISTERED_MODEL_NAME, REPO_ROOT, STAGES, STAGING
from gourmetgram.environment import environment
from gourmetgram.errors import BadInput
from gourmetgram.tracking import configure_mlflow

# Model-version tag keys (dashboards, `rollout` and people read these).
TAG_EVALUATION_PASSED = "evaluation.passed"
TAG_ACCURACY = "evaluation.accuracy"
TAG_DATASET_FINGERPRINT = "data.fingerprint"
TAG_GIT_COMMIT = "git.commit"
TAG_BUNDLE = "bundle.uri"
TAG_RUN_ID = "mlflow.run_id"


@dataclasses.dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: int
    aliases: tuple[str, ...]
    tags: dict[str, str]
    source: str
    run_id: str | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def git_commit() -> str:
    """The code version: ``$GIT_COMMIT`` (set by CI/images), else the repo's HEAD, else "unknown"."""
    env = environment().git_commit
    if env:
        return env
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def version_tags(*, evaluation_passed: bool, accuracy: float, dataset_fingerprint: str,
                 bundle_uri: str, run_id: str | None = None, commit: str | None = None) -> dict[str, str]:
    """The standard tags for a new version, under the keys this module reads back."""
    tags = {TAG_EVALUATION_PASSED: str(bool(evaluation_passed)).lower(),
            TAG_ACCURACY: f"{float(accuracy):.6g}", TAG_DATASET_FINGERPRINT: dataset_fingerprint,
            TAG_BUNDLE: str(bundle_uri), TAG_GIT_COMMIT: commit or git_commit()}
    if run_id:
        tags[TAG_RUN_ID] = run_id
    return tags


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise BadInput(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    return stage


def _client():
    configure_mlflow()
    from mlflow import MlflowClient

    return MlflowClient()


def _is_missing(exc: Exception) -> bool:
    """True for "no such registered model / alias" (sqlite store and REST server alike)."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False
    code = exc.error_code
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or (
        code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc.message).lower()
    )


def register_model(model_uri: str, tags: Mapping[str, object], alias: str | None = STAGING,
                   name: str = REGISTERED_MODEL_NAME) -> int:
    """Register ``model_uri`` (``models:/<id>`` or ``runs:/<run>/model``) as a new version.

    Adds the git commit and the source run id when the caller's tags lack them, then
    points ``alias`` at the new version (``None`` leaves aliases alone).
    """
    if alias is not None:
        check_stage(alias)
    client = _client()
    import mlflow
    from mlflow.exceptions import MlflowException

    clean = {str(k): str(v) for k, v in tags.items()}
    clean.setdefault(TAG_GIT_COMMIT, git_commit())
    try:
        mv = mlflow.register_model(model_uri, name, tags=clean)
    except MlflowException as exc:
        raise BadInput(f"cannot register {model_uri!r} as {name!r}: {exc.message}") from None
    version = int(mv.version)
    run_id = mv.run_id
    if not run_id and model_uri.startswith("models:/"):
        try:  # MLflow 3 logged models know the run that produced them
            run_id = client.get_logged_model(model_uri.split("/", 2)[-1].split("/")[0]).source_run_id
        except MlflowException:
            run_id = None
    if TAG_RUN_ID not in clean and run_id:
        client.set_model_version_tag(name, str(version), TAG_RUN_ID, run_id)
    if alias is not None:
        client.set_registered_model_alias(name, alias, str(version))
    return version


def get_version(version: int, name: str = REGISTERED_MODEL_NAME) -> RegisteredVersion:
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        mv = client.get_model_version(name, str(int(version)))
    except MlflowException as exc:
        if _is_missing(exc):
            raise BadInput(f"model {name!r} has no version {version}") from None
        raise
    return RegisteredVersion(name, int(mv.version), tuple(sorted(mv.aliases or ())), dict(mv.tags or {}),
                             mv.source, mv.run_id or (mv.tags or {}).get(TAG_RUN_ID))


def set_stage(stage: str, version: int, name: str = REGISTERED_MODEL_NAME) -> None:
    """Point ``stage`` at ``version`` (moving it from wherever it pointed)."""
    check_stage(stage)
    get_version(version, name)  # a clear error for a version that does not exist
    _client().set_registered_model_alias(name, stage, str(int(version)))


def clear_stage(stage: str, name: str = REGISTERED_MODEL_NAME) -> None:
    """Remove ``stage``'s alias; a stage that is not set is left as it is."""
    check_stage(stage)
    from mlflow.exceptions import MlflowException

    try:
        _client().delete_registered_model_alias(name, stage)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise


def version_for(stage: str, name: str = REGISTERED_MODEL_NAME) -> int | None:
    """The version ``stage`` points at, or None when it is unset (or nothing is registered)."""
    check_stage(stage)
    from mlflow.exceptions import MlflowException

    try:
        return int(_client().get_model_version_by_alias(name, stage).version)
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise


def stages(name: str = REGISTERED_MODEL_NAME) -> dict[str, int | None]:
    return {stage: version_for(stage, name) for stage in STAGES}


def bundle_for(stage_or_version: str | int, name: str = REGISTERED_MODEL_NAME) -> str:
    """The exported bundle (path or URI) of a stage's version or of a version number."""
    if isinstance(stage_or_version, str) and not stage_or_version.isdigit():
        version = version_for(stage_or_version, name)
        if version is None:
            raise BadInput(f"no model version is in stage {stage_or_version!r} of {name!r}")
    else:
        version = int(stage_or_version)
    info = get_version(version, name)
    bundle = info.tags.get(TAG_BUNDLE)
    if not bundle:
        raise BadInput(f"version {version} of {name!r} has no {TAG_BUNDLE!r} tag; it was not exported")
    return bundle


def list_versions(name: str = REGISTERED_MODEL_NAME) -> list[RegisteredVersion]:
    """Every version of ``name``, newest first, with its aliases and tags; reads only.

    Unlike the writers above it does not create the experiment or a local store: a
    store that does not exist yet (no sqlite file) is a :class:`BadInput`.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from gourmetgram.tracking import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not os.path.exists(uri.removeprefix("sqlite:///")):
        raise BadInput(f"no model registry yet ({uri} does not exist): run the pipeline first")
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    try:
        found = client.search_model_versions(f"name='{name}'")
        # search results carry no aliases (MLflow 3.17, sqlite store): the registered model has them
        aliases: dict[str, list[str]] = {}
        for alias, version in (client.get_registered_model(name).aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
    except MlflowException as exc:
        if _is_missing(exc):
            return []
        raise BadInput(f"cannot read the model registry at {uri}: {exc.message}") from None
    versions = [RegisteredVersion(name, int(mv.version), tuple(sorted(set(mv.aliases or ()) | set(
                                      aliases.get(str(mv.version), [])))), dict(mv.tags or {}),
                                  mv.source or "", mv.run_id or (mv.tags or {}).get(TAG_RUN_ID)) for mv in found]
    return sorted(versions, key=lambda v: v.version, reverse=True)

"""Register the served bundle in MLflow under a stage's alias, or record why the gate stopped it."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from components.steps.outcomes import RegistrationOutcome
from components.steps.runtime import check_stage, is_local_uri, link_or_copy, set_run_tags, tag_version
from gourmetgram.bundle import triton_repo_uri
from gourmetgram.errors import BadInput


def logged_model_uri(run_id: str) -> str:
    """The MLflow 3 URI of the model the training run logged (``models:/m-...``)."""
    from gourmetgram.tracking import configure_mlflow

    mlflow = configure_mlflow()
    run = mlflow.get_run(run_id)
    outputs = getattr(run, "outputs", None)
    for output in getattr(outputs, "model_outputs", None) or []:
        return f"models:/{output.model_id}"
    return f"runs:/{run_id}/model"  # MLflow 3 resolves this to the run's logged model too


def local_models_dir() -> Path:
    from gourmetgram.tracking import home

    return home() / "models"


def publish_local_bundle(bundle_path: str | Path, name: str) -> Path:
    """Copy a local bundle to ``$GOURMETGRAM_HOME/models/<name>/``, where ``serve`` looks."""
    target = local_models_dir() / name
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(bundle_path, target, copy_function=link_or_copy)
    return target


def register_step(mlflow_run_id: str, bundle_uri: str, bundle_path: str | Path, bundle_metadata: dict,
                  stage: str, registered_model_name: str, model_name: str, accuracy: float,
                  dataset_fingerprint: str) -> RegistrationOutcome:
    """Register the training run's model under ``stage``'s alias, tagged with its bundle.

    A local run (``kfp.local``: the artifact is a path) first copies the bundle to
    ``$GOURMETGRAM_HOME/models/<run id>/`` and tags that path. On the cluster the bundle is
    copied to the models bucket, ``s3://<bucket>/<model_name>/<version>`` (what an
    InferenceService's storageUri reads), never left at KFP's internal artifact path: the
    version is registered first (its number names the folder), the bundle uploaded and
    checked, and only then tagged and given the alias, so an alias never points at a
    version whose bundle is missing. ``bundle_metadata``: the bundle artifact's metadata
    (``size_bytes``, ``parity``, ``precision``), carried into the outcome.
    """
    from gourmetgram import objectstore
    from gourmetgram.registry import register_model, set_stage

    check_stage(stage)
    if not mlflow_run_id:
        raise BadInput("no MLflow run id from the training step; cannot register")
    model_uri = logged_model_uri(mlflow_run_id)
    if is_local_uri(bundle_uri):
        bundle = str(publish_local_bundle(bundle_path, mlflow_run_id))
        tags = _bundle_tags(bundle, mlflow_run_id, model_name, accuracy, dataset_fingerprint)
        version = register_model(model_uri, tags, alias=stage, name=registered_model_name)
    else:
        objectstore.endpoint_url()  # fail before registering when the store is not configured
        tags = _bundle_tags("", mlflow_run_id, model_name, accuracy, dataset_fingerprint)
        version = register_model(model_uri, {k: v for k, v in tags.items() if v}, alias=None,
                                 name=registered_model_name)
        bundle = objectstore.models_uri(model_name, version)
        files = objectstore.upload_tree(bundle_path, bundle)
        print(f"copied {len(files)} files of the served bundle to {bundle}", flush=True)
        tag_version(version, registered_model_name,
                    _bundle_tags(bundle, mlflow_run_id, model_name, accuracy, dataset_fingerprint))
        set_stage(stage, version, registered_model_name)
    set_run_tags(mlflow_run_id, {"gate": "passed", "registered_version": str(version)})
    outcome = RegistrationOutcome(
        verdict="registered", registered_model=registered_model_name, version=int(version), alias=stage,
        bundle_uri=bundle, triton_repo=triton_repo_uri(bundle), pipeline_artifact=bundle_uri,
        size_bytes=int(bundle_metadata.get("size_bytes", 0) or 0), parity=dict(bundle_metadata.get("parity") or {}),
        precision=str(bundle_metadata.get("precision", "fp32")))
    print(f"registered {registered_model_name} version {version} with alias {stage!r}; "
          f"bundle at {bundle}", flush=True)
    return outcome


def _bundle_tags(bundle: str, run_id: str, model_name: str, accuracy: float,
                 dataset_fingerprint: str) -> dict[str, str]:
    from gourmetgram.registry import version_tags

    tags = version_tags(evaluation_passed=True, accuracy=accuracy, dataset_fingerprint=dataset_fingerprint,
                        bundle_uri=bundle, run_id=run_id)
    tags.update({"triton.repo": triton_repo_uri(bundle) if bundle else "", "triton.model_name": model_name})
    tags.update(_lineage_tags(run_id))
    return tags


def _lineage_tags(run_id: str) -> dict[str, str]:
    """The training run's continual-training lineage (``train.init_from``, ``parent.*``), for the
    registered version: which version it was fine-tuned from is read off the registry itself."""
    from gourmetgram.continual import TAG_INIT_FROM
    from gourmetgram.tracking import configure_mlflow

    tags = configure_mlflow().get_run(run_id).data.tags
    return {k: v for k, v in tags.items() if k == TAG_INIT_FROM or k.startswith("parent.")}


def reject_step(reasons: Sequence[str], mlflow_run_id: str = "") -> RegistrationOutcome:
    """Record why the gate stopped the model: in the log, on the MLflow run, in the outcome."""
    items = [r for r in reasons if r.strip()] or ["the evaluation gate failed"]
    print("MODEL REJECTED by the evaluation gate; nothing is exported or registered. Reasons:", flush=True)
    for reason in items:
        print(f"  - {reason}", flush=True)
    set_run_tags(mlflow_run_id, {"gate": "rejected", "gate.reasons": "; ".join(items)})
    return RegistrationOutcome(verdict="rejected", reasons=items)


"""Train and evaluate: the checkpoint, its MLflow run, the offline suite and the gates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from components.steps.runtime import resolve_config, set_run_tags
from gourmetgram.constants import MODEL_NAME, REGISTERED_MODEL_NAME
from gourmetgram.continual import INIT_FROM_CONFIG
from gourmetgram.errors import BadInput, DependencyUnavailable

if TYPE_CHECKING:  # torch is imported by the steps that run, not by this module
    from gourmetgram.evaluation.suite import EvaluationResult
    from gourmetgram.training import TrainResult


def parent_step(config: str, init_from: str = INIT_FROM_CONFIG,
                registered_model_name: str = REGISTERED_MODEL_NAME) -> str:
    """Continual training: the registered version the retrain starts from, as a string (empty:
    from scratch, by choice or because no model is in production yet). ``init_from``:
    ``production`` | ``scratch`` | empty (the config's ``train.init_from``)."""
    from gourmetgram.continual import SCRATCH_INIT, parent_version, resolve_init_from

    mode = resolve_init_from(resolve_config(config), init_from)
    if mode == SCRATCH_INIT:
        print("init_from scratch: training from scratch", flush=True)
        return ""
    version = parent_version(mode, registered_model_name)
    if version is None:
        print(f"init_from production: no version of {registered_model_name} has the production alias yet "
              "(a first model): training from scratch", flush=True)
        return ""
    print(f"init_from production: fine-tuning {registered_model_name} version {version} (the production alias)",
          flush=True)
    return str(version)


def train_step(dataset_dir: str | Path, config: str, epochs: int, checkpoint_path: str | Path,
               source: str = "", run_name: str | None = None, parent_version: str = "",
               registered_model_name: str = REGISTERED_MODEL_NAME) -> TrainResult:
    """Train with the resolved config (MLflow-logged, tagged with its config, data source and,
    when ``parent_version`` names a registered version, the parent it was fine-tuned from)."""
    from gourmetgram.continual import load_parent
    from gourmetgram.data.layout import validate_dataset
    from gourmetgram.training import train

    cfg = resolve_config(config, epochs)
    if epochs == 0 and parent_version.strip():  # the pipeline's "untrained network" (proves the gate)
        print(f"epochs 0: the untrained network, not version {parent_version} unchanged", flush=True)
        parent_version = ""
    parent = load_parent(int(parent_version), registered_model_name) if parent_version.strip() else None
    report = validate_dataset(dataset_dir, check_images=False, progress=False)  # names, fingerprint
    mode = (f"fine-tuning {registered_model_name} version {parent_version} ({cfg.train.fine_tune.epochs} epochs, "
            f"lr {cfg.train.fine_tune.lr:g})" if parent else f"from scratch ({cfg.train.epochs} epochs)")
    print(f"training on {report.summary()} with {cfg.source}, {mode}", flush=True)
    result = train(dataset_dir, report, cfg, checkpoint_path, log_to_mlflow=True, progress=True,
                   run_name=run_name, parent=parent)
    set_run_tags(result.mlflow_run_id, {"config": cfg.source, "data.source": source or str(dataset_dir)})
    _log_provenance(result.mlflow_run_id, Path(dataset_dir))
    return result


def _log_provenance(run_id: str | None, dataset_dir: Path) -> None:
    """Production data merged into the training set: tags (counts, fingerprints, label sources)
    and the full provenance (sample ids) as an artifact."""
    from gourmetgram.data.merge import PROVENANCE_FILE

    path = dataset_dir / PROVENANCE_FILE
    if not run_id or not path.is_file():
        return
    prov = json.loads(path.read_text())
    p = prov["production"]
    set_run_tags(run_id, {
        "data.production.source": p["source"], "data.production.fingerprint": p["fingerprint"],
        "data.production.images": p["images"], "data.production.per_split": json.dumps(p["per_split"]),
        "data.production.label_sources": json.dumps(p["label_sources"]),
        "data.production.model_versions": json.dumps(p["model_versions"]),
        "data.base.fingerprint": prov["base"]["fingerprint"],
    })
    from gourmetgram.tracking import configure_mlflow

    configure_mlflow().MlflowClient().log_artifact(run_id, str(path), artifact_path="data")


def evaluate_step(checkpoint: str | Path, dataset_dir: str | Path, config: str, out_dir: str | Path,
                  mlflow_run_id: str = "", registered_model_name: str = "", model_name: str = ""
                  ) -> EvaluationResult:
    """Run the offline evaluation suite and, with ``registered_model_name``, the differential
    gate against the model in production; log it next to the training run (``evaluation.json``
    in ``out_dir``)."""
    from gourmetgram.evaluation.suite import JSON_NAME, evaluate, log_evaluation
    from gourmetgram.model import load_checkpoint

    cfg = resolve_config(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(checkpoint)
    result = evaluate(model, Path(dataset_dir), cfg.evaluation, out, cfg.export.ood_pass_rate)
    if registered_model_name and cfg.evaluation.differential.enabled:
        differential_gate(result, model, Path(dataset_dir), cfg.evaluation, registered_model_name,
                          model_name or MODEL_NAME)
    result.to_json(out / JSON_NAME)
    log_evaluation(result, mlflow_run_id or None)
    print(result.format_report(), flush=True)
    return result


def differential_gate(result: EvaluationResult, model, dataset_dir: Path, ecfg, registered_model_name: str,
                      model_name: str) -> None:
    """Compare with the model in ``ecfg.differential.stage`` on the same evaluation sets, paired
    (gourmetgram/evaluation/differential.py); a candidate that fails a set's test fails the gate
    (its checks and reasons join the result). The production bundle is read where the registry
    says it is: a local folder, or ``s3://`` (the cluster's models bucket), fetched first."""
    import tempfile

    from gourmetgram import registry
    from gourmetgram.evaluation import differential as D
    from gourmetgram.evaluation.suite import Check, predict_files
    from gourmetgram.export import load_model_spec

    d = ecfg.differential
    version = registry.version_for(d.stage, registered_model_name)
    if version is None:
        print(f"differential gate: no model in {d.stage} yet (first model): skipped", flush=True)
        return
    uri = registry.bundle_for(version, registered_model_name)
    with tempfile.TemporaryDirectory(prefix="production-bundle-") as tmp:
        bundle = fetch_bundle(uri, Path(tmp))
        spec = model.spec
        if list(load_model_spec(bundle).class_names) != list(spec.class_names):
            raise BadInput(f"the {d.stage} model (version {version}) has other classes than the candidate; "
                            "the differential gate cannot compare them")
        comparison = D.compare(
            D.evaluation_sets(dataset_dir),
            candidate=lambda files: predict_files(model, list(files), spec.image_size, ecfg.batch_size),
            production=D.onnx_predictor(bundle, model_name), production_version=str(version), cfg=d)
    result.comparison = comparison.to_dict()
    for row in comparison.sets:
        if row.test == D.IMPROVEMENT:
            assert row.p_better is not None
            result.checks.append(Check(f"differential {row.name} better than {d.stage} (1 - one-sided p)",
                                       1 - row.p_better, d.confidence, row.passed))
        elif row.test == D.NON_INFERIORITY:
            assert row.interval is not None
            result.checks.append(Check(f"differential {row.name} vs {d.stage} (upper bound of the difference)",
                                       row.interval[1], -d.margin, row.passed))
    if not comparison.passed:
        result.reasons.extend(comparison.reasons)
        result.passed = False
    print(D.format_comparison(result.comparison), flush=True)


def fetch_bundle(uri: str, scratch: Path) -> Path:
    """A registered bundle on this machine: a local folder as it is, an ``s3://`` prefix
    downloaded into ``scratch`` (through the project's object-store client)."""
    from gourmetgram import objectstore

    if objectstore.is_s3(uri):
        print(f"differential gate: fetching the production bundle {uri}", flush=True)
        return objectstore.download_tree(uri, scratch / "bundle")
    bundle = Path(uri.removeprefix("file://")).expanduser()
    if not bundle.is_dir():
        raise DependencyUnavailable(f"the production bundle {uri} is not a folder on this machine nor an "
                                    "s3:// URI; the differential gate cannot compare with it")
    return bundle


def report_markdown(result: EvaluationResult) -> str:
    """The evaluation report as Markdown for the KFP UI (the text report, fenced)."""
    verdict = "PASSED" if result.passed else "FAILED"
    reasons = "".join(f"- {r}\n" for r in result.reasons) or "- every check passed\n"
    return (f"# Offline evaluation: {verdict}\n\n{reasons}\n"
            f"```text\n{result.format_report()}\n```\n")

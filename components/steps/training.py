"""Train and evaluate: the checkpoint, its MLflow run, the offline suite and the gates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from components.steps.runtime import resolve_config, set_run_tags
from gourmetgram.constants import MODEL_NAME
from gourmetgram.errors import UserError

if TYPE_CHECKING:  # torch is imported by the steps that run, not by this module
    from gourmetgram.evaluation.suite import EvaluationResult
    from gourmetgram.training import TrainResult


def train_step(dataset_dir: str | Path, config: str, epochs: int, checkpoint_path: str | Path,
               source: str = "", run_name: str | None = None) -> TrainResult:
    """Train with the resolved config (MLflow-logged, tagged with its config and data source)."""
    from gourmetgram.data.layout import validate_dataset
    from gourmetgram.training import train

    cfg = resolve_config(config, epochs)
    report = validate_dataset(dataset_dir, check_images=False, progress=False)  # names, fingerprint
    print(f"training on {report.summary()} with {cfg.source} ({cfg.train.epochs} epochs)", flush=True)
    result = train(dataset_dir, report, cfg, checkpoint_path, log_to_mlflow=True, progress=True,
                   run_name=run_name)
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
    """Compare with the model in ``ecfg.differential.stage`` on the same evaluation sets; a
    candidate worse beyond the tolerance fails the gate (its checks and reasons join the result)."""
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
    bundle = Path(uri.removeprefix("file://")).expanduser()
    if not bundle.is_dir():  # an s3:// bundle: fetching it here is not built yet
        result.comparison = {"production_version": str(version), "tolerance": d.tolerance, "passed": True,
                             "reasons": [], "sets": [], "skipped": f"bundle {uri} is not on this machine"}
        print(f"differential gate: {d.stage} bundle {uri} is not a local folder: skipped", flush=True)
        return
    spec = model.spec
    if list(load_model_spec(bundle).class_names) != list(spec.class_names):
        raise UserError(f"the {d.stage} model (version {version}) has other classes than the candidate; "
                        "the differential gate cannot compare them")
    comparison = D.compare(
        D.evaluation_sets(dataset_dir),
        candidate=lambda files: predict_files(model, list(files), spec.image_size, ecfg.batch_size),
        production=D.onnx_predictor(bundle, model_name),
        production_version=str(version), tolerance=d.tolerance, gated=d.gated_sets, min_images=d.min_images)
    result.comparison = comparison.to_dict()
    for row in comparison.sets:
        if row.gated and row.candidate is not None and row.production is not None:
            result.checks.append(Check(f"differential {row.name} vs {d.stage}", row.candidate,
                                       row.production - d.tolerance, row.passed))
    if not comparison.passed:
        result.reasons.extend(comparison.reasons)
        result.passed = False
    print(D.format_comparison(result.comparison), flush=True)


def report_markdown(result: EvaluationResult) -> str:
    """The evaluation report as Markdown for the KFP UI (the text report, fenced)."""
    verdict = "PASSED" if result.passed else "FAILED"
    reasons = "".join(f"- {r}\n" for r in result.reasons) or "- every check passed\n"
    return (f"# Offline evaluation: {verdict}\n\n{reasons}\n"
            f"```text\n{result.format_report()}\n```\n")

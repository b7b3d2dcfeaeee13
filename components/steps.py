"""The pipeline steps as plain functions: paths and strings in, plain results out.

The KFP components (one module per step in this package) are thin wrappers that map
artifacts to paths and results to outputs/metadata; everything testable lives here and in
the :mod:`gourmetgram` modules it calls. Each step runs in its own process (a pod on the
cluster, a subprocess under ``kfp.local``), so nothing here keeps state between steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import urllib.parse
from pathlib import Path
from typing import Iterator

from gourmetgram.config import RunConfig, load_config, override
from gourmetgram.constants import MODEL_NAME, SPLITS, STAGES
from gourmetgram.errors import ConfigError, DatasetError, GourmetGramError, UserError

# A step prints this before failing on bad input, so the local CLI can show the reason
# (exit 2) instead of KFP's generic "task failed". (Not in components.base: the step
# runtime must not import kfp.dsl's authoring API.)
ERROR_MARKER = "gourmetgram-error: "
PARITY_IMAGES = 32  # real evaluation images used for the ONNX-vs-PyTorch parity check


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a known error into one marked line and its exit status (2 bad input, 3 a dependency
    unavailable...; no traceback to dig through).

    The local CLI picks the marked line out of the step's log and reports it (exit 2);
    on the cluster the same line is the last thing in the failed pod's log.
    """
    try:
        yield
    except GourmetGramError as exc:
        message = str(exc).replace("\n", "\\n")
        print(f"{ERROR_MARKER}{message}", flush=True)
        print(f"{ERROR_MARKER}{message}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None


def resolve_config(config: str, epochs: int = -1) -> RunConfig:
    """``demo`` | ``food11`` | a YAML path, with the pipeline's ``epochs`` (-1 keeps the file's)."""
    if epochs < -1:
        raise ConfigError(f"epochs must be -1 (from the config) or >= 0, got {epochs}")
    cfg = load_config(config)
    return override(cfg, "train", epochs=epochs) if epochs >= 0 else cfg


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    return stage


def is_local_uri(uri: str) -> bool:
    """True for artifacts on this machine (``kfp.local``), False for minio:// s3:// gs://."""
    return urllib.parse.urlparse(uri).scheme in ("", "file")


def _link_or_copy(src: str, dst: str) -> str:
    """Hard-link when source and target share a file system (free), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


# -- ingest + validate -------------------------------------------------------------------------

def ingest_step(dataset_uri: str, out_dir: str | Path, production_dataset_uri: str = "") -> dict:
    """Bring ``dataset_uri`` (folder, archive, URL) into ``out_dir``, validate it, describe it.

    The dataset *is* the artifact, so every later step (another pod on the cluster) gets it
    from the artifact store; locally the copy is hard links. ``production_dataset_uri``: a
    labelled production dataset from ``gourmetgram loop export``, merged in (its provenance in
    ``provenance.json``, logged to MLflow by the training step).
    """
    from gourmetgram.data.ingest import ingest
    from gourmetgram.data.layout import validate_dataset
    from gourmetgram.data.merge import merge_production

    if not dataset_uri or not dataset_uri.strip():
        raise DatasetError("dataset_uri is empty; pass a dataset folder, archive or http(s) URL")
    out = Path(out_dir)
    work = out.parent / f".{out.name}.ingest"
    try:
        root = ingest(dataset_uri.strip(), work)
        if out.exists():
            shutil.rmtree(out)
        if Path(root).resolve().is_relative_to(work.resolve()):
            shutil.move(str(root), str(out))  # extracted/downloaded: ours to move
        else:
            shutil.copytree(root, out, copy_function=_link_or_copy, symlinks=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    provenance = None
    if production_dataset_uri and production_dataset_uri.strip():
        base_fp = validate_dataset(out, check_images=False, progress=False).fingerprint
        try:
            prod_root = ingest(production_dataset_uri.strip(), work)
            provenance = merge_production(out, prod_root, production_dataset_uri.strip(), dataset_uri, base_fp)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        p = provenance["production"]
        print(f"production data {production_dataset_uri}: {p['images']} labelled image(s) {p['per_split']}, "
              f"label sources {p['label_sources']}, sha256 {p['fingerprint'][:12]}", flush=True)
    report = validate_dataset(out, check_images=True, progress=False)
    print(f"dataset {dataset_uri}: {report.summary()}", flush=True)
    return {
        "production": None if provenance is None else {k: v for k, v in provenance["production"].items()
                                                       if k != "sample_ids"},
        "source": dataset_uri,
        "fingerprint": report.fingerprint,
        "class_names": list(report.class_names),
        "num_classes": report.num_classes,
        "counts": {split: list(report.counts[split]) for split in SPLITS},
        "images": {split: report.total(split) for split in SPLITS},
        "summary": report.summary(),
    }


# -- train -------------------------------------------------------------------------------------

def train_step(dataset_dir: str | Path, config: str, epochs: int, checkpoint_path: str | Path,
               source: str = "", run_name: str | None = None):
    """Train with the resolved config; returns :class:`gourmetgram.training.TrainResult`."""
    from gourmetgram.data.layout import validate_dataset
    from gourmetgram.training import train

    cfg = resolve_config(config, epochs)
    report = validate_dataset(dataset_dir, check_images=False, progress=False)  # names, fingerprint
    print(f"training on {report.summary()} with {cfg.source} ({cfg.train.epochs} epochs)", flush=True)
    result = train(dataset_dir, report, cfg, checkpoint_path, log_to_mlflow=True, progress=True,
                   run_name=run_name)
    _set_run_tags(result.mlflow_run_id, {"config": cfg.source, "data.source": source or str(dataset_dir)})
    _log_provenance(result.mlflow_run_id, Path(dataset_dir))
    return result


def _log_provenance(run_id: str | None, dataset_dir: Path) -> None:
    """Production data merged into the training set: tags (counts, fingerprints, label sources)
    and the full provenance (sample ids) as an artifact."""
    import json

    from gourmetgram.data.merge import PROVENANCE_FILE

    path = dataset_dir / PROVENANCE_FILE
    if not run_id or not path.is_file():
        return
    prov = json.loads(path.read_text())
    p = prov["production"]
    _set_run_tags(run_id, {
        "data.production.source": p["source"], "data.production.fingerprint": p["fingerprint"],
        "data.production.images": p["images"], "data.production.per_split": json.dumps(p["per_split"]),
        "data.production.label_sources": json.dumps(p["label_sources"]),
        "data.production.model_versions": json.dumps(p["model_versions"]),
        "data.base.fingerprint": prov["base"]["fingerprint"],
    })
    from gourmetgram.tracking import configure_mlflow

    configure_mlflow().MlflowClient().log_artifact(run_id, str(path), artifact_path="data")


def _set_run_tags(run_id: str | None, tags: dict[str, str]) -> None:
    if not run_id:
        return
    from gourmetgram.tracking import configure_mlflow

    client = configure_mlflow().MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value)[:5000])


# -- evaluate ----------------------------------------------------------------------------------

def evaluate_step(checkpoint: str | Path, dataset_dir: str | Path, config: str, out_dir: str | Path,
                  mlflow_run_id: str = "", registered_model_name: str = "", model_name: str = ""):
    """Run the offline evaluation suite and, with ``registered_model_name``, the differential
    gate against the model in production; log it next to the training run. -> EvaluationResult."""
    from gourmetgram.evaluation.suite import JSON_NAME, evaluate, log_evaluation
    from gourmetgram.model import load_checkpoint

    cfg = resolve_config(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(checkpoint)
    result = evaluate(model, Path(dataset_dir), cfg.evaluation, out)
    if registered_model_name and cfg.evaluation.differential.enabled:
        differential_gate(result, model, Path(dataset_dir), cfg.evaluation, registered_model_name,
                          model_name or MODEL_NAME)
    result.to_json(out / JSON_NAME)
    log_evaluation(result, mlflow_run_id or None)
    print(result.format_report(), flush=True)
    return result


def differential_gate(result, model, dataset_dir: Path, ecfg, registered_model_name: str, model_name: str) -> None:
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


def report_markdown(result) -> str:
    """The evaluation report as Markdown for the KFP UI (the text report, fenced)."""
    verdict = "PASSED" if result.passed else "FAILED"
    reasons = "".join(f"- {r}\n" for r in result.reasons) or "- every check passed\n"
    return (f"# Offline evaluation: {verdict}\n\n{reasons}\n"
            f"```text\n{result.format_report()}\n```\n")


def reasons_text(reasons: list[str]) -> str:
    return "\n".join(reasons)


# -- export ------------------------------------------------------------------------------------

def parity_images(dataset_dir: str | Path, image_size: int, limit: int = PARITY_IMAGES):
    """Real evaluation images, spread over the classes, preprocessed as serving does."""
    from gourmetgram.data.layout import list_images
    from gourmetgram.preprocessing import preprocess_batch

    items = list_images(Path(dataset_dir) / "evaluation")
    if not items:
        return None
    step = max(1, len(items) // limit)
    chosen = items[::step][:limit]
    return preprocess_batch([p.read_bytes() for p, _ in chosen], image_size)


def export_step(checkpoint: str | Path, dataset_dir: str | Path, config: str, bundle_dir: str | Path,
                model_name: str):
    """Export the Triton bundle (parity-checked on real images). -> ExportResult."""
    from gourmetgram.export import export_bundle
    from gourmetgram.model import load_checkpoint

    cfg = resolve_config(config)
    model = load_checkpoint(checkpoint)
    images = parity_images(dataset_dir, model.spec.image_size)
    result = export_bundle(model, bundle_dir, cfg.export, model_name=model_name, parity_images=images,
                           overwrite=True)
    p = result.parity
    print(f"exported {model_name} to {result.bundle_dir} ({result.size_bytes / 1e6:.1f} MB); parity: "
          f"max |logit diff| {p.max_abs_diff:.2e}, top-1 agreement {p.top1_agreement:.3f} on "
          f"{p.n_images} images", flush=True)
    return result


# -- quantize (optional) -----------------------------------------------------------------------

def _copy_bundle(src: str | Path, dst: str | Path) -> Path:
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=_link_or_copy)
    return dst


def quantize_step(bundle_dir: str | Path, dataset_dir: str | Path, config: str | RunConfig, out_dir: str | Path,
                  model_name: str, enabled: bool = True, min_speedup: float = 1.0) -> dict:
    """Write to ``out_dir`` the bundle to serve: INT8 when it passes the config's accuracy
    gate and is faster, else a copy of the FP32 bundle (artifacts are immutable).

    ``enabled=False`` copies the FP32 bundle through untouched (the pipeline's
    ``quantize`` parameter is off). -> ``{"precision", "quantized", "reason", "report",
    "size_bytes"}``; ``report`` is :meth:`QuantizationReport.to_dict` or None. ``config``
    is a name/path (the pipeline) or a loaded :class:`RunConfig`.
    """
    from gourmetgram.export import TRITON_DIR
    from gourmetgram.quantize import quantize_bundle, select_bundle

    out = Path(out_dir)
    report, precision = None, "fp32"
    if not enabled:
        _copy_bundle(bundle_dir, out)
        reason = "quantization is off (pipeline parameter quantize=false)"
    else:
        cfg = config if isinstance(config, RunConfig) else resolve_config(config)
        candidate = out.parent / f".{out.name}.int8"
        shutil.rmtree(candidate, ignore_errors=True)
        try:
            report = quantize_bundle(bundle_dir, dataset_dir, candidate, cfg.export, method="static",
                                     model_name=model_name, overwrite=True)
            print(report.summary(), flush=True)
            chosen = select_bundle(bundle_dir, candidate, report, min_speedup=min_speedup)
            if chosen == candidate:
                if out.exists():
                    shutil.rmtree(out)
                candidate.replace(out)
                precision = "int8"
                reason = f"INT8 passed the accuracy gate and is x{report.speedup:.2f} faster"
            else:
                _copy_bundle(bundle_dir, out)
                reason = (f"INT8 failed the accuracy gate: {'; '.join(report.problems)}" if not report.passed
                          else f"INT8 passed the accuracy gate but is not faster (x{report.speedup:.2f} "
                               f"< x{min_speedup:g})")
        finally:
            shutil.rmtree(candidate, ignore_errors=True)
    size = sum(p.stat().st_size for p in (out / TRITON_DIR).rglob("*") if p.is_file())
    print(f"serving the {precision.upper()} bundle: {reason}", flush=True)
    return {"precision": precision, "quantized": precision == "int8", "reason": reason,
            "report": _finite(report.to_dict()) if report is not None else None, "size_bytes": size}


def _finite(doc: dict) -> dict:
    """NaN/inf -> None: artifact metadata is a protobuf Struct on the cluster (no NaN in JSON)."""
    import math

    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in doc.items()}


# -- drift detector ----------------------------------------------------------------------------

def detector_step(bundle_dir: str | Path, dataset_dir: str | Path, served_bundle_dir: str | Path) -> dict:
    """Copy the exported bundle and add ``detector/``: online MMD on training embeddings.

    Artifacts are immutable, so the served bundle (what register tags and serving loads)
    is a new artifact: the exported bundle plus the detector built from its own feature
    extractor. -> the detector's settings (``detector/detector.json``).
    """
    from drift_detector.build import build_detector

    served = Path(served_bundle_dir)
    shutil.copytree(bundle_dir, served, dirs_exist_ok=True)
    folder = build_detector(served, dataset_dir)
    settings = json.loads((folder / "detector.json").read_text())
    print(f"drift detector built in {folder}", flush=True)
    return settings


# -- register / reject -------------------------------------------------------------------------

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
    shutil.copytree(bundle_path, target, copy_function=_link_or_copy)
    return target


def register_step(mlflow_run_id: str, bundle_uri: str, bundle_path: str | Path, bundle_metadata: dict,
                  stage: str, registered_model_name: str, model_name: str, accuracy: float,
                  dataset_fingerprint: str) -> dict:
    """Register the training run's model under ``stage``'s alias, tagged with its bundle.

    A local run (``kfp.local``: the artifact is a path) first copies the bundle to
    ``$GOURMETGRAM_HOME/models/<run id>/`` and tags that path. On the cluster the bundle is
    copied to the models bucket, ``s3://<bucket>/<model_name>/<version>`` (what an
    InferenceService's storageUri reads), never left at KFP's internal artifact path: the
    version is registered first (its number names the folder), the bundle uploaded and
    checked, and only then tagged and given the alias, so an alias never points at a
    version whose bundle is missing.
    """
    from gourmetgram import objectstore
    from gourmetgram.registry import register_model, set_stage

    check_stage(stage)
    if not mlflow_run_id:
        raise UserError("no MLflow run id from the training step; cannot register")
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
        _tag_version(version, registered_model_name,
                     _bundle_tags(bundle, mlflow_run_id, model_name, accuracy, dataset_fingerprint))
        set_stage(stage, version, registered_model_name)
    _set_run_tags(mlflow_run_id, {"gate": "passed", "registered_version": str(version)})
    outcome = {
        "verdict": "registered", "registered_model": registered_model_name, "version": int(version),
        "alias": stage, "bundle_uri": bundle, "triton_repo": bundle.rstrip("/") + "/triton",
        "pipeline_artifact": bundle_uri,
        "size_bytes": int(bundle_metadata.get("size_bytes", 0) or 0),
        "parity": bundle_metadata.get("parity", {}), "reasons": [],
        "precision": str(bundle_metadata.get("precision", "fp32")),
    }
    print(f"registered {registered_model_name} version {version} with alias {stage!r}; "
          f"bundle at {bundle}", flush=True)
    return outcome


def _bundle_tags(bundle: str, run_id: str, model_name: str, accuracy: float,
                 dataset_fingerprint: str) -> dict[str, str]:
    from gourmetgram.registry import version_tags

    tags = version_tags(evaluation_passed=True, accuracy=accuracy, dataset_fingerprint=dataset_fingerprint,
                        bundle_uri=bundle, run_id=run_id)
    tags.update({"triton.repo": bundle.rstrip("/") + "/triton" if bundle else "", "triton.model_name": model_name})
    return tags


def reject_step(reasons: str, mlflow_run_id: str = "") -> dict:
    """Record why the gate stopped the model: in the log, on the MLflow run, in the outcome."""
    items = [r for r in reasons.splitlines() if r.strip()] or ["the evaluation gate failed"]
    print("MODEL REJECTED by the evaluation gate; nothing is exported or registered. Reasons:", flush=True)
    for reason in items:
        print(f"  - {reason}", flush=True)
    _set_run_tags(mlflow_run_id, {"gate": "rejected", "gate.reasons": "; ".join(items)})
    return {"verdict": "rejected", "reasons": items, "registered_model": None, "version": None,
            "alias": None, "bundle_uri": None, "triton_repo": None, "size_bytes": 0}


def outcome_json(outcome: dict) -> str:
    return json.dumps(outcome, sort_keys=True)


# -- staging gate: load test -> canary or block ------------------------------------------------

TAG_STAGING_LOADTEST = "staging.loadtest"  # model-version tag: passed | failed
TAG_STAGING_LOADTEST_SUMMARY = "staging.loadtest.summary"
_RUN_TIME = re.compile(r"^\s*(\d+h)?\s*(\d+m)?\s*(\d+s?)?\s*$")


def check_run_time(run_time: str) -> str:
    """Locust's ``-t`` syntax (``30s``, ``5m``, ``1h30m``, ``90``), checked before a pod waits on it."""
    if not run_time or not run_time.strip() or not _RUN_TIME.match(run_time) or not any(c.isdigit() for c in run_time):
        raise UserError(f"run_time {run_time!r}: use Locust's syntax, e.g. 30s, 5m, 1h30m")
    return run_time.strip().replace(" ", "")


def loadtest_step(staging_url: str, images: str | Path, out_dir: str | Path, slo: str = "slo", users: int = 4,
                  run_time: str = "60s", spawn_rate: float = 2.0, quiet: bool = False):
    """Load-test the staging endpoint headless and judge it by the SLOs. -> LoadTestSummary.

    ``out_dir`` gets Locust's CSVs, its HTML report (``report.html``), ``summary.json`` and
    ``summary.txt``. A missed SLO is a verdict (``passed=False`` with reasons), not an error;
    bad input (URL, images, SLO file, users, run time) raises :class:`UserError`.
    """
    from gourmetgram.config import load_slo
    from gourmetgram.loadtest import run_loadtest

    parsed = urllib.parse.urlparse(staging_url or "")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserError(f"staging_url {staging_url!r} must be an http(s) URL of the staging endpoint")
    if not images or not str(images).strip():
        raise UserError("images_uri is empty: pass a folder of evaluation images (in the image or on a PVC)")
    folder = Path(images)
    if not folder.is_dir() or not any(p.suffix.lower() in (".jpg", ".jpeg", ".png") for p in folder.rglob("*")):
        raise UserError(f"images_uri {images} is not a folder with .jpg/.jpeg/.png images")
    if isinstance(users, bool) or int(users) < 1:
        raise UserError(f"users must be >= 1, got {users}")
    run_time = check_run_time(run_time)
    cfg = load_slo(slo)
    print(f"load test: {users} users for {run_time} against {staging_url}; SLO from {cfg.source}: "
          f"p95 <= {cfg.p95_ms:g} ms, error rate <= {cfg.max_error_rate:.2%}, >= {cfg.min_rps:g} req/s, "
          f">= {cfg.min_requests} requests", flush=True)
    summary = run_loadtest(staging_url.rstrip("/"), folder, Path(out_dir), cfg, shape="constant", users=int(users),
                           spawn_rate=spawn_rate, run_time=run_time, quiet=quiet)
    print(summary.format(), flush=True)
    return summary


def loadtest_metrics(summary) -> dict[str, float]:
    """The figures the KFP UI shows (finite numbers only: metadata is a protobuf Struct)."""
    import math

    figures = {"p50_ms": summary.p50_ms, "p95_ms": summary.p95_ms, "p99_ms": summary.p99_ms,
               "error_rate": summary.error_rate, "rps": summary.rps, "requests": float(summary.requests),
               "bad_requests": float(summary.bad_requests),
               "bad_request_failures": float(summary.bad_request_failures)}
    return {k: float(v) for k, v in figures.items() if math.isfinite(float(v))}


def check_version(version: int, registered_model_name: str) -> int:
    """Fail fast (before a long load test) when ``version`` is not registered."""
    from gourmetgram import registry

    if isinstance(version, bool) or int(version) < 1:
        raise UserError(f"version must be a registered model version (>= 1), got {version}")
    registry.get_version(int(version), registered_model_name)
    return int(version)


def _tag_version(version: int, registered_model_name: str, tags: dict[str, str]) -> None:
    from gourmetgram.tracking import configure_mlflow

    client = configure_mlflow().MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_model_name, str(int(version)), key, str(value)[:5000])


def promote_step(version: int, registered_model_name: str, canary_percent: int, summary: str = "",
                 isvc_namespace: str = "", isvc_name: str = "", api_client=None) -> dict:
    """The load test passed: start the canary of ``version``.

    With ``isvc_namespace`` set, first patch the production InferenceService (one merge
    patch of predictor and transformer, :class:`gourmetgram.rollout.kube.KubeRollout`,
    in-cluster credentials) to serve the version's bundle at ``canary_percent``%; then
    point the registry's ``canary`` alias at it (so the alias never names a canary the
    cluster does not run) and tag the version ``staging.loadtest=passed``.
    """
    from gourmetgram import registry
    from gourmetgram.constants import CANARY, ISVC_NAMES, PRODUCTION

    if isinstance(canary_percent, bool) or not 1 <= int(canary_percent) <= 100:
        raise UserError(f"canary_percent must be an integer in 1..100, got {canary_percent}")
    version = check_version(version, registered_model_name)
    patched = None
    if isvc_namespace and isvc_namespace.strip():
        from gourmetgram.rollout.kube import KubeRollout

        name = (isvc_name or "").strip() or ISVC_NAMES[PRODUCTION]
        bundle = registry.bundle_for(version, registered_model_name)
        KubeRollout(name, isvc_namespace.strip(), api_client).canary(bundle, int(canary_percent), version)
        patched = f"{isvc_namespace.strip()}/{name}"
        print(f"InferenceService {patched}: canary of version {version} ({bundle}) at {canary_percent}%",
              flush=True)
    registry.set_stage(CANARY, version, registered_model_name)
    _tag_version(version, registered_model_name, {TAG_STAGING_LOADTEST: "passed",
                                                  TAG_STAGING_LOADTEST_SUMMARY: summary})
    print(f"registry: canary -> {registered_model_name} version {version}"
          + ("" if patched else " (no isvc_namespace: the cluster was not patched; "
                                "start it with `gourmetgram rollout canary`)"), flush=True)
    return {"verdict": "canary", "version": version, "registered_model": registered_model_name,
            "alias": CANARY, "canary_percent": int(canary_percent), "inferenceservice": patched,
            "reasons": []}


def block_step(version: int, registered_model_name: str, reasons: str, summary: str = "") -> dict:
    """The load test failed: say why, tag the version ``staging.loadtest=failed``; no canary."""
    items = [r for r in reasons.splitlines() if r.strip()] or ["the staging load test failed its SLOs"]
    print(f"CANARY BLOCKED: version {version} missed the staging SLOs; the canary alias and the "
          "cluster are left as they are. Reasons:", flush=True)
    for reason in items:
        print(f"  - {reason}", flush=True)
    version = check_version(version, registered_model_name)
    _tag_version(version, registered_model_name, {TAG_STAGING_LOADTEST: "failed",
                                                  f"{TAG_STAGING_LOADTEST}.reasons": "; ".join(items),
                                                  TAG_STAGING_LOADTEST_SUMMARY: summary})
    return {"verdict": "blocked", "version": version, "registered_model": registered_model_name,
            "alias": None, "canary_percent": 0, "inferenceservice": None, "reasons": items}

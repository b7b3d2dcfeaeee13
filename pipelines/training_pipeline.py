"""The training pipeline: ingest -> [parent] -> train -> evaluate -> gate -> export -> [INT8] -> detector -> register.

One ``@dsl.pipeline`` function serves both runtimes: ``gourmetgram pipeline run`` calls it
under ``kfp.local`` (SubprocessRunner, this interpreter), and ``gourmetgram pipeline
compile`` writes the IR YAML (``pipelines/training_pipeline.yaml``) that ``pipeline submit``
or ``kfp run create`` sends to a Kubeflow Pipelines backend. Cluster-only settings (GPU,
Secrets, timeouts) are ignored locally, with a warning from KFP.
"""

from typing import NamedTuple

from kfp import dsl, kubernetes

from components.base import with_secrets
from components.dataset_version import dataset_version
from components.detector import build_drift_detector
from components.evaluate import evaluate_model
from components.export import export_model
from components.ingest import ingest_and_validate
from components.parent import parent_model
from components.quantize import quantize_model
from components.register import register_model
from components.reject import reject_model
from components.train import train_model
from gourmetgram.constants import MODEL_NAME, REGISTERED_MODEL_NAME, STAGING

PIPELINE_NAME = "gourmetgram-training"
PIPELINE_FILE = "training_pipeline.yaml"  # next to this module

# Cluster settings (seconds / retries); ignored by kfp.local.
INGEST_TIMEOUT_S = 2 * 3600
TRAIN_TIMEOUT_S = 6 * 3600
STEP_TIMEOUT_S = 3600
TRAIN_RETRIES = 2  # a preempted GPU node, a flaky object store
TRAIN_SHM_SIZE = "2Gi"  # /dev/shm for DataLoader workers (inside the 16Gi memory limit)


class PipelineOutputs(NamedTuple):
    passed: bool  # the evaluation gate's verdict
    reasons: list  # why it failed (empty when it passed)
    mlflow_run_id: str
    evaluation: dsl.Artifact  # evaluation.json (+ confusion matrix PNG)
    outcome: str  # components.steps.RegistrationOutcome as JSON: registered version, alias and bundle, or the rejection


@dsl.pipeline(name=PIPELINE_NAME,
              description="GourmetGram Food-11: ingest + validate data, train, evaluate offline, "
                          "and only if the gate passes export to Triton (optionally INT8) and register in MLflow.")
def training_pipeline(dataset_uri: str, config: str = "food11", epochs: int = -1, model_name: str = MODEL_NAME,
                      stage: str = STAGING, registered_model_name: str = REGISTERED_MODEL_NAME,
                      quantize: bool = False, production_dataset_uri: str = "", init_from: str = "") -> PipelineOutputs:
    """``dataset_uri``: folder, archive or URL in the Food-11 layout. ``config``: ``demo``,
    ``food11`` or a YAML path in the image. ``epochs``: -1 = from the config, 0 = untrained
    (proves the gate). ``model_name``: the Triton model name. ``stage``: the registry alias.
    ``quantize``: serve the INT8 variant when it passes its accuracy gate and is faster
    (off: the quantize step passes the FP32 bundle through). ``production_dataset_uri``:
    labelled production data from ``gourmetgram loop export``, merged with the dataset
    (provenance to MLflow); the evaluation then also compares with the production model.
    ``init_from``: ``production`` fine-tunes the model the registry's production alias points at
    (continual training; a first model trains from scratch), ``scratch`` trains from scratch,
    empty: the config's ``train.init_from``.
    """
    # The same URI may hold new data: ingest is keyed on what it holds now (never cached
    # itself), so an unchanged dataset + config is a cache hit for ingest and train.
    version = dataset_version(dataset_uri=dataset_uri).set_display_name("dataset version")
    version.set_caching_options(False)
    with_secrets(version)
    kubernetes.set_timeout(version, STEP_TIMEOUT_S)
    ingest = ingest_and_validate(dataset_uri=dataset_uri, source_version=version.output,
                                 production_dataset_uri=production_dataset_uri)
    ingest.set_display_name("ingest + validate data")
    ingest.set_caching_options(True)
    with_secrets(ingest)
    kubernetes.set_timeout(ingest, INGEST_TIMEOUT_S)

    # Not cached: which version the production alias points at changes between runs; as train's
    # input it keys train's cache (a new production model is a new fine-tune).
    parent = parent_model(config=config, init_from=init_from, registered_model_name=registered_model_name)
    parent.set_display_name("parent model (continual training)")
    parent.set_caching_options(False)
    with_secrets(parent)
    kubernetes.set_timeout(parent, STEP_TIMEOUT_S)

    train = train_model(dataset=ingest.outputs["dataset"], config=config, epochs=epochs, parent_version=parent.output,
                        registered_model_name=registered_model_name)
    train.set_display_name("train")
    train.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    train.set_cpu_request("2").set_memory_request("8Gi").set_memory_limit("16Gi")
    train.set_retry(num_retries=TRAIN_RETRIES, backoff_duration="60s", backoff_factor=2.0)
    train.set_caching_options(True)
    with_secrets(train)
    kubernetes.add_toleration(train, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    kubernetes.set_timeout(train, TRAIN_TIMEOUT_S)
    # DataLoader workers hand batches over in shared memory; a pod's /dev/shm is 64 MiB, which
    # kills workers ("bus error") at Food-11 batch sizes. Memory-backed, counted in the limit.
    kubernetes.empty_dir_mount(train, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=TRAIN_SHM_SIZE)

    evaluate = evaluate_model(dataset=ingest.outputs["dataset"], checkpoint=train.outputs["checkpoint"],
                              config=config, mlflow_run_id=train.outputs["mlflow_run_id"],
                              registered_model_name=registered_model_name, model_name=model_name)
    evaluate.set_display_name("offline evaluation")
    # Not cached: the differential gate reads the registry (which version is in production now).
    evaluate.set_caching_options(False)
    with_secrets(evaluate)
    kubernetes.set_timeout(evaluate, STEP_TIMEOUT_S)

    with dsl.If(evaluate.outputs["passed"] == True, name="evaluation-passed"):  # noqa: E712 (KFP condition)
        export = export_model(dataset=ingest.outputs["dataset"], checkpoint=train.outputs["checkpoint"],
                              config=config, model_name=model_name)
        export.set_display_name("export to Triton (parity-checked)")
        export.set_caching_options(True)
        with_secrets(export)
        kubernetes.set_timeout(export, STEP_TIMEOUT_S)
        # Always runs (one linear chain, no branch outputs to merge); quantize=false -> pass-through.
        quant = quantize_model(exported=export.outputs["bundle"], dataset=ingest.outputs["dataset"],
                               config=config, model_name=model_name, enabled=quantize)
        quant.set_display_name("INT8 variant (accuracy-gated, optional)")
        quant.set_caching_options(True)
        kubernetes.set_timeout(quant, STEP_TIMEOUT_S)
        detector = build_drift_detector(bundle=quant.outputs["bundle"], dataset=ingest.outputs["dataset"])
        detector.set_display_name("build drift detector")
        detector.set_caching_options(True)
        kubernetes.set_timeout(detector, STEP_TIMEOUT_S)
        register = register_model(bundle=detector.outputs["served_bundle"], mlflow_run_id=train.outputs["mlflow_run_id"],
                                  stage=stage, registered_model_name=registered_model_name,
                                  model_name=model_name, accuracy=evaluate.outputs["accuracy"],
                                  dataset_fingerprint=ingest.outputs["fingerprint"])
        register.set_display_name("register in MLflow")
        register.set_caching_options(False)  # a side effect: every run registers anew
        with_secrets(register)
        kubernetes.set_timeout(register, STEP_TIMEOUT_S)
    with dsl.Else(name="evaluation-failed"):
        reject = reject_model(reasons=evaluate.outputs["reasons"], mlflow_run_id=train.outputs["mlflow_run_id"])
        reject.set_display_name("reject: gate failed")
        reject.set_caching_options(False)
        with_secrets(reject)

    return PipelineOutputs(
        passed=evaluate.outputs["passed"], reasons=evaluate.outputs["reasons"],
        mlflow_run_id=train.outputs["mlflow_run_id"], evaluation=evaluate.outputs["evaluation"],
        outcome=dsl.OneOf(register.outputs["outcome"], reject.outputs["outcome"]),
    )


def compile_pipeline(package_path: str) -> str:
    """Write the IR YAML for the KFP backend; returns the path."""
    from kfp import compiler

    compiler.Compiler().compile(pipeline_func=training_pipeline, package_path=str(package_path))
    return str(package_path)

"""The pipeline steps as plain functions: paths and strings in, typed outcomes out.

The KFP components (one module per step in ``components/``) are thin wrappers that map
artifacts to paths and an outcome to outputs/metadata; everything testable lives here and in
the :mod:`gourmetgram` modules it calls. Each step runs in its own process (a pod on the
cluster, a subprocess under ``kfp.local``), so nothing here keeps state between steps.

By concern: :mod:`.runtime` (errors, config, copies, MLflow tags), :mod:`.data` (ingest),
:mod:`.training` (train, evaluate, gates), :mod:`.bundle` (export, INT8, drift detector),
:mod:`.registration` (register / reject), :mod:`.staging` (load test, canary / block), and
:mod:`.outcomes` (what they return).
"""

from components.steps.bundle import PARITY_IMAGES, detector_step, export_step, parity_images, quantize_step
from components.steps.data import ingest_step
from components.steps.outcomes import CanaryOutcome, DetectorOutcome, IngestOutcome, QuantizeOutcome, RegistrationOutcome, StepError
from components.steps.registration import logged_model_uri, publish_local_bundle, register_step, reject_step
from components.steps.runtime import (
                                       STEP_ERRORS_ENV,
                                       check_stage,
                                       check_version,
                                       is_local_uri,
                                       resolve_config,
                                       step_errors,
                                       user_errors,
)
from components.steps.staging import (
                                       TAG_STAGING_LOADTEST,
                                       TAG_STAGING_LOADTEST_SUMMARY,
                                       block_step,
                                       check_run_time,
                                       loadtest_metrics,
                                       loadtest_step,
                                       promote_step,
)
from components.steps.training import differential_gate, evaluate_step, parent_step, report_markdown, train_step

__all__ = [
    "PARITY_IMAGES", "STEP_ERRORS_ENV", "TAG_STAGING_LOADTEST", "TAG_STAGING_LOADTEST_SUMMARY",
    "CanaryOutcome", "DetectorOutcome", "IngestOutcome", "QuantizeOutcome", "RegistrationOutcome", "StepError",
    "block_step", "check_run_time", "check_stage", "check_version", "detector_step", "differential_gate",
    "evaluate_step", "export_step", "ingest_step", "is_local_uri", "loadtest_metrics", "loadtest_step",
    "logged_model_uri", "parent_step", "parity_images", "promote_step", "publish_local_bundle", "quantize_step",
    "register_step", "reject_step", "report_markdown", "resolve_config", "step_errors", "train_step",
    "user_errors",
]

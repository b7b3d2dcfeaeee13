"""The staging gate: load-test the model now in staging -> SLOs met ? canary : block.

Runs after a registered version is deployed to the staging InferenceService. Step 1 runs
the Locust suite (``loadtests/``) headless against ``staging_url`` and judges it by the SLO
file (``configs/slo.yaml`` or a path); only when every SLO holds does step 2 point the
registry's ``canary`` alias at the version and, with ``isvc_namespace`` set, patch the
production InferenceService to serve it as a canary at ``canary_percent``%. Otherwise the
version is tagged ``staging.loadtest=failed`` with the missed SLOs. The run itself succeeds
either way; its ``passed`` and ``outcome`` outputs carry the verdict.

``gourmetgram pipeline compile`` writes ``pipelines/staging_gate_pipeline.yaml``.
"""

from typing import NamedTuple

from kfp import dsl, kubernetes

from components.base import with_secrets
from components.canary import block_canary, promote_to_canary
from components.loadtest import loadtest_staging
from gourmetgram.constants import ISVC_NAMES, PRODUCTION, REGISTERED_MODEL_NAME

PIPELINE_NAME = "gourmetgram-staging-gate"
PIPELINE_FILE = "staging_gate_pipeline.yaml"  # next to this module

LOADTEST_TIMEOUT_S = 2 * 3600  # a soak-length run_time plus start-up
STEP_TIMEOUT_S = 600


class StagingGateOutputs(NamedTuple):
    passed: bool  # every SLO held
    summary: str  # the load test's figures and verdict, as text
    report: dsl.HTML  # Locust's HTML report
    outcome: str  # components.steps.CanaryOutcome as JSON: the canary started, or why it was blocked


@dsl.pipeline(name=PIPELINE_NAME,
              description="GourmetGram staging gate: load-test the version deployed to staging against the "
                          "SLOs; only if they hold, start its canary in production.")
def staging_gate_pipeline(staging_url: str, version: int, images_uri: str, slo: str = "slo", users: int = 4,
                          run_time: str = "60s", canary_percent: int = 10,
                          registered_model_name: str = REGISTERED_MODEL_NAME, isvc_namespace: str = "",
                          isvc_name: str = ISVC_NAMES[PRODUCTION]) -> StagingGateOutputs:
    """``staging_url``: the staging endpoint as the step's pod reaches it (e.g. the
    InferenceService's cluster-local URL). ``version``: the registered version now in
    staging. ``images_uri``: on the cluster, the registered dataset's ``s3://`` URI (the
    ``dataset_uri`` the training run ingested; its evaluation split is downloaded into the
    step's pod) or an ``s3://`` prefix of images; locally (kfp.local), a folder of images.
    There is no default because no location is valid everywhere. ``slo``: ``slo`` (configs/slo.yaml) or a YAML path in the pod.
    ``users`` / ``run_time``: the constant load (Locust syntax: 30s, 5m). ``canary_percent``:
    the canary's share of production traffic. ``isvc_namespace``: empty = only move the
    registry alias (start the canary with ``gourmetgram rollout canary``); set = also
    patch the production InferenceService ``isvc_name`` in that namespace.
    """
    loadtest = loadtest_staging(staging_url=staging_url, images_uri=images_uri, slo=slo, users=users,
                                run_time=run_time, version=version, registered_model_name=registered_model_name)
    loadtest.set_display_name("load test staging (SLO gate)")
    loadtest.set_caching_options(False)  # a measurement of a live endpoint is never reused
    loadtest.set_cpu_request("2").set_memory_request("1Gi")
    with_secrets(loadtest)
    kubernetes.set_timeout(loadtest, LOADTEST_TIMEOUT_S)

    with dsl.If(loadtest.outputs["passed"] == True, name="slo-met"):  # noqa: E712 (KFP condition)
        promote = promote_to_canary(version=version, registered_model_name=registered_model_name,
                                    canary_percent=canary_percent, summary=loadtest.outputs["summary"],
                                    isvc_namespace=isvc_namespace, isvc_name=isvc_name)
        promote.set_display_name("promote to canary")
        promote.set_caching_options(False)  # a side effect
        with_secrets(promote)
        kubernetes.set_timeout(promote, STEP_TIMEOUT_S)
    with dsl.Else(name="slo-missed"):
        block = block_canary(version=version, registered_model_name=registered_model_name,
                             reasons=loadtest.outputs["reasons"], summary=loadtest.outputs["summary"])
        block.set_display_name("block canary: SLOs missed")
        block.set_caching_options(False)
        with_secrets(block)
        kubernetes.set_timeout(block, STEP_TIMEOUT_S)

    return StagingGateOutputs(
        passed=loadtest.outputs["passed"], summary=loadtest.outputs["summary"],
        report=loadtest.outputs["report"],
        outcome=dsl.OneOf(promote.outputs["outcome"], block.outputs["outcome"]),
    )


def compile_pipeline(package_path: str) -> str:
    """Write the IR YAML for the KFP backend; returns the path."""
    from kfp import compiler

    compiler.Compiler().compile(pipeline_func=staging_gate_pipeline, package_path=str(package_path))
    return str(package_path)

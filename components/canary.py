"""Staging gate, step 2: the load test passed -> canary; it failed -> block and say why."""

from typing import NamedTuple

from kfp.dsl import Markdown, Output

from components.base import component


@component
def promote_to_canary(version: int, registered_model_name: str, canary_percent: int, summary: str,
                      isvc_namespace: str, isvc_name: str
                      ) -> NamedTuple("PromoteOutputs", [("outcome", str)]):
    """Point the registry's ``canary`` alias at ``version`` and tag it ``staging.loadtest=passed``.

    With ``isvc_namespace`` set, first patch the production InferenceService
    (``isvc_name``) to serve the version's bundle as a canary at ``canary_percent``%
    (in-cluster credentials: the pipeline's ServiceAccount may patch InferenceServices).
    """
    from collections import namedtuple

    from components.steps import promote_step, user_errors

    with user_errors():
        outcome = promote_step(version, registered_model_name, canary_percent, summary,
                               isvc_namespace=isvc_namespace, isvc_name=isvc_name)
    outputs = namedtuple("PromoteOutputs", ["outcome"])
    return outputs(outcome.to_json())


@component
def block_canary(version: int, registered_model_name: str, reasons: list, summary: str,
                 verdict: Output[Markdown]) -> NamedTuple("BlockOutputs", [("outcome", str)]):
    """Print the missed SLOs, tag the version ``staging.loadtest=failed``; no canary starts."""
    from collections import namedtuple
    from pathlib import Path

    from components.steps import block_step, user_errors

    with user_errors():
        outcome = block_step(version, registered_model_name, reasons, summary)
    lines = "".join(f"- {r}\n" for r in outcome.reasons)
    Path(verdict.path).write_text(f"# Canary blocked: version {version} missed the staging SLOs\n\n{lines}\n"
                                  f"```text\n{summary}\n```\n")
    outputs = namedtuple("BlockOutputs", ["outcome"])
    return outputs(outcome.to_json())

"""Step 4' (gate failed): say why, and stop the model here."""

from typing import NamedTuple

from kfp.dsl import Markdown, Output

from components.base import component


@component
def reject_model(reasons: list, mlflow_run_id: str, verdict: Output[Markdown]
                 ) -> NamedTuple("RejectOutputs", [("outcome", str)]):
    """Print the evaluation gate's reasons, tag the MLflow run ``gate=rejected``, and write
    them as the run's verdict. Nothing is exported or registered on this branch.
    """
    from collections import namedtuple
    from pathlib import Path

    from components.steps import reject_step

    outcome = reject_step(reasons, mlflow_run_id)
    lines = "".join(f"- {r}\n" for r in outcome.reasons)
    Path(verdict.path).write_text(f"# Model rejected by the evaluation gate\n\n{lines}")
    outputs = namedtuple("RejectOutputs", ["outcome"])
    return outputs(outcome.to_json())

"""Step 5 (gate passed): register the model in MLflow under the stage's alias."""

from typing import NamedTuple

from kfp.dsl import Input, Model

from components.base import component


@component
def register_model(bundle: Input[Model], mlflow_run_id: str, stage: str, registered_model_name: str,
                   model_name: str, accuracy: float, dataset_fingerprint: str
                   ) -> NamedTuple("RegisterOutputs", [("version", int), ("outcome", str)]):
    """A new version of ``registered_model_name`` with alias ``stage``, tagged with the bundle's
    URI (a local run first copies the bundle to ``$GOURMETGRAM_HOME/models/<run id>/``).
    ``outcome`` is the run's verdict, :class:`RegistrationOutcome` as JSON (the pipeline's output
    on this branch).
    """
    from collections import namedtuple

    from components.steps import register_step, user_errors

    with user_errors():
        outcome = register_step(mlflow_run_id, bundle.uri, bundle.path, dict(bundle.metadata), stage,
                                registered_model_name, model_name, accuracy, dataset_fingerprint)
    outputs = namedtuple("RegisterOutputs", ["version", "outcome"])
    return outputs(outcome.version, outcome.to_json())

"""Step 2: train the classifier (GPU on the cluster), log it to MLflow."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Model, Output

from components.base import component


@component
def train_model(dataset: Input[Dataset], config: str, epochs: int, parent_version: str, registered_model_name: str,
                checkpoint: Output[Model]
                ) -> NamedTuple("TrainOutputs", [("mlflow_run_id", str), ("best_val_accuracy", float)]):
    """Train with ``config`` (``epochs`` -1 keeps the config's; 0 keeps the untrained network),
    from scratch or, when ``parent_version`` names a registered version of
    ``registered_model_name``, fine-tuned from it (continual training).

    The best checkpoint (early stopping on validation accuracy) is the output model; the
    MLflow run id ties evaluation and registration to this run.
    """
    from collections import namedtuple

    from components.steps import train_step, user_errors

    with user_errors():
        result = train_step(dataset.path, config, epochs, checkpoint.path, dataset.metadata.get("source", ""),
                            parent_version=parent_version, registered_model_name=registered_model_name)
    checkpoint.metadata.update({
        "framework": "pytorch", "best_val_accuracy": result.best_val_accuracy,
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "train_seconds": round(result.seconds, 2), "mlflow_run_id": result.mlflow_run_id or "",
        "dataset_fingerprint": dataset.metadata.get("fingerprint", ""), **result.lineage,
    })
    outputs = namedtuple("TrainOutputs", ["mlflow_run_id", "best_val_accuracy"])
    return outputs(result.mlflow_run_id or "", float(result.best_val_accuracy))

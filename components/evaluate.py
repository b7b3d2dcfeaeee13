"""Step 3: the offline evaluation suite; its verdict drives the pipeline's gate."""

from typing import NamedTuple

from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components.base import component


@component
def evaluate_model(dataset: Input[Dataset], checkpoint: Input[Model], config: str, mlflow_run_id: str,
                   registered_model_name: str, model_name: str,
                   metrics: Output[Metrics], confusion_matrix: Output[ClassificationMetrics],
                   report: Output[Markdown], evaluation: Output[Artifact]
                   ) -> NamedTuple("EvaluationOutputs", [("passed", bool), ("reasons", list), ("accuracy", float)]):
    """Accuracy overall and per class, slices, known failure modes, template tests.

    Outputs: scalar metrics, the confusion matrix (KFP UI), a Markdown report, the full
    result as JSON (plus the confusion-matrix PNG); ``passed`` and ``reasons`` (a list of strings)
    and ``accuracy`` for the gate and the registry. The differential gate compares the
    candidate with the model in production (``registered_model_name``) on the same sets.
    """
    import math
    from collections import namedtuple
    from pathlib import Path

    from components.steps import evaluate_step, report_markdown, user_errors

    with user_errors():
        result = evaluate_step(checkpoint.path, dataset.path, config, evaluation.path, mlflow_run_id,
                               registered_model_name, model_name)
    for key, value in result.metrics.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            metrics.log_metric(key, float(value))
    confusion_matrix.log_confusion_matrix(list(result.class_names), result.confusion_matrix)
    Path(report.path).write_text(report_markdown(result))
    evaluation.metadata.update({"passed": result.passed, "n_images": result.n_images,
                                "reasons": list(result.reasons)})
    accuracy = result.metrics.get("eval/accuracy", float("nan"))
    outputs = namedtuple("EvaluationOutputs", ["passed", "reasons", "accuracy"])
    return outputs(bool(result.passed), list(result.reasons), float(accuracy))

"""Step 5 (gate passed): build the drift detector from training reference embeddings."""

from kfp.dsl import Dataset, Input, Model, Output

from components.base import component


@component
def build_drift_detector(bundle: Input[Model], dataset: Input[Dataset], served_bundle: Output[Model]):
    """The exported bundle plus ``detector/`` (alibi-detect online MMD over the bundle's own
    feature extractor, and the training label prior): the bundle that serving and the
    detector load, and that register tags.
    """
    from components.steps import detector_step, user_errors

    with user_errors():
        outcome = detector_step(bundle.path, dataset.path, served_bundle.path)
    served_bundle.metadata.update(dict(bundle.metadata))
    served_bundle.metadata["detector"] = outcome.metadata()

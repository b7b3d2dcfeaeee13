"""Step 4b (gate passed, optional): the INT8 variant of the exported model, behind its own gate."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Model, Output

from components.base import component


@component
def quantize_model(exported: Input[Model], dataset: Input[Dataset], config: str, model_name: str,
                   enabled: bool, bundle: Output[Model]) -> NamedTuple("QuantizeOutputs", [("precision", str)]):
    """``bundle`` is the model to serve: the ONNX Runtime static-INT8 variant when it passes
    the config's accuracy gate (``export.int8_min_agreement``, ``int8_max_accuracy_drop``)
    and is faster than FP32, else a copy of the exported FP32 bundle. ``enabled=False``
    (the pipeline's ``quantize`` parameter) passes the FP32 bundle through untouched.
    """
    from collections import namedtuple

    from components.steps import quantize_step, user_errors
    from gourmetgram.bundle import triton_repo_uri

    with user_errors():
        outcome = quantize_step(exported.path, dataset.path, config, bundle.path, model_name, enabled=enabled)
    bundle.metadata.update(dict(exported.metadata))
    bundle.metadata.update({
        "precision": outcome.precision, "size_bytes": outcome.size_bytes,
        "triton_repo": triton_repo_uri(bundle.uri),
        "quantization": {"enabled": bool(enabled), "reason": outcome.reason, "report": outcome.report},
    })
    return namedtuple("QuantizeOutputs", ["precision"])(outcome.precision)

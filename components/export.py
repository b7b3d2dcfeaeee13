"""Step 4 (gate passed): export the Triton bundle, parity-checked against PyTorch."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Model, Output

from components.base import component


@component
def export_model(dataset: Input[Dataset], checkpoint: Input[Model], config: str, model_name: str,
                 bundle: Output[Model]) -> NamedTuple("ExportOutputs", [("size_bytes", int), ("triton_repo", str)]):
    """Write the bundle (contract 1): ``triton/<model_name>/{config.pbtxt,labels.txt,1/model.onnx}``,
    the feature extractor, the model spec and the parity figures. Fails if ONNX Runtime
    and PyTorch disagree beyond the config's tolerance. ``triton_repo`` is the storageUri.
    """
    from collections import namedtuple

    from components.steps import export_step, user_errors
    from gourmetgram.bundle import triton_repo_uri

    with user_errors():
        result = export_step(checkpoint.path, dataset.path, config, bundle.path, model_name)
    triton_repo = triton_repo_uri(bundle.uri)
    bundle.metadata.update({
        "framework": "onnx", "serving": "triton", "model_name": model_name, "triton_repo": triton_repo,
        "precision": result.precision,
        "size_bytes": result.size_bytes, "parity": result.parity.to_dict(),
        "export_seconds": result.seconds,
    })
    outputs = namedtuple("ExportOutputs", ["size_bytes", "triton_repo"])
    return outputs(int(result.size_bytes), triton_repo)

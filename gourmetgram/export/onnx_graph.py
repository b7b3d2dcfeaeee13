"""PyTorch -> ONNX, the FP16 variant of a graph, and running graphs in ONNX Runtime.

ONNX files come from the TorchScript-based exporter (``dynamo=False``): with torch 2.14 it
honours the requested opset (the dynamo exporter forces opset 18, fails its down-conversion
with a traceback, and splits weights into a ``.onnx.data`` file), writes one self-contained
file, and takes a third of the time.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gourmetgram.constants import INPUT_NAME, OUTPUT_NAME

PARITY_BATCH = 32  # images per ONNX Runtime / PyTorch call during parity checks


def export_onnx(module: nn.Module, path: str | Path, image_size: int, opset: int,
                output_name: str = OUTPUT_NAME, input_name: str = INPUT_NAME) -> Path:
    """Write ``module`` (eval mode, CPU) as a single ONNX file with a dynamic batch axis."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            module, (example,), str(path),
            input_names=[input_name], output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    import onnx

    onnx.checker.check_model(str(path))
    return path


def convert_fp16(src: str | Path, dst: str | Path) -> Path:
    """Write an FP16 copy of an FP32 graph: weights and activations in float16.

    ``keep_io_types=True`` keeps the graph's input and output FP32 (casts at the edges), so
    the Triton config's TYPE_FP32 tensors, the transformer and every client stay unchanged.
    """
    import onnx
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        # one warning per weight below float16's range ("truncated to 1e-07"): expected, and
        # what it does to the outputs is what the parity check measures
        warnings.simplefilter("ignore", UserWarning)
        model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    dst = Path(dst)
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst))
    return dst


def ort_session(path: str | Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session, images: np.ndarray, batch: int = PARITY_BATCH) -> np.ndarray:
    """Run an exported graph over (N, 3, H, W) float32 images in chunks."""
    session = ort_session(path_or_session) if isinstance(path_or_session, (str, Path)) else path_or_session
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: images[i:i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(outs)

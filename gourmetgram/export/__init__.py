"""Export a trained classifier to a Triton model repository bundle (contract 1).

By concern:

* :mod:`gourmetgram.bundle`: the layout (paths), one ``Bundle`` type;
* :mod:`.onnx_graph`: PyTorch -> ONNX, the FP16 conversion, running graphs in ONNX Runtime;
* :mod:`.parity`: the exported graph against the FP32 PyTorch model, with tolerances;
* :mod:`.triton_config`: ``config.pbtxt`` from/to Triton's ``ModelConfig`` protobuf message;
* :mod:`.assemble`: build the bundle aside, check parity, move it into place; validate one.

Callers import from here; the names below are the package's interface.
"""

from __future__ import annotations

from gourmetgram.bundle import (
    CONFIG_FILENAME,
    FEATURE_EXTRACTOR_FILENAME,
    LABELS_FILENAME,
    MODEL_SPEC_FILENAME,
    MODEL_VERSION,
    ONNX_FILENAME,
    PARITY_FILENAME,
    TRITON_DIR,
    Bundle,
)
from gourmetgram.export.assemble import (
    ExportResult,
    export_bundle,
    load_model_spec,
    read_labels,
    validate_bundle,
)
from gourmetgram.export.onnx_graph import convert_fp16, export_onnx, run_onnx
from gourmetgram.export.parity import ExportParityError, ParityReport, check_parity, enforce_parity
from gourmetgram.export.triton_config import (
    PLATFORM,
    TritonModelConfig,
    build_model_config,
    parse_triton_config,
    read_triton_config,
    render_triton_config,
    write_triton_model,
)

__all__ = [
    "CONFIG_FILENAME", "FEATURE_EXTRACTOR_FILENAME", "LABELS_FILENAME", "MODEL_SPEC_FILENAME",
    "MODEL_VERSION", "ONNX_FILENAME", "PARITY_FILENAME", "PLATFORM", "TRITON_DIR", "Bundle",
    "ExportParityError", "ExportResult", "ParityReport", "TritonModelConfig", "build_model_config",
    "check_parity", "convert_fp16", "enforce_parity", "export_bundle", "export_onnx", "load_model_spec",
    "parse_triton_config", "read_labels", "read_triton_config", "render_triton_config", "run_onnx",
    "validate_bundle", "write_triton_model",
]

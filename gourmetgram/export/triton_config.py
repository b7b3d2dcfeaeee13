"""Triton's ``config.pbtxt``: built as Triton's own ``ModelConfig`` protobuf message, written
with ``text_format``, and parsed back with the same schema.

The schema comes from ``tritonclient``'s ``model_config_pb2``, loaded as that one file
without importing the ``tritonclient.grpc`` package (whose ``grpc_service.proto`` symbols
clash with kserve's), so the transformer (a kserve process) can read configs too.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from gourmetgram.bundle import CONFIG_FILENAME, LABELS_FILENAME, MODEL_VERSION, ONNX_FILENAME
from gourmetgram.config import INSTANCE_KINDS, PRECISIONS, ExportConfig
from gourmetgram.constants import INPUT_NAME, OUTPUT_NAME
from gourmetgram.errors import BadInput

PLATFORM = "onnxruntime_onnx"
TENSORRT = "tensorrt"  # the onnxruntime backend's TensorRT execution provider (GPU instances only)
TENSORRT_WORKSPACE_BYTES = 1 << 30
HEADER = ("# Written by gourmetgram.export from Triton's ModelConfig protobuf message.\n"
          "# Fields at their default are omitted (proto3 text): no `kind` means KIND_AUTO.\n")


@dataclasses.dataclass(frozen=True)
class TritonModelConfig:
    """The parts of a Triton ``config.pbtxt`` that serving code needs, as plain values."""

    name: str
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_microseconds: int
    instance_count: int
    instance_kind: str
    input_name: str
    input_dims: tuple[int, ...]
    output_name: str
    output_dims: tuple[int, ...]
    label_filename: str
    platform: str = PLATFORM
    dynamic_batching: bool = True
    input_data_type: str = "TYPE_FP32"
    output_data_type: str = "TYPE_FP32"
    gpu_accelerators: tuple[str, ...] = ()  # optimization.execution_accelerators, by name
    tensorrt_precision_mode: str = ""  # "FP16"/"FP32" when TensorRT is requested

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def model_config_pb2() -> Any:
    """Triton's ``model_config_pb2`` without running ``tritonclient.grpc/__init__``.

    The package's ``__init__`` registers ``grpc_service.proto``, whose symbols clash with
    kserve's; ``model_config.proto`` alone does not, so loading just that file keeps this
    module usable in the transformer's (kserve) process. A later real import of
    ``tritonclient.grpc`` (PyTriton) still works: protobuf accepts the identical file.
    """
    loaded = sys.modules.get("tritonclient.grpc.model_config_pb2")
    if loaded is not None:
        return loaded
    name = "_gourmetgram_triton_model_config_pb2"
    if name not in sys.modules:
        import importlib.util

        import tritonclient

        path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def check_export_config(cfg: ExportConfig) -> None:
    """The settings a Triton config is made of, checked again here: callers may build an
    :class:`ExportConfig` in code, bypassing the YAML loader's validation."""
    problems = []
    if cfg.max_batch_size < 1:
        problems.append("max_batch_size must be >= 1 (the ONNX model has a batch axis)")
    if any(b < 1 or b > cfg.max_batch_size for b in cfg.preferred_batch_sizes):
        problems.append("preferred_batch_sizes must lie in 1..max_batch_size")
    if cfg.max_queue_delay_microseconds < 0:
        problems.append("max_queue_delay_microseconds must be >= 0")
    if cfg.instance_count < 1:
        problems.append("instance_count must be >= 1")
    if cfg.instance_kind not in INSTANCE_KINDS:
        problems.append(f"instance_kind must be one of {INSTANCE_KINDS}")
    if cfg.precision not in PRECISIONS:
        problems.append(f"precision must be one of {PRECISIONS}")
    if cfg.tensorrt_fp16 and cfg.instance_kind == "KIND_CPU":
        problems.append("tensorrt_fp16 needs GPU instances (instance_kind KIND_GPU or KIND_AUTO)")
    if problems:
        raise BadInput("invalid export settings: " + "; ".join(problems))


def build_model_config(name: str, image_size: int, num_classes: int, cfg: ExportConfig,
                       platform: str = PLATFORM) -> Any:
    """The ``ModelConfig`` message for an image classifier with a dynamic batch axis.

    Inputs and outputs are FP32 for both precisions: an FP16 graph is exported with
    ``keep_io_types`` so clients never see float16.
    """
    check_export_config(cfg)
    pb = model_config_pb2()
    mc = pb.ModelConfig(name=name, platform=platform, max_batch_size=cfg.max_batch_size)
    mc.input.add(name=INPUT_NAME, data_type=pb.TYPE_FP32, dims=[3, image_size, image_size])
    mc.output.add(name=OUTPUT_NAME, data_type=pb.TYPE_FP32, dims=[num_classes],
                  label_filename=LABELS_FILENAME)
    mc.dynamic_batching.SetInParent()  # present even with no delay and no preferred sizes
    mc.dynamic_batching.preferred_batch_size.extend(cfg.preferred_batch_sizes)
    mc.dynamic_batching.max_queue_delay_microseconds = cfg.max_queue_delay_microseconds
    mc.instance_group.add(count=cfg.instance_count, kind=pb.ModelInstanceGroup.Kind.Value(cfg.instance_kind))
    if cfg.tensorrt_fp16:
        # onnxruntime backend: TensorRT EP on GPU instances, FP16 kernels; a CPU instance
        # (KIND_AUTO on a node without a GPU) ignores GPU accelerators.
        accel = mc.optimization.execution_accelerators.gpu_execution_accelerator.add(name=TENSORRT)
        accel.parameters["precision_mode"] = "FP16"
        accel.parameters["max_workspace_size_bytes"] = str(TENSORRT_WORKSPACE_BYTES)
    return mc


def render_triton_config(name: str, image_size: int, num_classes: int, cfg: ExportConfig,
                         platform: str = PLATFORM) -> str:
    """``config.pbtxt`` text: :func:`build_model_config` through protobuf's ``text_format``.

    proto3 text omits fields at their default (``kind: KIND_AUTO``, a zero queue delay):
    Triton reads them back as those defaults, as :func:`parse_triton_config` does.
    """
    from google.protobuf import text_format

    return HEADER + text_format.MessageToString(build_model_config(name, image_size, num_classes, cfg,
                                                                   platform))


def parse_triton_config(text: str, where: str = "config.pbtxt", default_name: str = "") -> TritonModelConfig:
    """Parse ``config.pbtxt`` text with Triton's ``ModelConfig`` schema into plain values."""
    from google.protobuf import text_format

    pb = model_config_pb2()
    try:
        cfg = text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise BadInput(f"{where} is not a valid Triton model config: {exc}") from None
    if len(cfg.input) != 1 or len(cfg.output) != 1:
        raise BadInput(f"{where}: expected exactly one input and one output, "
                        f"found {len(cfg.input)} and {len(cfg.output)}")
    dtype = pb.DataType.Name
    group = cfg.instance_group[0] if cfg.instance_group else None
    batching = cfg.dynamic_batching
    accelerators = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    trt = [a for a in accelerators if a.name == TENSORRT]
    return TritonModelConfig(
        name=cfg.name or default_name,
        max_batch_size=cfg.max_batch_size,
        preferred_batch_sizes=tuple(batching.preferred_batch_size),
        max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
        instance_count=(group.count or 1) if group else 1,
        instance_kind=pb.ModelInstanceGroup.Kind.Name(group.kind) if group else "KIND_AUTO",
        input_name=cfg.input[0].name,
        input_dims=tuple(cfg.input[0].dims),
        output_name=cfg.output[0].name,
        output_dims=tuple(cfg.output[0].dims),
        label_filename=cfg.output[0].label_filename,
        platform=cfg.platform or cfg.backend,
        dynamic_batching=cfg.HasField("dynamic_batching"),
        input_data_type=dtype(cfg.input[0].data_type),
        output_data_type=dtype(cfg.output[0].data_type),
        gpu_accelerators=tuple(a.name for a in accelerators),
        tensorrt_precision_mode=trt[0].parameters.get("precision_mode", "") if trt else "",
    )


def read_triton_config(model_dir: str | Path) -> TritonModelConfig:
    """Parse ``<model_dir>/config.pbtxt`` (safe in a kserve process, see :func:`model_config_pb2`)."""
    path = Path(model_dir) / CONFIG_FILENAME
    if not path.is_file():
        raise BadInput(f"Triton config {path} does not exist")
    return parse_triton_config(path.read_text(), str(path), default_name=Path(model_dir).name)


def check_labels(class_names: Sequence[str]) -> None:
    bad = [c for c in class_names if not c or "\n" in c or "\r" in c or c != c.strip()]
    if bad:
        raise BadInput(f"class names must be non-empty single lines without outer spaces: {bad!r}")


def write_triton_model(model_dir: str | Path, onnx_path: str | Path, class_names: Sequence[str],
                       image_size: int, cfg: ExportConfig) -> Path:
    """Lay out one Triton model folder (config, labels, ``1/model.onnx``) for an ONNX file.

    The folder name is the Triton model name, so an INT8 or other variant is another
    call with another folder in the same repository.
    """
    model_dir = Path(model_dir)
    check_labels(class_names)
    config = render_triton_config(model_dir.name, image_size, len(class_names), cfg)
    (model_dir / MODEL_VERSION).mkdir(parents=True, exist_ok=True)
    target = model_dir / MODEL_VERSION / ONNX_FILENAME
    if Path(onnx_path).resolve() != target.resolve():
        shutil.copyfile(onnx_path, target)
    (model_dir / CONFIG_FILENAME).write_text(config)
    (model_dir / LABELS_FILENAME).write_text("".join(f"{c}\n" for c in class_names))
    return model_dir

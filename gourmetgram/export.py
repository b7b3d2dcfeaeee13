"""Export a trained classifier to a Triton model repository bundle (contract 1).

The bundle is what every later step reads: KServe/Triton serve ``<bundle>/triton``,
the local PyTriton predictor takes its batching settings from the same ``config.pbtxt``,
the transformer takes class names from ``labels.txt`` and ``model_spec.json``, and the
drift detector embeds images with ``feature_extractor.onnx``.

Layout::

    <bundle>/triton/<model_name>/config.pbtxt
    <bundle>/triton/<model_name>/labels.txt
    <bundle>/triton/<model_name>/1/model.onnx
    <bundle>/feature_extractor.onnx
    <bundle>/model_spec.json
    <bundle>/parity.json

ONNX files come from the TorchScript-based exporter (``dynamo=False``): with torch
2.14 it honours the requested opset (the dynamo exporter forces opset 18, fails its
down-conversion with a traceback, and splits weights into a ``.onnx.data`` file), writes
one self-contained file, and takes a third of the time. Every export is checked against
the PyTorch model in ONNX Runtime before the bundle appears on disk.

Triton configs are written as text here and parsed back with Triton's own protobuf
schema (``tritonclient``'s ``model_config_pb2``) inside :func:`read_triton_config`, which
loads that one file without importing ``tritonclient.grpc`` (whose symbols clash with
kserve's), so the transformer process can call it too.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from gourmetgram.config import INSTANCE_KINDS, ExportConfig
from gourmetgram.constants import FEATURES_NAME, INPUT_NAME, MODEL_NAME, OUTPUT_NAME
from gourmetgram.errors import UserError
from gourmetgram.model import Classifier, FeatureExtractor, ModelSpec, load_checkpoint

TRITON_DIR = "triton"
MODEL_VERSION = "1"
ONNX_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"
LABELS_FILENAME = "labels.txt"
FEATURE_EXTRACTOR_FILENAME = "feature_extractor.onnx"
MODEL_SPEC_FILENAME = "model_spec.json"
PARITY_FILENAME = "parity.json"
PLATFORM = "onnxruntime_onnx"
PARITY_BATCH = 32  # images per ONNX Runtime / PyTorch call during the parity check
RANDOM_PARITY_IMAGES = 8


class ExportParityError(UserError):
    """ONNX Runtime disagrees with PyTorch beyond the configured tolerance."""


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """How closely the exported graphs reproduce PyTorch on the same inputs."""

    max_abs_diff: float
    top1_agreement: float
    n_images: int
    feature_max_abs_diff: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    bundle_dir: str
    triton_repo: str
    model_dir: str
    onnx_path: str
    config_path: str
    size_bytes: int
    parity: ParityReport
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["parity"] = self.parity.to_dict()
        return d


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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- ONNX


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


def _ort_session(path: str | Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session, images: np.ndarray, batch: int = PARITY_BATCH) -> np.ndarray:
    """Run an exported graph over (N, 3, H, W) float32 images in chunks."""
    session = _ort_session(path_or_session) if isinstance(path_or_session, (str, Path)) else path_or_session
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: images[i:i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(outs)


def _run_torch(model: Classifier, images: np.ndarray,
               batch: int = PARITY_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch logits (the real ``forward``) and embeddings, in one pass where possible.

    The embedding is captured as the head's input during ``forward``; it is computed
    separately only when ``forward`` does not go through ``model.classifier``.
    """
    logits, features, captured = [], [], []
    hook = model.classifier.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    try:
        with torch.inference_mode():
            for i in range(0, len(images), batch):
                x = torch.from_numpy(images[i:i + batch])
                captured.clear()
                logits.append(model(x).numpy())
                features.append((captured[0] if len(captured) == 1 else model.embed(x)).numpy())
    finally:
        hook.remove()
    return np.concatenate(logits), np.concatenate(features)


def check_parity(model: Classifier, onnx_path: str | Path, images: np.ndarray,
                 features_path: str | Path | None = None) -> ParityReport:
    """Compare ONNX Runtime with PyTorch on the same images (logits and, optionally, features)."""
    if not len(images):
        raise UserError("parity check needs at least one image")
    want, f_want = _run_torch(model, images)
    got = run_onnx(onnx_path, images)
    max_diff = float(np.abs(got - want).max())
    agreement = float((got.argmax(1) == want.argmax(1)).mean())
    feature_diff = 0.0
    if features_path is not None:
        feature_diff = float(np.abs(run_onnx(features_path, images) - f_want).max())
    return ParityReport(max_diff, agreement, int(len(images)), feature_diff)


def enforce_parity(report: ParityReport, cfg: ExportConfig) -> None:
    """Raise :class:`ExportParityError` with the figures when ONNX drifts from PyTorch."""
    problems = []
    if not report.max_abs_diff <= cfg.parity_atol:  # also catches NaN
        problems.append(f"max |logit diff| {report.max_abs_diff:.3g} > parity_atol {cfg.parity_atol:g}")
    if not report.feature_max_abs_diff <= cfg.parity_atol:
        problems.append(f"feature extractor max |diff| {report.feature_max_abs_diff:.3g} "
                        f"> parity_atol {cfg.parity_atol:g}")
    if report.top1_agreement < cfg.parity_min_agreement:
        problems.append(f"top-1 agreement {report.top1_agreement:.4f} < parity_min_agreement "
                        f"{cfg.parity_min_agreement:g}")
    if problems:
        raise ExportParityError(
            f"ONNX export does not match PyTorch on {report.n_images} images: " + "; ".join(problems)
        )


# --------------------------------------------------------------------------- Triton config


def _check_export_config(cfg: ExportConfig) -> None:
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
    if problems:
        raise UserError("invalid export settings: " + "; ".join(problems))


def render_triton_config(name: str, image_size: int, num_classes: int, cfg: ExportConfig,
                         platform: str = PLATFORM) -> str:
    """``config.pbtxt`` text for an image classifier with a dynamic batch axis."""
    _check_export_config(cfg)
    batching = []
    if cfg.preferred_batch_sizes:
        sizes = ", ".join(str(b) for b in cfg.preferred_batch_sizes)
        batching.append(f"  preferred_batch_size: [ {sizes} ]")
    batching.append(f"  max_queue_delay_microseconds: {cfg.max_queue_delay_microseconds}")
    return "\n".join([
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {cfg.max_batch_size}",
        "input [",
        "  {",
        f'    name: "{INPUT_NAME}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ 3, {image_size}, {image_size} ]",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{OUTPUT_NAME}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {num_classes} ]",
        f'    label_filename: "{LABELS_FILENAME}"',
        "  }",
        "]",
        "dynamic_batching {",
        *batching,
        "}",
        "instance_group [",
        "  {",
        f"    count: {cfg.instance_count}",
        f"    kind: {cfg.instance_kind}",
        "  }",
        "]",
        "",
    ])


def _check_labels(class_names: Sequence[str]) -> None:
    bad = [c for c in class_names if not c or "\n" in c or "\r" in c or c != c.strip()]
    if bad:
        raise UserError(f"class names must be non-empty single lines without outer spaces: {bad!r}")


def write_triton_model(model_dir: str | Path, onnx_path: str | Path, class_names: Sequence[str],
                       image_size: int, cfg: ExportConfig) -> Path:
    """Lay out one Triton model folder (config, labels, ``1/model.onnx``) for an ONNX file.

    The folder name is the Triton model name, so an INT8 or other variant is another
    call with another folder in the same repository.
    """
    model_dir = Path(model_dir)
    _check_labels(class_names)
    config = render_triton_config(model_dir.name, image_size, len(class_names), cfg)
    (model_dir / MODEL_VERSION).mkdir(parents=True, exist_ok=True)
    target = model_dir / MODEL_VERSION / ONNX_FILENAME
    if Path(onnx_path).resolve() != target.resolve():
        shutil.copyfile(onnx_path, target)
    (model_dir / CONFIG_FILENAME).write_text(config)
    (model_dir / LABELS_FILENAME).write_text("".join(f"{c}\n" for c in class_names))
    return model_dir


def _model_config_pb2():
    """Triton's ``model_config_pb2`` without running ``tritonclient.grpc/__init__``.

    The package's ``__init__`` registers ``grpc_service.proto``, whose symbols clash with
    kserve's; ``model_config.proto`` alone does not, so loading just that file keeps
    this parser usable in the transformer's (kserve) process. A later real import of
    ``tritonclient.grpc`` (PyTriton) still works: protobuf accepts the identical file.
    """
    import sys

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


def read_triton_config(model_dir: str | Path) -> TritonModelConfig:
    """Parse ``<model_dir>/config.pbtxt`` with Triton's own protobuf schema (``ModelConfig``).

    Safe in a kserve process: only ``model_config.proto`` is loaded, never the
    ``tritonclient.grpc`` package (see :func:`_model_config_pb2`).
    """
    path = Path(model_dir) / CONFIG_FILENAME
    if not path.is_file():
        raise UserError(f"Triton config {path} does not exist")
    from google.protobuf import text_format

    model_config_pb2 = _model_config_pb2()
    try:
        cfg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise UserError(f"{path} is not a valid Triton model config: {exc}") from None
    if len(cfg.input) != 1 or len(cfg.output) != 1:
        raise UserError(f"{path}: expected exactly one input and one output, "
                        f"found {len(cfg.input)} and {len(cfg.output)}")
    dtype = model_config_pb2.DataType.Name
    group = cfg.instance_group[0] if cfg.instance_group else None
    batching = cfg.dynamic_batching
    return TritonModelConfig(
        name=cfg.name or Path(model_dir).name,
        max_batch_size=cfg.max_batch_size,
        preferred_batch_sizes=tuple(batching.preferred_batch_size),
        max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
        instance_count=(group.count or 1) if group else 1,
        instance_kind=model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) if group else "KIND_AUTO",
        input_name=cfg.input[0].name,
        input_dims=tuple(cfg.input[0].dims),
        output_name=cfg.output[0].name,
        output_dims=tuple(cfg.output[0].dims),
        label_filename=cfg.output[0].label_filename,
        platform=cfg.platform or cfg.backend,
        dynamic_batching=cfg.HasField("dynamic_batching"),
        input_data_type=dtype(cfg.input[0].data_type),
        output_data_type=dtype(cfg.output[0].data_type),
    )


def read_labels(model_dir: str | Path) -> list[str]:
    path = Path(model_dir) / LABELS_FILENAME
    if not path.is_file():
        raise UserError(f"labels file {path} does not exist")
    return [line for line in path.read_text().splitlines() if line]


def load_model_spec(bundle_dir: str | Path) -> ModelSpec:
    path = Path(bundle_dir) / MODEL_SPEC_FILENAME
    if not path.is_file():
        raise UserError(f"{path} does not exist; is {bundle_dir} an exported model bundle?")
    try:
        return ModelSpec.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{path} is not a valid model spec: {exc}") from None


def validate_bundle(bundle_dir: str | Path, model_name: str = MODEL_NAME,
                    check_config: bool = True) -> ModelSpec:
    """Check a bundle is complete and self-consistent; raise :class:`UserError` naming what is wrong.

    ``check_config`` also parses ``config.pbtxt`` and checks it against the spec.
    """
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise UserError(f"model bundle {bundle} does not exist")
    model_dir = bundle / TRITON_DIR / model_name
    required = [model_dir / CONFIG_FILENAME, model_dir / LABELS_FILENAME,
                model_dir / MODEL_VERSION / ONNX_FILENAME, bundle / FEATURE_EXTRACTOR_FILENAME,
                bundle / MODEL_SPEC_FILENAME, bundle / PARITY_FILENAME]
    missing = [str(p.relative_to(bundle)) for p in required if not p.is_file()]
    if missing:
        raise UserError(f"model bundle {bundle} is incomplete; missing: {', '.join(missing)}")
    spec = load_model_spec(bundle)
    problems = []
    labels = read_labels(model_dir)
    if labels != list(spec.class_names):
        problems.append(f"labels.txt ({len(labels)} classes) differs from model_spec.json "
                        f"({spec.num_classes} classes)")
    if check_config:
        tc = read_triton_config(model_dir)
        if tc.name != model_name:
            problems.append(f"config.pbtxt names model {tc.name!r}, folder is {model_name!r}")
        if tc.input_dims != (3, spec.image_size, spec.image_size):
            problems.append(f"config.pbtxt input dims {list(tc.input_dims)} do not match image size "
                            f"{spec.image_size}")
        if tc.output_dims != (spec.num_classes,):
            problems.append(f"config.pbtxt output dims {list(tc.output_dims)} do not match "
                            f"{spec.num_classes} classes")
    if problems:
        raise UserError(f"model bundle {bundle} is inconsistent: " + "; ".join(problems))
    return spec


# --------------------------------------------------------------------------- bundle


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _as_model(checkpoint_or_model: str | Path | nn.Module) -> Classifier:
    if isinstance(checkpoint_or_model, (str, Path)):
        return load_checkpoint(checkpoint_or_model)
    if not isinstance(checkpoint_or_model, Classifier):
        raise UserError(f"expected a checkpoint path or a Classifier, got {type(checkpoint_or_model).__name__}")
    return copy.deepcopy(checkpoint_or_model).cpu().eval()  # never touch the caller's model


def _parity_images(spec: ModelSpec, images: np.ndarray | None) -> np.ndarray:
    if images is None:
        rng = np.random.default_rng(0)
        return rng.standard_normal((RANDOM_PARITY_IMAGES, 3, spec.image_size, spec.image_size),
                                   dtype=np.float32)
    images = np.ascontiguousarray(images, dtype=np.float32)
    expected = (3, spec.image_size, spec.image_size)
    if images.ndim != 4 or images.shape[1:] != expected or len(images) == 0:
        raise UserError(f"parity images must have shape (N>0, {', '.join(map(str, expected))}); "
                        f"got {images.shape}")
    return images


def export_bundle(checkpoint_or_model: str | Path | nn.Module, bundle_dir: str | Path,
                  export_cfg: ExportConfig, model_name: str = MODEL_NAME,
                  parity_images: np.ndarray | None = None, overwrite: bool = False) -> ExportResult:
    """Export a classifier to ``bundle_dir`` (contract 1) after a parity check.

    The bundle is assembled in a sibling temporary folder and moved into place only when
    parity passes, so a failed export never leaves a half bundle for ``serve`` to pick up.
    An existing non-empty ``bundle_dir`` is replaced only with ``overwrite=True``.
    """
    started = time.perf_counter()
    bundle = Path(bundle_dir).expanduser().resolve()
    if bundle.exists() and (not bundle.is_dir() or any(bundle.iterdir())) and not overwrite:
        raise UserError(f"{bundle} already exists and is not empty; pick another folder or overwrite")
    if not model_name or "/" in model_name or model_name.startswith("."):
        raise UserError(f"invalid Triton model name {model_name!r}")
    _check_export_config(export_cfg)
    model = _as_model(checkpoint_or_model)
    spec = model.spec
    _check_labels(spec.class_names)
    images = _parity_images(spec, parity_images)

    bundle.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.", dir=bundle.parent))
    try:
        model_dir = work / TRITON_DIR / model_name
        onnx_tmp = export_onnx(model, work / "classifier.onnx", spec.image_size, export_cfg.opset)
        write_triton_model(model_dir, onnx_tmp, spec.class_names, spec.image_size, export_cfg)
        onnx_tmp.unlink()
        features = export_onnx(FeatureExtractor(model).eval(), work / FEATURE_EXTRACTOR_FILENAME,
                               spec.image_size, export_cfg.opset, output_name=FEATURES_NAME)
        report = check_parity(model, model_dir / MODEL_VERSION / ONNX_FILENAME, images, features)
        enforce_parity(report, export_cfg)
        (work / MODEL_SPEC_FILENAME).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
        import onnxruntime

        parity_doc = {**report.to_dict(), "parity_atol": export_cfg.parity_atol,
                      "parity_min_agreement": export_cfg.parity_min_agreement,
                      "random_inputs": parity_images is None, "opset": export_cfg.opset,
                      "exporter": "torch.onnx (TorchScript, dynamo=False)",
                      "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
        (work / PARITY_FILENAME).write_text(json.dumps(parity_doc, indent=2) + "\n")
        if bundle.exists():
            shutil.rmtree(bundle) if bundle.is_dir() else bundle.unlink()
        os.replace(work, bundle)
        os.chmod(bundle, 0o755)  # mkdtemp makes it 0700
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise

    model_dir = bundle / TRITON_DIR / model_name
    return ExportResult(
        bundle_dir=str(bundle), triton_repo=str(bundle / TRITON_DIR), model_dir=str(model_dir),
        onnx_path=str(model_dir / MODEL_VERSION / ONNX_FILENAME),
        config_path=str(model_dir / CONFIG_FILENAME), size_bytes=_dir_size(bundle / TRITON_DIR),
        parity=report, seconds=round(time.perf_counter() - started, 3),
    )

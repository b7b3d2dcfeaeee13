"""Run configuration: one YAML file per dataset (``configs/demo.yaml``, ``configs/food11.yaml``).

Sections map to frozen dataclasses. Unknown keys, wrong types and out-of-range values
raise :class:`ConfigError` naming the file and the key, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Optional

import yaml

from gourmetgram.constants import CONFIG_DIR
from gourmetgram.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str = "mobilenet_v2"
    image_size: int = 224
    width_mult: float = 1.0
    dropout: float = 0.2
    pretrained_weights: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 5  # early stopping: epochs without validation improvement
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    hflip: bool = True
    crop_scale: float = 1.0  # random crop keeps this share of each side, at least
    num_workers: int = 0


@dataclasses.dataclass(frozen=True)
class SliceConfig:
    name: str
    path: str  # image folder in class_XX layout, relative to the dataset root
    min_accuracy: float
    expected_class: Optional[int] = None  # set for a one-class slice (the course's indian_dessert -> 2)


@dataclasses.dataclass(frozen=True)
class FailureModeConfig:
    name: str
    path: str  # image folder (flat or class_XX), relative to the dataset root
    expected_class: int
    min_accuracy: float


@dataclasses.dataclass(frozen=True)
class TemplateConfig:
    path: str  # folder with backgrounds/, extras/ and foods/class_XX/
    min_invariance: float = 0.8  # share of compositions whose label survives bg/extra
    min_sensitivity: float = 0.8  # share of food swaps that change the label
    min_accuracy: Optional[float] = None  # share of compositions labelled as the food (the course's pass ratio)
    foods_per_class: int = 1
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    min_overall_accuracy: float = 0.85
    min_per_class_accuracy: float = 0.75
    slices: tuple[SliceConfig, ...] = ()
    failure_modes: tuple[FailureModeConfig, ...] = ()
    templates: Optional[TemplateConfig] = None
    batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 1000
    instance_count: int = 1
    instance_kind: str = "KIND_CPU"  # configs/food11.yaml: KIND_AUTO (GPU in production, CPU in staging)
    opset: int = 17
    parity_atol: float = 1e-3  # max |logit difference| between ONNX Runtime and PyTorch
    parity_min_agreement: float = 1.0  # share of identical top-1 classes
    # INT8 variant (gourmetgram.quantize): the accuracy gate it must pass to be exported.
    int8_min_agreement: float = 0.95  # share of evaluation images with the FP32 top-1 class
    int8_max_accuracy_drop: float = 0.01  # FP32 accuracy minus INT8 accuracy, at most
    int8_calibration_images: int = 128  # preprocessed training images for static calibration
    ort_intra_op_threads: int = 0  # ONNX Runtime threads per Triton instance; 0 = cores / instances


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    export: ExportConfig = ExportConfig()
    source: str = "<defaults>"


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_hint, _) = typing.get_args(hint)
        return tuple(_convert(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def from_mapping(cls: type, data: Any, where: str):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    return _build(cls, data, where)


def read_yaml(path: Path, what: str = "config") -> dict:
    """A YAML mapping from ``path``, or a :class:`ConfigError` that names the file."""
    if not path.is_file():
        raise ConfigError(f"{what} file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping, got {type(data).__name__}")
    return data


def _build(cls: type, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(fields)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{where}: {exc}") from exc


def _check(cfg: RunConfig) -> None:
    problems = []
    if cfg.model.image_size < 32:
        problems.append("model.image_size must be >= 32")
    if cfg.train.epochs < 0:
        problems.append("train.epochs must be >= 0")
    if cfg.train.batch_size < 1:
        problems.append("train.batch_size must be >= 1")
    if cfg.train.lr <= 0:
        problems.append("train.lr must be > 0")
    if cfg.train.device not in ("auto", "cpu", "cuda"):
        problems.append("train.device must be auto, cpu or cuda")
    if not 0 < cfg.train.crop_scale <= 1:
        problems.append("train.crop_scale must be in (0, 1]")
    for key in ("min_overall_accuracy", "min_per_class_accuracy"):
        if not 0 <= getattr(cfg.evaluation, key) <= 1:
            problems.append(f"evaluation.{key} must be in [0, 1]")
    if cfg.export.max_batch_size < 1:
        problems.append("export.max_batch_size must be >= 1")
    if any(b > cfg.export.max_batch_size for b in cfg.export.preferred_batch_sizes):
        problems.append("export.preferred_batch_sizes must not exceed export.max_batch_size")
    if cfg.export.instance_kind not in ("KIND_CPU", "KIND_GPU", "KIND_AUTO"):
        problems.append("export.instance_kind must be KIND_CPU, KIND_GPU or KIND_AUTO")
    if not 0 <= cfg.export.int8_min_agreement <= 1:
        problems.append("export.int8_min_agreement must be in [0, 1]")
    if not 0 <= cfg.export.int8_max_accuracy_drop <= 1:
        problems.append("export.int8_max_accuracy_drop must be in [0, 1]")
    if cfg.export.int8_calibration_images < 1:
        problems.append("export.int8_calibration_images must be >= 1")
    if cfg.export.ort_intra_op_threads < 0:
        problems.append("export.ort_intra_op_threads must be >= 0 (0 = automatic)")
    if problems:
        raise ConfigError(f"{cfg.source}: " + "; ".join(problems))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """``demo`` -> ``configs/demo.yaml``; a path is taken as it is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    return CONFIG_DIR / f"{name_or_path}.yaml"


def load_config(name_or_path: str | Path) -> RunConfig:
    path = resolve_config_path(name_or_path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"config {name_or_path!r} not found ({path}); built-in configs: {known}")
    data = read_yaml(path)
    data.setdefault("source", str(path))
    cfg = _build(RunConfig, data, str(path))
    _check(cfg)
    return cfg


def override(cfg: RunConfig, section: str, **changes: Any) -> RunConfig:
    """A copy of ``cfg`` with some fields of one section replaced (pipeline parameters)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return cfg
    new = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})
    _check(new)
    return new


@dataclasses.dataclass(frozen=True)
class SLOConfig:
    """Service-level objectives a staging load test must meet (``configs/slo.yaml``)."""

    p95_ms: float
    max_error_rate: float
    min_rps: float
    min_requests: int = 20
    source: str = "<defaults>"


def load_slo(name_or_path: str | Path = "slo") -> SLOConfig:
    path = resolve_config_path(name_or_path)
    data = read_yaml(path, "SLO")
    data.setdefault("source", str(path))
    slo = _build(SLOConfig, data, str(path))
    if slo.p95_ms <= 0 or not 0 <= slo.max_error_rate <= 1 or slo.min_rps < 0 or slo.min_requests < 1:
        raise ConfigError(f"{path}: need p95_ms > 0, 0 <= max_error_rate <= 1, min_rps >= 0, min_requests >= 1")
    return slo

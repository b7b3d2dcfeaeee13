"""Run configuration: one YAML file per dataset (``configs/demo.yaml``, ``configs/food11.yaml``).

Sections are frozen dataclasses whose field types carry their constraints (pydantic
``Annotated`` metadata: bounds, choices, durations). A file is validated once, when it is
loaded (:func:`load_config`, :func:`from_mapping`), so a bad slice threshold fails before
training, not after it. Unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the file, the key path, what is wrong and what is allowed; a
typo never silently falls back to a default.

Objects built in code (tests, benchmarks) are not validated: they are not user input,
and tests build deliberately unreachable gates that way.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import annotated_types
import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from gourmetgram.constants import ARCHITECTURES, CONFIG_DIR
from gourmetgram.errors import ConfigError

T = TypeVar("T")

# Every config dataclass carries this: unknown keys are refused, never ignored.
STRICT = ConfigDict(extra="forbid")

INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")
PRECISIONS = ("fp32", "fp16")  # export.precision: the served graph's float type
DEVICES = ("auto", "cpu", "cuda")


def _one_of(*choices: str) -> AfterValidator:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return AfterValidator(check)


def _none_is_empty(value: Any) -> Any:
    return {} if value is None else value


# On a section field: `train:` with nothing under it (YAML null) means the section's defaults.
SECTION = BeforeValidator(_none_is_empty)


# Scalars are strict (no "5" -> 5, no true -> 1); a float accepts an int (YAML `100`).
Share = Annotated[StrictFloat, Field(ge=0, le=1)]  # accuracies, agreement, error rates: 0..1
Count = Annotated[StrictInt, Field(ge=0)]
AtLeastOne = Annotated[StrictInt, Field(ge=1)]
Positive = Annotated[StrictFloat, Field(gt=0)]
NonNegative = Annotated[StrictFloat, Field(ge=0)]
Percent = Annotated[StrictInt, Field(ge=1, le=99)]  # a canary traffic share that is neither none nor all
Name = Annotated[StrictStr, Field(min_length=1)]

DURATION = re.compile(r"\d+(ms|s|m|h|d)")


def check_duration(value: str) -> str:
    if not DURATION.fullmatch(value):
        raise ValueError("must be a Prometheus duration like 30s, 2m or 1h")
    return value


Duration = Annotated[StrictStr, AfterValidator(check_duration)]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    __pydantic_config__ = STRICT
    arch: Annotated[StrictStr, _one_of(*ARCHITECTURES)] = "mobilenet_v2"
    image_size: Annotated[StrictInt, Field(ge=32)] = 224
    width_mult: Positive = 1.0
    dropout: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.2
    pretrained_weights: Optional[StrictStr] = None


INIT_FROM = ("production", "scratch")  # train.init_from


@dataclasses.dataclass(frozen=True)
class FineTuneConfig:
    """Continual training (``train.init_from: production``): the retrain starts from the
    production model's weights, class head included, and runs these instead of ``train.epochs``
    and ``train.lr`` (the other training settings are shared)."""

    __pydantic_config__ = STRICT
    epochs: Count = 5
    lr: Positive = 2e-4
    # The labelled production photos' share of what each epoch sees (drawn with replacement):
    # a few dozen fresh labels among a thousand base images barely move a fine-tune otherwise.
    # 0: sample as the files fall (no oversampling).
    production_share: Share = 0.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    __pydantic_config__ = STRICT
    epochs: Count = 20
    batch_size: AtLeastOne = 32
    lr: Positive = 1e-3
    weight_decay: NonNegative = 1e-4
    patience: Count = 5  # early stopping: epochs without validation improvement
    seed: Count = 0
    device: Annotated[StrictStr, _one_of(*DEVICES)] = "auto"
    hflip: StrictBool = True
    crop_scale: Annotated[StrictFloat, Field(gt=0, le=1)] = 1.0  # random crop keeps this share of each side, at least
    num_workers: Count = 0
    # CPU threads for training; 0 = the cores idle when training starts (gourmetgram.training.cpu_threads):
    # on cores busy serving, a second thread that is often descheduled stalls every step.
    threads: Count = 0
    # production: a retrain fine-tunes the model the registry's production alias points at (a first
    # model, with no production alias yet, trains from scratch and says so); scratch: always from scratch.
    init_from: Annotated[StrictStr, _one_of(*INIT_FROM)] = "production"
    fine_tune: Annotated[FineTuneConfig, SECTION] = FineTuneConfig()


@dataclasses.dataclass(frozen=True)
class SliceConfig:
    __pydantic_config__ = STRICT
    name: Name
    path: Name  # image folder in class_XX layout, relative to the dataset root
    min_accuracy: Share
    expected_class: Optional[Count] = None  # set for a one-class slice (the course's indian_dessert -> 2)


@dataclasses.dataclass(frozen=True)
class FailureModeConfig:
    __pydantic_config__ = STRICT
    name: Name
    path: Name  # image folder (flat or class_XX), relative to the dataset root
    expected_class: Count
    min_accuracy: Share


@dataclasses.dataclass(frozen=True)
class OodSetConfig:
    """Photos no class fits (blank plates, noise, other symbols): the report gives the share the
    bundle's OOD threshold flags (gourmetgram/evaluation/calibration.py); not a gate."""
    __pydantic_config__ = STRICT
    name: Name
    path: Name  # image folder (flat or one level down), relative to the dataset root


@dataclasses.dataclass(frozen=True)
class TemplateConfig:
    __pydantic_config__ = STRICT
    path: Name  # folder with backgrounds/, extras/ and foods/class_XX/
    min_invariance: Share = 0.8  # share of compositions whose label survives bg/extra
    min_sensitivity: Share = 0.8  # share of food swaps that change the label
    min_accuracy: Optional[Share] = None  # share of compositions labelled as the food (the course's pass ratio)
    foods_per_class: AtLeastOne = 1
    seed: Count = 0


def _unique_names(evaluation: EvaluationConfig) -> EvaluationConfig:
    names = [s.name for s in evaluation.slices] + [f.name for f in evaluation.failure_modes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"slice and failure mode names must be unique; repeated: {', '.join(duplicates)}")
    ood = [o.name for o in evaluation.ood_sets]
    repeated = sorted({n for n in ood if ood.count(n) > 1})
    if repeated:
        raise ValueError(f"ood_sets names must be unique; repeated: {', '.join(repeated)}")
    return evaluation


@dataclasses.dataclass(frozen=True)
class DifferentialConfig:
    """The candidate against the model in ``stage`` on the same images, as paired figures
    (gourmetgram/evaluation/differential.py): on each of ``gated_sets`` with at least
    ``min_images`` images the candidate is rejected when it is worse than production by more
    than ``margin`` with one-sided ``confidence`` (non-inferiority); with ``require_improvement``,
    on the production set with at least ``improvement_min_images`` images it must also be
    better (exact McNemar test, one-sided, at the same confidence)."""

    __pydantic_config__ = STRICT
    enabled: StrictBool = True
    stage: Annotated[StrictStr, _one_of("staging", "production")] = "production"
    margin: Share = 0.02
    confidence: Annotated[StrictFloat, Field(ge=0.5, lt=1)] = 0.95
    gated_sets: tuple[Annotated[StrictStr, _one_of("original", "production")], ...] = ("original", "production")
    min_images: AtLeastOne = 5
    require_improvement: StrictBool = True
    improvement_min_images: AtLeastOne = 30


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    __pydantic_config__ = STRICT
    min_overall_accuracy: Share = 0.85
    min_per_class_accuracy: Share = 0.75
    slices: tuple[SliceConfig, ...] = ()
    failure_modes: tuple[FailureModeConfig, ...] = ()
    templates: Optional[TemplateConfig] = None
    ood_sets: tuple[OodSetConfig, ...] = ()
    batch_size: AtLeastOne = 64
    differential: Annotated[DifferentialConfig, SECTION] = DifferentialConfig()


def _batch_sizes_fit(export: ExportConfig) -> ExportConfig:
    too_big = [b for b in export.preferred_batch_sizes if b > export.max_batch_size]
    if too_big:
        raise ValueError(f"preferred_batch_sizes {too_big} exceed max_batch_size {export.max_batch_size}")
    if export.tensorrt_fp16 and export.instance_kind == "KIND_CPU":
        raise ValueError("tensorrt_fp16 needs GPU instances: set instance_kind to KIND_GPU or KIND_AUTO")
    return export


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    __pydantic_config__ = STRICT
    max_batch_size: AtLeastOne = 32
    preferred_batch_sizes: tuple[AtLeastOne, ...] = ()
    max_queue_delay_microseconds: Count = 1000
    instance_count: AtLeastOne = 1
    # configs/food11.yaml: KIND_AUTO (GPU in production, CPU in staging)
    instance_kind: Annotated[StrictStr, _one_of(*INSTANCE_KINDS)] = "KIND_CPU"
    opset: Annotated[StrictInt, Field(ge=7)] = 17
    parity_atol: Positive = 1e-3  # max |logit difference| between ONNX Runtime and PyTorch
    parity_min_agreement: Share = 1.0  # share of identical top-1 classes
    # INT8 variant (gourmetgram.quantize): the accuracy gate it must pass to be exported.
    int8_min_agreement: Share = 0.95  # share of evaluation images with the FP32 top-1 class
    # FP32 accuracy minus INT8 accuracy: rejected when larger than this with int8_confidence
    # (paired bootstrap on the evaluation images, gourmetgram.quantize)
    int8_max_accuracy_drop: Share = 0.01
    int8_confidence: Annotated[StrictFloat, Field(ge=0.5, lt=1)] = 0.95
    # preprocessed training images for static calibration (MinMax ranges: 128 clipped more often)
    int8_calibration_images: AtLeastOne = 256
    ort_intra_op_threads: Count = 0  # ONNX Runtime threads per Triton instance; 0 = cores / instances
    # FP16 variant (issue 14): the served graph in float16 (I/O stays FP32), checked against the
    # FP32 PyTorch model with these looser tolerances (float16 keeps ~3 significant digits).
    precision: Annotated[StrictStr, _one_of(*PRECISIONS)] = "fp32"
    fp16_parity_atol: Positive = 0.05  # max |logit difference| FP16 ONNX vs FP32 PyTorch
    fp16_min_agreement: Share = 0.99  # share of identical top-1 classes
    fp16_max_accuracy_drop: Share = 0.01  # on labelled parity images (the evaluation split)
    # Ask Triton's onnxruntime backend for TensorRT with FP16 kernels on GPU instances
    # (optimization.execution_accelerators); unmeasured here (no GPU).
    tensorrt_fp16: StrictBool = False
    # The OOD threshold on the energy score passes this share of the validation photos
    # (gourmetgram/evaluation/calibration.py; the bundle's calibration.json keeps it).
    ood_pass_rate: Annotated[StrictFloat, Field(ge=0.5, le=1.0)] = 0.95


@dataclasses.dataclass(frozen=True)
class RunConfig:
    __pydantic_config__ = STRICT
    model: Annotated[ModelConfig, SECTION] = ModelConfig()
    train: Annotated[TrainConfig, SECTION] = TrainConfig()
    evaluation: Annotated[EvaluationConfig, SECTION,
                          AfterValidator(_unique_names)] = EvaluationConfig()
    export: Annotated[ExportConfig, SECTION, AfterValidator(_batch_sizes_fit)] = ExportConfig()
    source: StrictStr = "<defaults>"


@dataclasses.dataclass(frozen=True)
class SLOConfig:
    """Service-level objectives a staging load test must meet (``configs/slo.yaml``)."""

    __pydantic_config__ = STRICT
    p95_ms: Positive
    max_error_rate: Share
    min_rps: NonNegative
    min_requests: AtLeastOne = 20
    source: StrictStr = "<defaults>"


# --- validation -------------------------------------------------------------------------

_ADAPTERS: dict[type, TypeAdapter] = {}  # building one costs milliseconds: once per class


def _adapter(cls: type) -> TypeAdapter:
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Validate ``data`` (a YAML mapping) into dataclass ``cls``, or a :class:`ConfigError`."""
    try:
        return _adapter(cls).validate_python({} if data is None else data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, cls, where)) from None


def _hint_at(cls: Any, loc: tuple) -> Any:
    """The type annotation at ``loc`` below ``cls`` (None when it cannot be followed)."""
    hint: Any = cls
    for part in loc:
        while typing.get_origin(hint) is Annotated:
            hint = typing.get_args(hint)[0]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and args:
            hint = args[0]
            while typing.get_origin(hint) is Annotated:
                hint = typing.get_args(hint)[0]
        if isinstance(part, int) and typing.get_origin(hint) is tuple:
            hint = typing.get_args(hint)[0]
        elif isinstance(part, str) and typing.get_origin(hint) is dict:  # a mapping's value
            hint = typing.get_args(hint)[1]
        elif isinstance(part, str) and dataclasses.is_dataclass(hint):
            hints = typing.get_type_hints(hint, include_extras=True)
            if part not in hints:
                return None
            hint = hints[part]
        else:
            return None
    return hint


def _bounds(hint: Any) -> str:
    """``in [0, 1]``, ``>= 1``... from the Field constraints on ``hint``."""
    lo: Any = None
    hi: Any = None
    lo_open = hi_open = False
    pending = [hint]
    while pending:
        h = pending.pop()
        if typing.get_origin(h) is Annotated:
            pending.append(typing.get_args(h)[0])
            for meta in typing.get_args(h)[1:]:
                for m in [meta, *getattr(meta, "metadata", [])]:
                    if isinstance(m, annotated_types.Ge):
                        lo, lo_open = m.ge, False
                    elif isinstance(m, annotated_types.Gt):
                        lo, lo_open = m.gt, True
                    elif isinstance(m, annotated_types.Le):
                        hi, hi_open = m.le, False
                    elif isinstance(m, annotated_types.Lt):
                        hi, hi_open = m.lt, True
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


_EXPECTED = {
    "int_type": "an integer", "int_from_float": "an integer", "float_type": "a number",
    "string_type": "a string", "bool_type": "true or false", "tuple_type": "a list", "list_type": "a list",
    "dataclass_type": "a mapping of keys", "dataclass_args_type": "a mapping of keys",
    "none_required": "empty",
}


def _path(loc: tuple) -> str:
    """('evaluation', 'slices', 0, 'min_accuracy') -> evaluation.slices[0].min_accuracy"""
    return ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc).replace(".[", "[")


def _problem(err: Any, cls: type) -> str:
    loc = tuple(err["loc"])
    path = _path(loc) or "(top level)"
    got = err.get("input")
    kind = err["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        owner = _hint_at(cls, loc[:-1])
        while typing.get_origin(owner) is Annotated:
            owner = typing.get_args(owner)[0]
        # `source` is filled in by the loader, not written by people: not offered.
        known = [f.name for f in dataclasses.fields(owner) if f.name != "source"] if dataclasses.is_dataclass(owner) else []
        where = _path(loc[:-1]) or "the top level"
        return f"unknown key {path!r}; allowed in {where}: {', '.join(known)}"
    if kind == "missing" or kind == "missing_argument":
        return f"{path} is required"
    if kind in _EXPECTED:
        return f"{path} must be {_EXPECTED[kind]}, got {got!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{path} must be {_bounds(_hint_at(cls, loc)) or err['msg']}, got {got!r}"
    if kind == "value_error":
        if isinstance(got, dict):  # a check across the keys of a section
            return f"{path}: {err['ctx']['error']}"
        return f"{path} {err['ctx']['error']}, got {got!r}"
    if kind == "string_too_short":
        return f"{path} must not be empty"
    return f"{path}: {err['msg']}, got {got!r}"


def describe(exc: ValidationError, cls: type, where: str, limit: int = 5) -> str:
    """One line per problem, each with the key path, what is wrong and what is allowed."""
    problems = [_problem(err, cls) for err in exc.errors()]
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{where}: " + "; ".join(problems[:limit]) + more


# --- files -------------------------------------------------------------------------------

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


def resolve_config_path(name_or_path: str | Path) -> Path:
    """``demo`` -> ``configs/demo.yaml``; a path is taken as it is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    return CONFIG_DIR / f"{name_or_path}.yaml"


def load_file(cls: type[T], name_or_path: str | Path, what: str = "config") -> T:
    """THE way a config file is loaded: ``configs/<name>.yaml`` or a path, read as a YAML
    mapping and validated into dataclass ``cls`` (its fields' types and constraints are the
    rules), its ``source`` set to the file; every problem is one :class:`ConfigError` (exit 2)."""
    path = resolve_config_path(name_or_path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"{what} {name_or_path!r} not found ({path}); built-in configs: {known}")
    data = read_yaml(path, what)
    data.setdefault("source", str(path))
    return from_mapping(cls, data, str(path))


def load_config(name_or_path: str | Path) -> RunConfig:
    """A run config (``demo``, ``food11`` or a path)."""
    return load_file(RunConfig, name_or_path, "config")


def override(cfg: T, section: str, **changes: Any) -> T:
    """A copy of a loaded config (RunConfig, RolloutConfig) with fields of one section
    replaced (pipeline parameters, command-line options), validated like the file was."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return cfg
    data: dict[str, Any] = dataclasses.asdict(cfg)  # type: ignore[call-overload]
    if not isinstance(data.get(section), dict):
        raise ConfigError(f"no config section {section!r}")
    data[section] = {**data[section], **changes}
    return from_mapping(type(cfg), data, f"{data.get('source', '<config>')} with {section} overrides")


def load_slo(name_or_path: str | Path = "slo") -> SLOConfig:
    return load_file(SLOConfig, name_or_path, "SLO config")

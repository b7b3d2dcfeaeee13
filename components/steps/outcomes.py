"""What the steps return, as types: the one description of each step's result.

A step function returns one of these (or a core result type: :class:`~gourmetgram.training.TrainResult`,
:class:`~gourmetgram.evaluation.suite.EvaluationResult`, :class:`~gourmetgram.export.ExportResult`,
:class:`~gourmetgram.loadtest.LoadTestSummary`); its KFP component maps it to outputs and artifact
metadata at the boundary, and :meth:`to_json`/:meth:`from_json` are the only place an outcome
becomes text (a KFP string parameter) and back (the CLI's summary).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Literal, TypeVar

from gourmetgram.errors import BadInput, CheckFailed, DependencyUnavailable, GourmetGramError

OutcomeT = TypeVar("OutcomeT", bound="_Outcome")


class _Outcome:
    """JSON at the KFP boundary: the dataclass's fields, nothing else."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls: type[OutcomeT], text: str) -> OutcomeT:
        doc = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in doc.items() if k in names})


def finite(doc: dict[str, Any]) -> dict[str, Any]:
    """NaN/inf -> None: artifact metadata is a protobuf Struct on the cluster (no NaN in JSON)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in doc.items()}


@dataclasses.dataclass(frozen=True)
class IngestOutcome(_Outcome):
    """The validated dataset: where it came from, its fingerprint, classes and counts."""

    source: str
    fingerprint: str
    class_names: list[str]
    counts: dict[str, list[int]]  # split -> images per class
    images: dict[str, int]  # split -> images
    summary: str
    production: dict[str, Any] | None = None  # merged production data (provenance, no sample ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def metadata(self) -> dict[str, Any]:
        """The dataset artifact's metadata (what later steps and the KFP UI read)."""
        return {**self.to_dict(), "num_classes": self.num_classes}


@dataclasses.dataclass(frozen=True)
class QuantizeOutcome(_Outcome):
    """The bundle to serve: INT8 when it passed its gate and is faster, else the exported one
    (FP32, or FP16 with ``export.precision: fp16``)."""

    precision: Literal["fp32", "fp16", "int8"]
    reason: str
    size_bytes: int
    report: dict[str, Any] | None = None  # QuantizationReport.to_dict(), finite numbers only

    @property
    def quantized(self) -> bool:
        return self.precision == "int8"


@dataclasses.dataclass(frozen=True)
class DetectorOutcome(_Outcome):
    """The drift detector built into the served bundle (``detector/detector.json``)."""

    folder: str
    settings: dict[str, Any]

    def metadata(self) -> dict[str, int | float | str]:
        """Its scalar settings, for the served bundle's metadata."""
        return {k: v for k, v in self.settings.items() if isinstance(v, (int, float, str))}


@dataclasses.dataclass(frozen=True)
class RegistrationOutcome(_Outcome):
    """The training run's verdict: registered (version, alias, where the bundle is) or rejected
    (why). On a rejection the registration fields are empty ("" / 0)."""

    verdict: Literal["registered", "rejected"]
    reasons: list[str] = dataclasses.field(default_factory=list)
    registered_model: str = ""
    version: int = 0
    alias: str = ""
    bundle_uri: str = ""  # what the registry's tag and a storageUri name
    triton_repo: str = ""
    pipeline_artifact: str = ""  # KFP's own artifact URI: recorded, never served from
    size_bytes: int = 0
    parity: dict[str, Any] = dataclasses.field(default_factory=dict)
    precision: str = "fp32"

    @property
    def registered(self) -> bool:
        return self.verdict == "registered"


@dataclasses.dataclass(frozen=True)
class CanaryOutcome(_Outcome):
    """The staging gate's verdict: the canary started (alias, patched InferenceService) or blocked."""

    verdict: Literal["canary", "blocked"]
    version: int
    registered_model: str
    canary_percent: int = 0
    alias: str = ""
    inferenceservice: str = ""  # namespace/name patched, "" when the cluster was not touched
    reasons: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class StepError(_Outcome):
    """A step's known error (its message and exit status), recorded for the local runner."""

    message: str
    exit_code: int

    def error(self) -> GourmetGramError:
        """The same error again, by cause (2 bad input, 3 a dependency unavailable, else a check)."""
        cause = {BadInput.exit_code: BadInput, DependencyUnavailable.exit_code: DependencyUnavailable}
        return cause.get(self.exit_code, CheckFailed)(self.message)

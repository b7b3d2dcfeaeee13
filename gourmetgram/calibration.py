"""What a served model knows about its own confidence: the bundle's ``calibration.json``.

Written at export (:func:`gourmetgram.evaluation.calibration.fit_calibration`, on the
validation split), read by the transformer on every prediction and by the in-process model
(evaluation, parity checks), so both turn logits into the same answer:

* **temperature scaling** (Guo et al., ICML 2017): probabilities are ``softmax(logits / T)``
  with one scalar ``T`` fitted by negative log-likelihood; the top-1 class never changes;
* **energy score** (Liu et al., NeurIPS 2020): ``E(x) = -logsumexp(logits)`` on the raw logits
  (T = 1, as in the paper's main results); lower is more in-distribution. ``in_distribution``
  is ``E(x) <= ood_threshold``, the threshold that ``ood_pass_rate`` of the validation photos pass;
* **ATC thresholds** (Garg et al., ICLR 2022): per estimation method, the threshold above which
  the share of validation photos equals the validation accuracy; ``class_prior`` is the
  validation split's class mix, which the prior-capped methods use (no class can be predicted
  right more often than it occurs). The label-free accuracy estimate
  (:mod:`gourmetgram.estimation`) is the share of recent photos above the threshold.

Calibration is measured by the expected calibration error (:func:`expected_calibration_error`,
15 equal-width bins of top-1 confidence, ECE = sum over bins of (n_bin / N) * |accuracy_bin -
confidence_bin|), offline on the evaluation split and by the capture sink on labelled
production samples.

NumPy only (the transformer's and the capture sink's images have no SciPy and no torch); the
fitting lives in :mod:`gourmetgram.evaluation.calibration`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gourmetgram.errors import BadInput

# The scores ATC can threshold (gourmetgram.estimation): the calibrated top-1 probability, and
# the negative energy (so that "higher = more confident" holds for both).
SCORE_CONFIDENCE = "confidence"
SCORE_NEG_ENERGY = "neg_energy"
SCORES = (SCORE_CONFIDENCE, SCORE_NEG_ENERGY)
ECE_BINS = 15


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, numerically stable (float64)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def energy_score(logits: np.ndarray) -> np.ndarray:
    """``-logsumexp(logits)`` per row (Liu et al. 2020, T = 1): lower = more in-distribution."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=-1)
    return -(top + np.log(np.exp(z - top[..., None]).sum(axis=-1)))


def calibrated_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / T)`` per row (float64)."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature))


@dataclasses.dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    confidence: float | None  # mean top-1 confidence in the bin
    accuracy: float | None


def reliability_table(confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray,
                      bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """Per equal-width confidence bin: count, mean confidence, accuracy (empty bins: None)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    index = np.clip((confidence * bins).astype(int), 0, bins - 1)  # confidence 1.0 in the last bin
    table = []
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        table.append(ReliabilityBin(b / bins, (b + 1) / bins, n,
                                    float(confidence[inside].mean()) if n else None,
                                    float(correct[inside].mean()) if n else None))
    return table


def expected_calibration_error(confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width bins (biased upwards on few samples: report n with it)."""
    n = len(confidence)
    if n == 0:
        raise BadInput("the expected calibration error needs at least one prediction")
    return float(sum(b.count / n * abs(b.accuracy - b.confidence)  # type: ignore[operator]
                     for b in reliability_table(confidence, correct, bins) if b.count))


@dataclasses.dataclass(frozen=True)
class Scored:
    """A batch of logits turned into what the answer and the monitoring need."""

    probabilities: np.ndarray  # (N, C) calibrated
    confidence: np.ndarray  # (N,) calibrated top-1 probability
    energy: np.ndarray  # (N,) energy score of the raw logits
    in_distribution: np.ndarray  # (N,) bool

    @property
    def predicted(self) -> np.ndarray:
        """(N,) top-1 class index (the same under any temperature)."""
        return self.probabilities.argmax(axis=1)

    def score(self, name: str) -> np.ndarray:
        """The per-photo score ATC thresholds (higher = more confident)."""
        if name == SCORE_CONFIDENCE:
            return self.confidence
        if name == SCORE_NEG_ENERGY:
            return -self.energy
        raise BadInput(f"unknown score {name!r}; choose one of {', '.join(SCORES)}")


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The bundle's ``calibration.json``: temperature, OOD threshold, ATC thresholds.

    ``atc_thresholds`` maps an estimation method (:data:`gourmetgram.estimation.METHODS`) to
    its threshold; ``class_prior`` is the validation split's class mix; ``class_caps`` maps a
    capped method to its per-class caps (a bundle exported before there were caps: the prior);
    the figures
    (``validation_accuracy``, ``ece_before``/``ece_after`` on validation, ``n_validation``)
    say what they were fitted on. ``Calibration.identity()`` is what a bundle without the
    file is served with: T = 1, every photo in distribution, no ATC.
    """

    temperature: float = 1.0
    ood_threshold: float = math.inf
    ood_pass_rate: float = 1.0
    atc_thresholds: dict[str, float] = dataclasses.field(default_factory=dict)
    class_prior: tuple[float, ...] = ()
    class_caps: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    validation_accuracy: float | None = None
    n_validation: int = 0
    ece_before: float | None = None
    ece_after: float | None = None
    fitted_on: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise BadInput(f"calibration temperature must be a positive number, got {self.temperature!r}")
        if math.isnan(self.ood_threshold):
            raise BadInput("calibration ood_threshold must be a number (inf: no threshold)")
        if self.class_prior and (min(self.class_prior) < 0 or abs(sum(self.class_prior) - 1) > 1e-6):
            raise BadInput("calibration class_prior must be non-negative shares that sum to 1")
        for method, caps in self.class_caps.items():
            if self.class_prior and len(caps) != len(self.class_prior) or any(not 0 <= c <= 1 for c in caps):
                raise BadInput(f"calibration class_caps[{method!r}] must hold one share (0..1) per class")

    def caps(self, method: str) -> tuple[float, ...]:
        """A capped method's per-class caps: fitted at export, else (older bundles) the prior."""
        return self.class_caps.get(method) or self.class_prior

    @classmethod
    def identity(cls) -> "Calibration":
        return cls(fitted_on="none (the bundle has no calibration.json)")

    @property
    def fitted(self) -> bool:
        return self.validation_accuracy is not None

    def score(self, logits: np.ndarray) -> Scored:
        """Calibrated probabilities, confidence, energy and the OOD flag for a (N, C) batch."""
        logits = np.asarray(logits, dtype=np.float64)
        if logits.ndim != 2:
            raise BadInput(f"expected (N, classes) logits, got shape {list(logits.shape)}")
        probs = calibrated_probabilities(logits, self.temperature)
        energy = energy_score(logits)
        return Scored(probs, probs.max(axis=1), energy, energy <= self.ood_threshold)

    # -- the file ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ood_threshold"] = None if math.isinf(self.ood_threshold) else self.ood_threshold
        d["class_prior"] = list(self.class_prior)
        d["class_caps"] = {k: list(v) for k, v in self.class_caps.items()}
        return d

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = "calibration") -> "Calibration":
        if not isinstance(doc, dict):
            raise BadInput(f"{where} must hold a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(doc) - known
        if unknown:
            raise BadInput(f"{where} has unknown keys {sorted(unknown)}")
        values = dict(doc)
        if values.get("ood_threshold") is None:
            values["ood_threshold"] = math.inf
        try:
            values["atc_thresholds"] = {str(k): float(v) for k, v in (values.get("atc_thresholds") or {}).items()}
            values["class_prior"] = tuple(float(v) for v in (values.get("class_prior") or ()))
            values["class_caps"] = {str(k): tuple(float(c) for c in v)
                                    for k, v in (values.get("class_caps") or {}).items()}
            for key in ("temperature", "ood_threshold", "ood_pass_rate"):
                if key in values:
                    values[key] = float(values[key])
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise BadInput(f"{where} is not a valid calibration: {exc}") from None

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except OSError as exc:
            raise BadInput(f"cannot read {path}: {exc}") from None
        except ValueError as exc:
            raise BadInput(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(doc, str(path))

"""Accuracy estimated without labels, from what a served model says about recent photos.

Methods (each with a 95% interval for the sampling error of the window; a method's own bias
under a shift is what ``benchmarks/accuracy_estimation.py`` measures against the true
accuracy, it is not in the interval):

* ``atc``: average thresholded confidence (Garg et al., ICLR 2022): the share of photos whose
  calibrated top-1 confidence is above the bundle's threshold (fitted on validation so that
  the share equals the validation accuracy). Wilson interval.
* ``atc_prior``: ``atc`` counted per predicted class and capped: however confident, a model
  cannot be right about class c more often than photos of class c arrive (the class's share of
  the validation split), nor more often than validation showed it passing for c (a model that
  over-predicts a class in distribution does so on validation too: the cap is the larger of the
  two, fitted at export, so on validation the estimate is plain ATC's). When a shift makes the
  model answer one class for photos of every class (the demo's night shots, read nearly all as
  one digit with high confidence), the cap is what brings the estimate down. The hard-assignment
  form of COTT (Lu et al., NeurIPS 2023: the softmax outputs transported onto the source label
  distribution, the costs above a threshold counted as errors). It assumes the mix of classes
  users photograph stays near the validation mix (label drift, which the drift detector reports,
  breaks it). Interval: the Wilson interval of the share that passed, moved by what the cap took
  off.
* ``atc_energy``: the same as ``atc`` with the negative energy score (the OOD score) as the score.
* ``atc_energy_prior``: ``atc_energy`` capped the same way.
* ``confidence``: the mean calibrated top-1 confidence (the idea behind NannyML's CBPE: with
  calibrated probabilities the expected accuracy is the mean top-1 probability). Normal
  interval of a mean.

NumPy only: the transformer estimates over its own rolling window (:class:`RollingEstimate`).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from typing import Callable, Iterable

import numpy as np

from gourmetgram.calibration import SCORE_CONFIDENCE, SCORE_NEG_ENERGY, Calibration, Scored
from gourmetgram.errors import BadInput

ATC = "atc"
ATC_PRIOR = "atc_prior"
ATC_ENERGY = "atc_energy"
ATC_ENERGY_PRIOR = "atc_energy_prior"
CONFIDENCE = "confidence"
# The method the alert rule reads and the canary analysis may use: the one that held under the
# night-shot shift on every seed (benchmarks/accuracy_estimation.py, docs/label-free-monitoring.md).
PRIMARY_METHOD = ATC_PRIOR
Z_95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclasses.dataclass(frozen=True)
class Method:
    """How a method turns a window into a number: the share above a threshold of ``score``
    (capped per predicted class at the calibration's caps when ``capped``), or the mean confidence."""

    name: str
    score: str | None  # None: the mean calibrated confidence
    capped: bool = False


METHODS: dict[str, Method] = {
    ATC: Method(ATC, SCORE_CONFIDENCE),
    ATC_PRIOR: Method(ATC_PRIOR, SCORE_CONFIDENCE, capped=True),
    ATC_ENERGY: Method(ATC_ENERGY, SCORE_NEG_ENERGY),
    ATC_ENERGY_PRIOR: Method(ATC_ENERGY_PRIOR, SCORE_NEG_ENERGY, capped=True),
    CONFIDENCE: Method(CONFIDENCE, None),
}
THRESHOLD_METHODS = tuple(name for name, m in METHODS.items() if m.score is not None)


@dataclasses.dataclass(frozen=True)
class Estimate:
    method: str
    value: float
    lower: float
    upper: float
    n: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Window:
    """Recent served photos: calibrated confidence, energy score, predicted class."""

    confidence: np.ndarray
    energy: np.ndarray
    predicted: np.ndarray

    @classmethod
    def of(cls, scored: Scored) -> "Window":
        return cls(scored.confidence, scored.energy, scored.predicted)

    def __len__(self) -> int:
        return int(len(self.confidence))

    def score(self, name: str) -> np.ndarray:
        if name == SCORE_CONFIDENCE:
            return np.asarray(self.confidence, dtype=np.float64)
        if name == SCORE_NEG_ENERGY:
            return -np.asarray(self.energy, dtype=np.float64)
        raise BadInput(f"unknown score {name!r}")


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial share (the tests compare it with SciPy's)."""
    if n <= 0:
        raise BadInput("an interval needs at least one observation")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def capped_share(passed: np.ndarray, predicted: np.ndarray, caps: np.ndarray) -> float:
    """sum over classes of min(share of photos predicted c that passed, cap of c)."""
    n = len(passed)
    counts = np.bincount(np.asarray(predicted)[np.asarray(passed, dtype=bool)], minlength=len(caps))
    return float(np.minimum(counts[:len(caps)] / n, caps).sum()) if n else 0.0


def estimate(method: str, window: Window, calibration: Calibration) -> Estimate:
    """One method's estimate over a window of served photos."""
    spec = METHODS.get(method)
    if spec is None:
        raise BadInput(f"unknown estimation method {method!r}; choose one of {', '.join(METHODS)}")
    n = len(window)
    if n == 0:
        raise BadInput("an estimate needs at least one prediction")
    if spec.score is None:
        values = np.asarray(window.confidence, dtype=np.float64)
        mean = float(values.mean())
        half = Z_95 * float(values.std(ddof=1)) / math.sqrt(n) if n > 1 else 1.0
        return Estimate(method, mean, max(0.0, mean - half), min(1.0, mean + half), n)
    threshold = calibration.atc_thresholds.get(method)
    if threshold is None:
        raise BadInput(f"the bundle's calibration has no threshold for {method!r}; re-export it")
    passed = window.score(spec.score) > threshold
    k = int(passed.sum())
    lower, upper = wilson_interval(k, n)
    if not spec.capped:
        return Estimate(method, k / n, lower, upper, n)
    caps = np.asarray(calibration.caps(method), dtype=np.float64)
    if not len(caps):
        raise BadInput(f"the bundle's calibration has no class caps for {method!r}; re-export it")
    value = capped_share(passed, np.asarray(window.predicted), caps)
    cut = k / n - value  # what the cap took off the share that passed
    return Estimate(method, value, max(0.0, lower - cut), max(0.0, min(1.0, upper - cut)), n)


def available_methods(calibration: Calibration) -> tuple[str, ...]:
    """The methods a bundle's calibration supports (uncalibrated bundles: the mean confidence)."""
    return tuple(name for name, m in METHODS.items()
                 if m.score is None or (name in calibration.atc_thresholds
                                        and (not m.capped or calibration.caps(name))))


def estimate_all(window: Window, calibration: Calibration,
                 methods: Iterable[str] | None = None) -> dict[str, Estimate]:
    """Every available method over the same window ({} for an empty window)."""
    if not len(window):
        return {}
    return {m: estimate(m, window, calibration)
            for m in (methods if methods is not None else available_methods(calibration))}


class RollingEstimate:
    """The last ``window`` served photos (at most ``max_age_s`` old), estimated on demand.

    Thread-safe: the transformer records from its event loop, the metrics scrape reads
    from another thread. ``clock`` is injectable for tests.
    """

    def __init__(self, calibration: Calibration, window: int = 500, max_age_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window < 1 or max_age_s <= 0:
            raise BadInput("the estimate's window must hold at least one photo and a positive age")
        self.calibration = calibration
        self.max_age_s = max_age_s
        self.clock = clock
        self._items: collections.deque[tuple[float, float, float, int]] = collections.deque(maxlen=window)
        self._lock = threading.Lock()

    def record(self, scored: Scored) -> None:
        now = self.clock()
        rows = [(now, float(c), float(e), int(p))
                for c, e, p in zip(scored.confidence, scored.energy, scored.predicted)]
        with self._lock:
            self._items.extend(rows)

    def window(self) -> Window:
        oldest = self.clock() - self.max_age_s
        with self._lock:
            while self._items and self._items[0][0] < oldest:
                self._items.popleft()
            rows = list(self._items)
        if not rows:
            return Window(np.empty(0), np.empty(0), np.empty(0, dtype=np.int64))
        _, confidence, energy, predicted = zip(*rows)
        return Window(np.asarray(confidence), np.asarray(energy), np.asarray(predicted, dtype=np.int64))

    def estimates(self) -> dict[str, Estimate]:
        return estimate_all(self.window(), self.calibration)

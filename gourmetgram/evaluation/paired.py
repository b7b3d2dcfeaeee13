"""Paired statistics of two classifiers on the same images (the differential gate's figures).

Two models predicting the same ``n`` images give, per image, a pair (candidate right?,
production right?). Only the discordant pairs carry information about which one is better:
``gains`` (the candidate right where production is wrong) and ``losses`` (the reverse). The
accuracy difference is ``(gains - losses) / n``.

* **Exact McNemar test**: under "equally accurate" each discordant pair is a fair coin, so the
  gains are Binomial(gains + losses, 1/2) (scipy's ``binomtest``; no normal approximation, so it
  holds for the handful of pairs a small production set gives).
* **Paired bootstrap interval** of the difference (scipy's ``bootstrap`` with ``paired=True``,
  BCa): the images are resampled, each keeping its pair. The resampling is seeded, so the
  interval, like the McNemar p-value, is a function of ``(n, gains, losses)`` alone.
* **Power** of the one-sided exact McNemar test for a design effect (the chance the candidate
  is right where production is wrong, and the reverse), exact over the trinomial: how many
  images the production evaluation set needs before the gate can ask for an improvement.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0


@dataclasses.dataclass(frozen=True)
class PairedCounts:
    """The 2x2 table of (candidate right?, production right?) over ``n`` images."""

    both: int  # both right
    gains: int  # the candidate right, production wrong
    losses: int  # the candidate wrong, production right
    neither: int  # both wrong

    @classmethod
    def from_correct(cls, candidate: Sequence[bool], production: Sequence[bool]) -> "PairedCounts":
        c, p = np.asarray(candidate, dtype=bool), np.asarray(production, dtype=bool)
        if c.shape != p.shape:
            raise ValueError(f"paired figures need the same images: {c.shape} vs {p.shape}")
        return cls(int(np.sum(c & p)), int(np.sum(c & ~p)), int(np.sum(~c & p)), int(np.sum(~c & ~p)))

    @classmethod
    def from_predictions(cls, truth: Sequence[int], candidate: Sequence[int],
                         production: Sequence[int]) -> "PairedCounts":
        t = np.asarray(truth)
        return cls.from_correct(np.asarray(candidate) == t, np.asarray(production) == t)

    @property
    def n(self) -> int:
        return self.both + self.gains + self.losses + self.neither

    @property
    def discordant(self) -> int:
        return self.gains + self.losses

    @property
    def candidate_accuracy(self) -> float:
        return (self.both + self.gains) / self.n

    @property
    def production_accuracy(self) -> float:
        return (self.both + self.losses) / self.n

    @property
    def difference(self) -> float:
        """Candidate accuracy minus production accuracy."""
        return (self.gains - self.losses) / self.n

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-image correctness (candidate, production) in a fixed order (the table's cells)."""
        cand = np.repeat([1, 1, 0, 0], [self.both, self.gains, self.losses, self.neither])
        prod = np.repeat([1, 0, 1, 0], [self.both, self.gains, self.losses, self.neither])
        return cand.astype(float), prod.astype(float)


def mcnemar_p(counts: PairedCounts, alternative: str = "two-sided") -> float:
    """Exact McNemar p-value. ``greater``: H1 the candidate is more accurate; ``less``: less
    accurate; ``two-sided``: either. 1.0 without discordant pairs (nothing tells them apart)."""
    from scipy.stats import binomtest

    if counts.discordant == 0:
        return 1.0
    return float(binomtest(counts.gains, counts.discordant, 0.5, alternative=alternative).pvalue)


def _mean_difference(candidate: np.ndarray, production: np.ndarray, axis: int = -1) -> np.ndarray:
    return candidate.mean(axis=axis) - production.mean(axis=axis)


@functools.lru_cache(maxsize=256)
def difference_interval(counts: PairedCounts, confidence_level: float,
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Two-sided paired bootstrap (BCa) interval of the accuracy difference at ``confidence_level``.

    Its bounds are one-sided bounds at ``(1 + confidence_level) / 2``. When every image gives
    the same difference (no discordant pair, or only one kind) resampling cannot vary it: the
    interval is that single value."""
    from scipy.stats import bootstrap

    if counts.n == 0:
        raise ValueError("no images to compare")
    if counts.discordant == 0 or counts.gains == counts.n or counts.losses == counts.n:
        return counts.difference, counts.difference
    result = bootstrap(counts.vectors(), _mean_difference, paired=True, vectorized=True,
                       confidence_level=confidence_level, n_resamples=resamples, method="BCa",
                       rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa undefined (e.g. one discordant pair): percentile
        result = bootstrap(counts.vectors(), _mean_difference, paired=True, vectorized=True,
                           confidence_level=confidence_level, n_resamples=resamples, method="percentile",
                           rng=np.random.default_rng(seed))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return low, high


@functools.lru_cache(maxsize=8192)
def _critical_gains(discordant: int, alpha: float) -> int:
    """The fewest gains among ``discordant`` pairs at which the one-sided exact McNemar test
    rejects "no better" at ``alpha`` (``discordant + 1`` when no count would)."""
    from scipy.stats import binom

    k = np.arange(discordant + 1)
    tail = binom.sf(k - 1, discordant, 0.5)  # P(gains >= k) under H0
    hits = np.nonzero(tail <= alpha)[0]
    return int(hits[0]) if hits.size else discordant + 1


def improvement_power(n: int, gain: float, loss: float, alpha: float) -> float:
    """Power of the one-sided exact McNemar test on ``n`` images when the candidate is right
    where production is wrong with probability ``gain`` and the reverse with ``loss``:
    sum over the discordant count m ~ Binomial(n, gain + loss) of P(gains >= critical(m)),
    gains | m ~ Binomial(m, gain / (gain + loss))."""
    from scipy.stats import binom

    if not 0 < gain + loss <= 1 or gain < 0 or loss < 0:
        raise ValueError("gain and loss must be >= 0 with 0 < gain + loss <= 1")
    share = gain / (gain + loss)
    m = np.arange(n + 1)
    critical = np.array([_critical_gains(int(k), alpha) for k in m])
    return float(np.sum(binom.pmf(m, n, gain + loss) * binom.sf(critical - 1, m, share)))


def images_for_power(gain: float, loss: float, alpha: float, power: float, limit: int = 300) -> int:
    """The fewest images from which on the one-sided exact McNemar test reaches ``power`` on
    every larger set up to ``limit`` too (an exact test's power saw-tooths with n)."""
    powers = [improvement_power(n, gain, loss, alpha) for n in range(limit + 1)]
    if powers[limit] < power:
        raise ValueError(f"power {power} needs more than {limit} images")
    n = limit
    while n > 0 and powers[n - 1] >= power:
        n -= 1
    return n

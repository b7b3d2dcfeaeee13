"""The paired statistics behind the differential gate, against values worked out by hand and
against reference computations (a normal-theory interval, a Monte Carlo power estimate)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from gourmetgram.evaluation.paired import (
    PairedCounts,
    difference_interval,
    images_for_power,
    improvement_power,
    mcnemar_p,
)


def test_the_table_from_per_image_figures():
    truth = [0, 1, 2, 3, 4, 5]
    candidate = [0, 1, 2, 0, 4, 0]  # right on 0, 1, 2, 4
    production = [0, 1, 0, 3, 0, 0]  # right on 0, 1, 3
    c = PairedCounts.from_predictions(truth, candidate, production)
    assert (c.both, c.gains, c.losses, c.neither) == (2, 2, 1, 1)
    assert c.n == 6 and c.discordant == 3
    assert c.candidate_accuracy == pytest.approx(4 / 6) and c.production_accuracy == pytest.approx(3 / 6)
    assert c.difference == pytest.approx(1 / 6)
    cand, prod = c.vectors()
    assert cand.mean() - prod.mean() == pytest.approx(c.difference) and len(cand) == 6
    with pytest.raises(ValueError, match="same images"):
        PairedCounts.from_correct([True], [True, False])


def test_exact_mcnemar_by_hand():
    # 1 gain, 6 losses: under H0 the gains are Binomial(7, 1/2).
    c = PairedCounts(both=50, gains=1, losses=6, neither=3)
    assert mcnemar_p(c, "less") == pytest.approx((1 + 7) / 128)  # P(X <= 1)
    assert mcnemar_p(c, "greater") == pytest.approx(127 / 128)  # P(X >= 1)
    assert mcnemar_p(c) == pytest.approx(2 * 8 / 128)  # two-sided: both tails
    # 8 gains, no loss: one-sided p = 1/2^8
    assert mcnemar_p(PairedCounts(10, 8, 0, 2), "greater") == pytest.approx(1 / 256)
    # agreement on every image: nothing tells them apart
    assert mcnemar_p(PairedCounts(10, 0, 0, 5)) == 1.0
    # the concordant cells do not matter, only the discordant ones
    assert mcnemar_p(PairedCounts(0, 3, 9, 0)) == mcnemar_p(PairedCounts(500, 3, 9, 80))


def test_bootstrap_interval_matches_the_normal_theory_interval_on_a_large_set():
    """For n = 1000, 60 gains and 30 losses the paired difference is 0.03 with standard error
    sqrt((b + c) - (b - c)^2 / n) / n; the 90% interval is +-1.645 of it."""
    c = PairedCounts(both=800, gains=60, losses=30, neither=110)
    low, high = difference_interval(c, 0.90)
    se = math.sqrt((60 + 30) - (60 - 30) ** 2 / 1000) / 1000
    z = 1.6448536269514722
    assert low == pytest.approx(0.03 - z * se, abs=0.002)
    assert high == pytest.approx(0.03 + z * se, abs=0.002)
    assert difference_interval(c, 0.90) == (low, high)  # seeded: a function of the counts


def test_bootstrap_interval_matches_a_plain_resampling_of_the_images():
    """A small, lopsided set, against a percentile bootstrap written out with numpy: the BCa
    bounds sit near the percentile ones (within the resampling's own noise)."""
    c = PairedCounts(both=20, gains=9, losses=2, neither=9)
    cand, prod = c.vectors()
    rng = np.random.default_rng(1)
    idx = rng.integers(0, c.n, size=(40000, c.n))
    diffs = cand[idx].mean(1) - prod[idx].mean(1)
    reference = np.quantile(diffs, [0.05, 0.95])
    low, high = difference_interval(c, 0.90)
    assert low <= c.difference <= high
    assert low == pytest.approx(reference[0], abs=0.04) and high == pytest.approx(reference[1], abs=0.04)


def test_degenerate_tables_give_the_single_possible_difference():
    assert difference_interval(PairedCounts(30, 0, 0, 10), 0.9) == (0.0, 0.0)
    assert difference_interval(PairedCounts(0, 5, 0, 0), 0.9) == (1.0, 1.0)
    low, high = difference_interval(PairedCounts(0, 1, 0, 10), 0.9)  # one gain among 11
    assert 0.0 <= low <= high <= 1.0 and math.isfinite(low + high)
    with pytest.raises(ValueError):
        difference_interval(PairedCounts(0, 0, 0, 0), 0.9)


def test_power_by_hand_at_the_edges():
    # one image, certainly a gain: 1 gain of 1 gives p = 1/2, never significant at 5%
    assert improvement_power(1, 1.0, 0.0, 0.05) == 0.0
    # five images, all gains: p = 1/32 < 0.05, always significant
    assert improvement_power(5, 1.0, 0.0, 0.05) == pytest.approx(1.0)
    # four images, all gains: p = 1/16 > 0.05
    assert improvement_power(4, 1.0, 0.0, 0.05) == 0.0


def test_power_matches_a_monte_carlo_of_the_test_itself():
    """Tables drawn from the design effect, each tested with scipy's binomtest directly."""
    n, gain, loss, alpha = 30, 0.35, 0.05, 0.05
    rng = np.random.default_rng(0)
    tables = rng.multinomial(n, [gain, loss, 1 - gain - loss], size=3000)
    hits = [binomtest(int(g), int(g + lo), 0.5, alternative="greater").pvalue < alpha if g + lo else False
            for g, lo, _ in tables]
    assert improvement_power(n, gain, loss, alpha) == pytest.approx(np.mean(hits), abs=0.03)


def test_images_for_power_is_where_the_power_stays_above_the_target():
    n = images_for_power(0.35, 0.05, 0.05, 0.8)
    assert improvement_power(n, 0.35, 0.05, 0.05) >= 0.8 > improvement_power(n - 1, 0.35, 0.05, 0.05)
    assert all(improvement_power(m, 0.35, 0.05, 0.05) >= 0.8 for m in range(n, n + 15))
    assert images_for_power(0.5, 0.02, 0.05, 0.8) < n  # a larger effect needs fewer images
    with pytest.raises(ValueError):
        improvement_power(10, 0.0, 0.0, 0.05)

"""The always-valid statistics of the canary analysis (gourmetgram/rollout/sequential.py):
values computed by hand and by a reference optimiser, the confidence sequence as the inversion
of the e-values, validity under repeated looks (seeded simulations), and the staged rollout that
acts on the verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from gourmetgram.rollout import sequential as sq
from gourmetgram.rollout.analysis import HOLD, PROMOTE, RAISE, ROLLBACK, StagedRollout, run_auto
from gourmetgram.rollout.config import RolloutConfig, Thresholds
from gourmetgram.rollout.decision import CLASS_MIX, ERROR_RATE, FEEDBACK_ACCURACY, MEAN_CONFIDENCE, decide
from gourmetgram.rollout.prometheus import Sample
from gourmetgram.rollout.queries import FeedbackFigures, Figures
from gourmetgram.rollout.state import RolloutState


# -- by hand ------------------------------------------------------------------------------------
def test_the_mixture_is_the_krichevsky_trofimov_probability():
    # the sequence 1, 0 under Beta(1/2, 1/2): P(1) = 1/2, P(0 | 1) = (0 + 1/2) / (1 + 1) = 1/4
    assert math.exp(float(sq.log_mixture(1, 2))) == pytest.approx(1 / 8)
    # 1, 1: 1/2 * (1 + 1/2) / 2 = 3/8
    assert math.exp(float(sq.log_mixture(2, 2))) == pytest.approx(3 / 8)
    assert float(sq.log_mixture(0, 0)) == pytest.approx(0.0)


def test_e_values_by_hand():
    # canary 2 bad of 2, stable 0 of 2: M = (3/8)^2 = 9/64;
    # H0 "no worse" (p_c <= p_s): sup p_c^2 (1 - p_s)^2 is at p_c = p_s = 1/2: 1/16 -> E = 9/4
    two = sq.Comparison(2, 2, 0, 2)
    assert two.e_worse() == pytest.approx(9 / 4)
    # H0 "worse by at most 0.5": on p_c = p_s + 0.5 the sup of (p_s + 0.5)^2 (1 - p_s)^2 is at
    # p_s = 1/4: (3/4)^4 -> E = (9/64) / (81/256) = 4/9
    assert two.e_worse(0.5) == pytest.approx(4 / 9)
    # H0 "worse by 0.5 or more" contains the estimate (delta = 1): the unconstrained maximum, 1
    assert two.e_no_worse(0.5) == pytest.approx(9 / 64)
    assert sq.p_value(9 / 4) == pytest.approx(4 / 9) and sq.p_value(0.3) == 1.0


def test_the_constrained_maximum_matches_a_reference_optimiser():
    rng = np.random.default_rng(7)
    for _ in range(200):
        nc, ns = rng.integers(1, 400), rng.integers(1, 4000)
        kc, ks = rng.uniform(0, nc), rng.uniform(0, ns)  # real-valued sums: bounded outcomes
        delta = rng.uniform(-0.95, 0.95)
        lo, hi = max(0.0, -delta), min(1.0, 1.0 - delta)

        def negative(ps: float, kc=kc, nc=nc, ks=ks, ns=ns, delta=delta) -> float:
            return -float(sq.log_likelihood(kc, nc, ps + delta) + sq.log_likelihood(ks, ns, ps))

        ref = minimize_scalar(negative, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12})
        pc, ps = sq.restricted_mle(kc, nc, ks, ns, delta)
        assert float(pc - ps) == pytest.approx(delta)
        assert -float(sq.log_profile(kc, nc, ks, ns, delta)) <= ref.fun + 1e-7


def test_the_sequence_is_the_set_of_differences_not_rejected():
    c = sq.Comparison(40, 400, 50, 2000)  # 10% vs 2.5%
    lo, hi = c.sequence(0.01)
    assert lo < c.difference < hi
    for bound in (lo, hi):  # at the bounds the e-value is exactly 1/alpha
        assert c.e_value(bound, bound) == pytest.approx(100, rel=1e-6)
    grid = np.linspace(-0.2, 0.3, 5001)  # brute force: the same interval
    kept = grid[[c.e_value(d, d) < 100 for d in grid]]
    assert kept.min() == pytest.approx(lo, abs=2e-4) and kept.max() == pytest.approx(hi, abs=2e-4)
    # 0 lies below the sequence: the canary is shown worse; the rollback test agrees
    assert lo > 0 and c.e_worse(0.0) >= 100 and c.e_worse(lo + 0.001) < 100


# -- validity and power: seeded simulations ---------------------------------------------------
def _looks(rng, n_looks, step, p_c, p_s, ratio=4, bounded=False):
    """Running (k, n) of both revisions at every look; ``bounded``: Beta outcomes, not 0/1."""
    n = n_looks * step
    if bounded:
        xc, xs = rng.beta(2, 2 / p_c - 2, n), rng.beta(2, 2 / p_s - 2, n * ratio)
    else:
        xc, xs = rng.random(n) < p_c, rng.random(n * ratio) < p_s
    idx = np.arange(step, n + 1, step)
    return np.cumsum(xc)[idx - 1], idx, np.cumsum(xs)[idx * ratio - 1], idx * ratio


@pytest.mark.parametrize("bounded", [False, True])
def test_an_identical_canary_crosses_rarely_however_often_one_looks(bounded):
    """Looking after every 10 canary outcomes, 200 times, in 200 runs: the e-value ever reaching 1/alpha, and
    the sequence ever missing the true difference (0), stay within alpha = 0.1 (plus the
    simulation's own error); on 0/1 outcomes and on confidences alike (sub-Bernoulli)."""
    rng = np.random.default_rng(11)
    crossed = missed = 0
    runs = 200
    for _ in range(runs):
        kc, nc, ks, ns = _looks(rng, 200, 10, 0.2, 0.2, bounded=bounded)
        crossed += bool((sq.log_e_value(kc, nc, ks, ns, -1.0, 0.0) >= math.log(10)).any())
        lo, hi = sq.confidence_sequence(kc, nc, ks, ns, 0.1)
        missed += bool(((lo > 0) | (hi < 0)).any())
    limit = 0.1 + 2 * math.sqrt(0.1 * 0.9 / runs)
    assert crossed / runs <= limit and missed / runs <= limit


def test_a_worse_canary_is_caught_and_an_equal_one_shown_no_worse():
    rng = np.random.default_rng(3)
    kc, nc, ks, ns = _looks(rng, 100, 10, 0.15, 0.05)
    worse = sq.log_e_value(kc, nc, ks, ns, -1.0, 0.0) >= math.log(100)
    assert worse.any() and nc[worse.argmax()] <= 1000  # within 1000 canary outcomes
    kc, nc, ks, ns = _looks(rng, 200, 10, 0.05, 0.05)
    no_worse = sq.log_e_value(kc, nc, ks, ns, 0.05, 1.0) >= math.log(100)
    assert no_worse[-1]  # within 5 points after 2000 canary outcomes (and 8000 on stable)


def test_class_mix_bounds():
    same = {"a": 500.0, "b": 300.0, "c": 200.0}
    shifted = {"a": 100.0, "b": 300.0, "c": 600.0}
    mix = sq.class_mix(shifted, same, 0.05)
    assert mix.estimate == pytest.approx(0.4)
    assert 0.25 < mix.lower < 0.4 < mix.upper
    assert sq.tvd_lower_bound(shifted, same, 0.05) == pytest.approx(mix.lower)
    equal = sq.class_mix(same, same, 0.05)
    assert equal.lower == 0 and 0 < equal.upper < 0.2 and sq.tvd_lower_bound(same, same, 0.05) == 0
    assert sq.mix_changed(shifted, same) > 1e6 and sq.mix_changed(same, same) < 1


# -- the decision and the staged rollout -------------------------------------------------------
def _fig(name, requests=3000.0, errors=0.0, conf=0.8, classes=None, feedback=None):
    return Figures(name, requests, errors, 40.0, conf, classes or {"a": requests / 2, "b": requests / 2},
                   feedback=feedback)


def test_alpha_is_split_over_the_comparative_checks():
    t = Thresholds(alpha=0.06)
    plain = decide(_fig("s"), _fig("c"), t, "2m")
    assert [c.evidence.alpha for c in plain.checks if c.evidence] == pytest.approx([0.02] * 3)
    said = FeedbackFigures(3000, 900, 800)
    both = decide(_fig("s", feedback=said), _fig("c", feedback=said), t, "2m")
    assert [c.evidence.alpha for c in both.checks if c.evidence] == pytest.approx([0.012] * 5)
    assert {c.name for c in both.checks if c.evidence} == {ERROR_RATE, MEAN_CONFIDENCE, CLASS_MIX,
                                                          FEEDBACK_ACCURACY, "marked-wrong rate"}


def test_harm_checks_hold_until_shown_no_worse_and_proxies_only_veto():
    t = Thresholds()
    few = decide(_fig("s", 3000.0), _fig("c", 100.0), t, "2m")
    error = next(c for c in few.checks if c.name == ERROR_RATE)
    assert few.decision == HOLD and error.ok is None and "5xx rate" in few.reasons[0]
    confidence = next(c for c in few.checks if c.name == MEAN_CONFIDENCE)
    assert confidence.ok is True  # nothing shown beyond the tolerance: no veto
    assert "e(worse)=" in few.report() and "confidence sequence for canary - stable" in few.report()
    assert decide(_fig("s"), _fig("c"), t, "2m").decision == PROMOTE
    # a confidence drop shown beyond 0.1 is a rollback; one within it is not
    assert decide(_fig("s"), _fig("c", conf=0.6), t, "2m").decision == ROLLBACK
    assert decide(_fig("s"), _fig("c", conf=0.75), t, "2m").decision == PROMOTE


def test_staged_rollout_raises_on_evidence_and_holds_otherwise():
    staged = StagedRollout([50], passes_per_step=2)
    assert staged.after(PROMOTE) == (HOLD, None)
    assert staged.after(HOLD) == (HOLD, None)  # a hold starts the count again
    assert staged.after(PROMOTE) == (HOLD, None)
    assert staged.after(PROMOTE) == (RAISE, 50)
    assert staged.after(PROMOTE) == (HOLD, None)
    assert staged.after(PROMOTE) == (PROMOTE, None)
    assert StagedRollout([50], 2).after(ROLLBACK) == (ROLLBACK, None)


STABLE, CANARY = "food11-predictor-00001", "food11-predictor-00002"


class _Backend:
    def __init__(self) -> None:
        self.percent: int | None = 10
        self.calls: list = []

    def state(self) -> RolloutState:
        return RolloutState("food11", "ns", "food11-predictor", "food11", STABLE, CANARY, self.percent,
                            canary_started=1000.0)

    def set_percent(self, percent: int) -> None:
        self.calls.append(("percent", percent))
        self.percent = percent

    def promote(self) -> None:
        self.calls.append(("promote",))

    def rollback(self) -> None:
        self.calls.append(("rollback",))


class _Prometheus:
    """Counts that grow with each look: ``per_look`` requests on each revision, ``errors`` of them 5xx."""

    def __init__(self, errors: float = 0.0, per_look: float = 1000.0) -> None:
        self.looks, self.errors, self.per_look, self.queries = 0, errors, per_look, []

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        self.queries.append(promql)
        n = self.per_look * (self.looks + 1)
        if "predicted_class_total" in promql:
            self.looks += 1  # the last query of a look
            return [Sample({"revision": r, "class_name": c}, n / 2) for r in (STABLE, CANARY) for c in "ab"]
        if "prediction_confidence_sum" in promql:
            return [Sample({"revision": r}, 0.8 * n) for r in (STABLE, CANARY)]
        if "prediction_confidence_count" in promql:
            return [Sample({"revision": r}, n) for r in (STABLE, CANARY)]
        if "histogram_quantile" in promql:
            return [Sample({"kn_revision_name": r}, 40.0) for r in (STABLE, CANARY)]
        if "5.." in promql:
            return [Sample({"kn_revision_name": CANARY}, self.errors * n / self.per_look)]
        return [Sample({"kn_revision_name": r}, n) for r in (STABLE, CANARY)]


def test_run_auto_walks_the_steps_on_evidence_then_promotes():
    backend, prometheus, lines = _Backend(), _Prometheus(), []
    config = RolloutConfig(auto=RolloutConfig().auto.__class__(steps=(10, 50), passes_per_step=2, interval_s=1.0))
    decision = run_auto(backend, prometheus, config, out=lines.append, sleep=lambda s: None)  # type: ignore[arg-type]
    assert decision == PROMOTE and backend.calls == [("percent", 50), ("promote",)]
    # counts since the canary started (Unix 1000): a range back to it, not the 2m window
    counted = [q for q in prometheus.queries if "increase(" in q]
    assert counted and all("[2m]" not in q for q in counted) and "[2m]" in prometheus.queries[2]
    assert any("raised to 50%" in line for line in lines)


def test_run_auto_rolls_back_a_canary_shown_worse():
    backend, lines = _Backend(), []
    config = RolloutConfig(auto=RolloutConfig().auto.__class__(steps=(10, 50), passes_per_step=2, interval_s=1.0))
    decision = run_auto(backend, _Prometheus(errors=60.0), config, out=lines.append,  # type: ignore[arg-type]
                        sleep=lambda s: None)
    assert decision == ROLLBACK and backend.calls == [("rollback",)]
    assert any("5xx rate failed" in line for line in lines)


def test_one_class_on_both_sides_is_no_shift():
    only = {"five": 300.0}
    mix = sq.class_mix(only, {"five": 900.0}, 0.05)
    assert (mix.estimate, mix.lower, mix.upper) == (0.0, 0.0, 0.0)
    assert sq.mix_changed(only, {"five": 900.0}) == 1.0 and sq.tvd_lower_bound(only, only, 0.05) == 0.0
    assert sq.class_mix(only, {"zero": 900.0}, 0.05).lower > 0.9  # two classes: disjoint mixes


def test_counts_that_overshoot_are_clipped():
    """increase() extrapolates: 5xx may read a hair above the requests; no nan, a clear verdict."""
    c = sq.Comparison(50.2, 50.0, 0.0, 500.0)
    assert math.isfinite(c.e_worse()) and c.e_worse() > 1e6 and c.sequence(0.05)[0] > 0.8

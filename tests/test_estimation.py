"""Calibration (temperature, ECE, OOD threshold) and the label-free accuracy estimates, on
synthetic logits whose true accuracy is known: fast, no model, no CPU-dependent numerics."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from gourmetgram.calibration import Calibration, calibrated_probabilities, energy_score, expected_calibration_error
from gourmetgram.errors import BadInput
from gourmetgram.estimation import (
    ATC,
    ATC_ENERGY,
    ATC_ENERGY_PRIOR,
    ATC_PRIOR,
    CONFIDENCE,
    RollingEstimate,
    Window,
    estimate_all,
    wilson_interval,
)
from gourmetgram.evaluation.calibration import (
    class_caps,
    fit_calibration,
    fit_temperature,
    reliability_table,
)

CLASSES = 10


def photos(n: int, rng: np.random.Generator, sharpness: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a well-behaved model on in-distribution photos, and the true classes.

    Each photo's true class is drawn from the softmax of its (calibrated) logits, so
    ``softmax(logits)`` is the true probability of each class: calibrated by construction."""
    signal = rng.normal(0.0, 1.0, (n, CLASSES)) * 1.5
    favourite = rng.integers(0, CLASSES, n)
    signal[np.arange(n), favourite] += rng.gamma(4.0, sharpness / 4.0, n)
    probs = calibrated_probabilities(signal, 1.0)
    labels = np.array([rng.choice(CLASSES, p=p) for p in probs])
    return signal, labels


def collapsed(n: int, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Logits under a shift that makes the model answer class 1 for every photo, confidently and
    with an ordinary energy (the demo's night shots): right only for the photos of class 1."""
    logits = rng.normal(0.0, 1.0, (n, CLASSES)) * 1.5
    logits[:, 1] += rng.gamma(4.0, 1.5, n) + 2.0
    return logits


def faded(n: int, rng: np.random.Generator) -> np.ndarray:
    """Logits of photos unlike any class (blank plates, noise): small, flat, a random top class."""
    return rng.normal(0.0, 0.4, (n, CLASSES))


@pytest.fixture(scope="module")
def fitted() -> Calibration:
    """Calibration of an over-confident model (logits x 3) fitted on 3,000 validation photos."""
    logits, labels = photos(3000, np.random.default_rng(1))
    return fit_calibration(3.0 * logits, labels)


# -- calibration ----------------------------------------------------------------------------------

def test_temperature_scaling_finds_the_overconfidence_and_lowers_the_ece(fitted):
    assert fitted.temperature == pytest.approx(3.0, rel=0.1)
    assert fitted.ece_after < fitted.ece_before / 2
    logits, labels = photos(2000, np.random.default_rng(2))
    correct = logits.argmax(1) == labels
    before = calibrated_probabilities(3.0 * logits, 1.0).max(1)
    after = fitted.score(3.0 * logits).confidence
    assert expected_calibration_error(after, correct) < expected_calibration_error(before, correct) / 2
    # scaling never changes the answer
    np.testing.assert_array_equal(fitted.score(3.0 * logits).predicted, logits.argmax(1))


def test_fit_temperature_is_one_for_a_calibrated_model():
    logits, labels = photos(3000, np.random.default_rng(3))
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)


def test_ece_and_reliability_table_on_a_hand_made_case():
    confidence = np.array([0.9, 0.9, 0.9, 0.9, 0.55, 0.55, 1.0])
    correct = np.array([True, True, True, False, True, False, True])
    table = reliability_table(confidence, correct, bins=15)
    filled = [b for b in table if b.count]
    assert [b.count for b in filled] == [2, 4, 1]  # 1.0 falls in the last bin
    assert filled[1].accuracy == pytest.approx(0.75) and filled[1].confidence == pytest.approx(0.9)
    expected = (2 / 7) * abs(0.5 - 0.55) + (4 / 7) * abs(0.75 - 0.9) + (1 / 7) * 0.0
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected)
    with pytest.raises(BadInput):
        expected_calibration_error([], [])


def test_the_ood_threshold_passes_the_asked_share_of_validation_photos(fitted):
    logits, _ = photos(3000, np.random.default_rng(1))
    inside = fitted.score(3.0 * logits).in_distribution
    assert inside.mean() == pytest.approx(0.95, abs=0.002)
    assert not fitted.score(3.0 * faded(500, np.random.default_rng(4))).in_distribution.any()


def test_energy_is_minus_logsumexp():
    from scipy.special import logsumexp

    logits = np.random.default_rng(5).normal(0, 5, (50, CLASSES))
    np.testing.assert_allclose(energy_score(logits), -logsumexp(logits, axis=1), rtol=1e-12)


def test_atc_thresholds_reproduce_the_validation_accuracy(fitted):
    logits, labels = photos(3000, np.random.default_rng(1))
    scored = fitted.score(3.0 * logits)
    accuracy = float((scored.predicted == labels).mean())
    assert fitted.validation_accuracy == pytest.approx(accuracy)
    window = Window.of(scored)
    found = estimate_all(window, fitted)
    for method in (ATC, ATC_PRIOR, ATC_ENERGY, ATC_ENERGY_PRIOR):
        assert found[method].value == pytest.approx(accuracy, abs=0.002), method
    assert sum(fitted.class_prior) == pytest.approx(1.0)
    # the caps: at least the prior, and exactly what passed where validation over-predicts a class
    for method in (ATC_PRIOR, ATC_ENERGY_PRIOR):
        caps = np.asarray(fitted.caps(method))
        assert (caps >= np.asarray(fitted.class_prior) - 1e-12).all() and caps.sum() >= 1.0 - 1e-9


def test_class_caps_are_the_prior_or_what_passed_for_the_class():
    predicted = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    passed = np.array([True, True, True, False, True, False, False, False])
    caps = class_caps(passed, predicted, np.array([0.25, 0.25, 0.5]))
    np.testing.assert_allclose(caps, [3 / 8, 0.25, 0.5])  # class 0 passed 3 of 8 > its prior


def test_a_bundle_without_caps_caps_at_the_prior(fitted):
    """A calibration.json written before the caps existed: the capped methods cap at the prior."""

    old = dataclasses.replace(fitted, class_caps={})
    assert old.caps(ATC_PRIOR) == old.class_prior
    assert ATC_PRIOR in estimate_all(Window.of(old.score(np.zeros((3, CLASSES)))), old)


def test_calibration_file_round_trip_and_bad_files(fitted, tmp_path):
    path = fitted.write(tmp_path / "calibration.json")
    assert Calibration.read(path) == fitted
    assert json.loads(path.read_text())["ood_threshold"] == pytest.approx(fitted.ood_threshold)
    identity = Calibration.identity()
    assert identity.temperature == 1.0 and math.isinf(identity.ood_threshold) and not identity.fitted
    assert Calibration.read(identity.write(tmp_path / "id.json")).ood_threshold == math.inf
    (tmp_path / "bad.json").write_text('{"temperature": -1}')
    with pytest.raises(BadInput, match="positive"):
        Calibration.read(tmp_path / "bad.json")
    (tmp_path / "typo.json").write_text('{"temprature": 2}')
    with pytest.raises(BadInput, match="unknown keys"):
        Calibration.read(tmp_path / "typo.json")
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        Calibration.read(tmp_path / "text.json")


# -- the estimates --------------------------------------------------------------------------------

def _mixture(fitted: Calibration, share: float, shift, seed: int = 7, n: int = 2000):
    """``share`` of ``n`` photos replaced by their shifted version: (true accuracy, estimates)."""
    rng = np.random.default_rng(seed)
    logits, labels = photos(n, rng)
    shifted = shift(n, rng, labels) if shift is collapsed else shift(n, rng)
    chosen = rng.permutation(n)[:int(share * n)]
    logits = 3.0 * logits
    logits[chosen] = 3.0 * shifted[chosen]
    scored = fitted.score(logits)
    return float((scored.predicted == labels).mean()), estimate_all(Window.of(scored), fitted)


def test_in_distribution_every_estimate_is_within_a_few_points(fitted):
    truth, found = _mixture(fitted, 0.0, collapsed)
    for method, e in found.items():
        assert abs(e.value - truth) < 0.03, (method, e.value, truth)
        assert e.lower <= e.value <= e.upper


@pytest.mark.parametrize("capped", [ATC_PRIOR, ATC_ENERGY_PRIOR])
@pytest.mark.parametrize("share", [0.25, 0.5, 1.0])
def test_a_collapse_shift_moves_the_prior_capped_estimates_down_by_the_true_drop(fitted, share, capped):
    """Photos of every class read as one class, confidently: the true accuracy falls by about
    ``share`` x (1 - 0.1); the capped estimates follow it, plain ATC and the mean confidence
    (which see only confident answers) stay high."""
    base_truth, base = _mixture(fitted, 0.0, collapsed)
    truth, found = _mixture(fitted, share, collapsed)
    assert base_truth - truth > 0.8 * share * 0.85  # the shift really hurts
    drop = base[capped].value - found[capped].value
    assert drop == pytest.approx(base_truth - truth, abs=0.06)
    assert abs(found[capped].value - truth) < 0.06
    assert found[ATC].value - truth > 0.5 * share  # what the capped methods are for
    assert found[CONFIDENCE].value - truth > 0.5 * share


def test_an_ood_shift_moves_the_energy_estimates_down(fitted):
    """Photos unlike any class (flat, small logits): nearly all wrong, and the energy says so; so
    does the confidence, which is low on them too."""
    base_truth, base = _mixture(fitted, 0.0, faded)
    truth, found = _mixture(fitted, 0.5, faded)
    assert base_truth - truth > 0.35
    for method in (ATC_ENERGY, ATC_ENERGY_PRIOR, ATC_PRIOR):
        assert base[method].value - found[method].value == pytest.approx(base_truth - truth, abs=0.06), method
        assert abs(found[method].value - truth) < 0.06


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    for k, n in [(0, 10), (3, 10), (95, 100), (500, 500), (412, 500)]:
        expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((expected.low, expected.high), abs=1e-9)
    with pytest.raises(BadInput):
        wilson_interval(0, 0)


def test_interval_narrows_with_the_window(fitted):
    _, small = _mixture(fitted, 0.0, collapsed, n=100)
    _, large = _mixture(fitted, 0.0, collapsed, n=4000)
    for method in (ATC, CONFIDENCE, ATC_ENERGY_PRIOR):
        assert (large[method].upper - large[method].lower) < (small[method].upper - small[method].lower) / 3


def test_rolling_window_keeps_the_last_photos_and_forgets_old_ones(fitted):
    now = [0.0]
    rolling = RollingEstimate(fitted, window=100, max_age_s=60.0, clock=lambda: now[0])
    assert rolling.estimates() == {}
    rng = np.random.default_rng(8)
    good, _ = photos(150, rng)
    rolling.record(fitted.score(3.0 * good))
    assert {e.n for e in rolling.estimates().values()} == {100}  # the window's size
    now[0] = 30.0
    rolling.record(fitted.score(3.0 * faded(40, rng)))
    assert rolling.estimates()[ATC_ENERGY].value < 0.7  # the new photos pulled it down
    now[0] = 75.0  # the first batch is older than a minute: only the 40 faded photos are left
    estimates = rolling.estimates()
    assert {e.n for e in estimates.values()} == {40} and estimates[ATC_ENERGY].value < 0.1


def test_an_uncalibrated_bundle_estimates_with_the_mean_confidence_only():
    logits, _ = photos(50, np.random.default_rng(9))
    identity = Calibration.identity()
    found = estimate_all(Window.of(identity.score(logits)), identity)
    assert set(found) == {CONFIDENCE}
    assert identity.score(logits).in_distribution.all()

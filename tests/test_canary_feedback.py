"""Canary analysis on user feedback: the pure decide() with feedback figures (roll back on
worse feedback accuracy or marked-wrong rate, no verdict below the minimum count, no failure
without significance), the figures read from a real SQLite loop store per revision over the
canary's period, and `rollout analyze --feedback` deciding on them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gourmetgram.errors import ConfigError
from gourmetgram.loop.models import Feedback, Sample
from gourmetgram.loop.store import Store
from gourmetgram.rollout import analysis, decision
from gourmetgram.rollout.analysis import RolloutState
from gourmetgram.rollout.config import Thresholds
from gourmetgram.rollout.decision import decide
from gourmetgram.rollout.feedback import StoreFeedback
from gourmetgram.rollout.prometheus import Sample as Series
from gourmetgram.rollout.queries import FeedbackFigures, Figures
from gourmetgram.rollout.sequential import Comparison
from gourmetgram_app.cli.main import main

T = Thresholds(window="1m", min_requests=50, min_feedback=30)


def _fig(name: str, feedback: FeedbackFigures | None, conf: float = 0.8) -> Figures:
    # Everything Prometheus sees is equal (or the canary even looks MORE confident): only
    # the users can tell the two apart. Enough requests for the error rate to show no worse.
    return Figures(name, 3000.0, 0.0, 40.0, conf, {"a": 1500.0, "b": 1500.0}, feedback=feedback)


def _check(verdict, name):
    return next(c for c in verdict.checks if c.name == name)


def test_worse_feedback_accuracy_rolls_back_even_with_fine_confidence():
    stable = FeedbackFigures(served=400, answers=200, correct=180)  # 0.90
    canary = FeedbackFigures(served=400, answers=200, correct=120)  # 0.60
    v = decide(_fig("s", stable), _fig("c", canary, conf=0.95), T, "1m")
    assert v.decision == analysis.ROLLBACK, v.report()
    assert _check(v, decision.FEEDBACK_ACCURACY).ok is False
    assert _check(v, "mean confidence").ok is True and _check(v, "class mix shift (TVD)").ok is True
    assert "feedback accuracy failed" in v.report() and "0.600 n=200" in v.report()
    # the evidence shown: the sequence for canary - stable (share marked wrong) lies above 0
    lo, hi = _check(v, decision.FEEDBACK_ACCURACY).evidence.sequence()
    assert 0 < lo < 0.3 < hi


def test_more_tags_marked_wrong_rolls_back_at_equal_feedback_accuracy():
    """The canary's users answer more often, and mark 5x as many of its answers wrong per
    prediction served, at the same feedback accuracy: the marked-wrong rate catches it."""
    stable = FeedbackFigures(served=400, answers=40, correct=32)  # wrong 8/400 = 0.02
    canary = FeedbackFigures(served=200, answers=150, correct=120)  # wrong 30/200 = 0.15
    v = decide(_fig("s", stable), _fig("c", canary), T, "1m")
    assert v.decision == analysis.ROLLBACK
    assert _check(v, decision.FEEDBACK_ACCURACY).ok is not False  # not shown worse
    assert _check(v, decision.WRONG_RATE).ok is False


def test_better_or_equal_feedback_promotes():
    stable = FeedbackFigures(served=200, answers=60, correct=36)
    canary = FeedbackFigures(served=200, answers=60, correct=54)
    v = decide(_fig("s", stable), _fig("c", canary), T, "1m")
    assert v.decision == analysis.PROMOTE, v.report()
    assert _check(v, decision.FEEDBACK_ACCURACY).ok is True and _check(v, decision.WRONG_RATE).ok is True


def test_no_verdict_from_feedback_below_the_minimum_count():
    stable = FeedbackFigures(served=200, answers=100, correct=95)
    canary = FeedbackFigures(served=50, answers=29, correct=0)  # all wrong, but one answer short
    v = decide(_fig("s", stable), _fig("c", canary), T, "1m")
    assert _check(v, decision.FEEDBACK_ACCURACY).ok is None and _check(v, decision.WRONG_RATE).ok is None
    assert v.decision == analysis.PROMOTE  # advisory by default: the other checks decide
    assert "n/a below 30 answers" in v.report()
    held = decide(_fig("s", stable), _fig("c", canary), Thresholds(min_requests=50, require_feedback=True), "1m")
    assert held.decision == analysis.HOLD and "feedback accuracy" in held.reasons[0]
    # one answer more and the same evidence is a rollback
    v = decide(_fig("s", stable), _fig("c", FeedbackFigures(50, 30, 0)), T, "1m")
    assert v.decision == analysis.ROLLBACK


def test_a_drop_within_chance_does_not_fail():
    stable = FeedbackFigures(served=100, answers=30, correct=27)  # 0.90
    canary = FeedbackFigures(served=100, answers=30, correct=24)  # 0.80: beyond 0.05, but within chance
    v = decide(_fig("s", stable), _fig("c", canary), T, "1m")
    accuracy = _check(v, decision.FEEDBACK_ACCURACY)
    assert Comparison(6, 30, 3, 30).e_worse() < 1 / accuracy.evidence.alpha
    assert accuracy.ok is not False and v.decision == analysis.PROMOTE  # advisory while inconclusive


def test_without_feedback_figures_the_report_is_unchanged():
    v = decide(_fig("s", None), _fig("c", None), T, "1m")
    assert v.decision == analysis.PROMOTE
    assert all(c.name not in (decision.FEEDBACK_ACCURACY, decision.WRONG_RATE) for c in v.checks)


def test_feedback_settings_in_the_config(tmp_path):
    assert analysis.load_config().analysis.min_feedback >= 1
    bad = tmp_path / "r.yaml"
    bad.write_text("analysis: {alpha: 2}\n")
    with pytest.raises(ConfigError, match="alpha"):
        analysis.load_config(bad)


# -- figures from a real loop store --------------------------------------------------------------
STABLE, CANARY = "food11-predictor-00001", "food11-predictor-00002"


def _serve(store: Store, n: int, revision: str | None, version: str, stage: str, correct: list[bool],
           at: datetime, tag: str) -> None:
    """``n`` captured predictions; feedback on the first len(correct) of them."""
    for i in range(n):
        sid = f"{tag}-{i}"
        store.upsert_sample(sid, inference_id=sid, object_key=f"images/{sid}.jpg", label="a", class_index=0,
                            confidence=0.9, model_version=version, revision=revision, stage=stage)
        with store.write() as s:
            s.get(Sample, sid).captured_at = at
            if i < len(correct):
                s.add(Feedback(sample_id=sid, correct=correct[i], created_at=at, updated_at=at, updates=0))


@pytest.fixture()
def store(tmp_path):
    st = Store(f"sqlite:///{tmp_path / 'loop.db'}")
    yield st
    st.dispose()


def _state(**kw) -> RolloutState:
    revisions = ({"name": STABLE, "version": "1"}, {"name": CANARY, "version": "2"})
    return RolloutState("food11", "default", "food11-predictor", "food11", STABLE, CANARY, 30,
                        kw.get("revisions", revisions))


def test_store_feedback_per_revision_over_the_canary_period(store):
    now = datetime.now(timezone.utc)
    # before the canary: the stable revision served 50, users marked all of them wrong (drift
    # from last week): not the canary's period, left out of the comparison
    _serve(store, 50, STABLE, "1", "production", [False] * 50, now - timedelta(days=7), "old")
    _serve(store, 40, CANARY, "2", "canary", [True] * 10 + [False] * 30, now, "canary")
    _serve(store, 80, STABLE, "1", "production", [True] * 36 + [False] * 4, now + timedelta(seconds=1), "stable")
    figures = StoreFeedback(store)(_state())
    assert figures[STABLE] == FeedbackFigures(served=80, answers=40, correct=36)
    assert figures[CANARY] == FeedbackFigures(served=40, answers=40, correct=10)


def test_store_feedback_without_revisions_matches_version_then_stage(store):
    """The cluster's capture has no revision (KServe's logger): the model version, else the stage."""
    now = datetime.now(timezone.utc)
    _serve(store, 30, None, "2", "canary", [False] * 30, now, "canary")
    _serve(store, 30, None, "1", "production", [True] * 30, now + timedelta(seconds=1), "stable")
    assert StoreFeedback(store)(_state())[CANARY] == FeedbackFigures(30, 30, 0)
    by_stage = StoreFeedback(store)(_state(revisions=()))
    assert by_stage[STABLE] == FeedbackFigures(30, 30, 30) and by_stage[CANARY] == FeedbackFigures(30, 30, 0)


class _Prometheus:
    """Stands in for Prometheus's query API: both revisions look the same (fine)."""

    def query(self, promql: str, at: float | None = None) -> list[Series]:
        if "predicted_class_total" in promql:
            return [Series({"revision": r, "class_name": c}, 1500.0) for r in (STABLE, CANARY) for c in "ab"]
        if "prediction_confidence_sum" in promql:
            return [Series({"revision": r}, 2700.0) for r in (STABLE, CANARY)]
        if "prediction_confidence_count" in promql:
            return [Series({"revision": r}, 3000.0) for r in (STABLE, CANARY)]
        key = "kn_revision_name"
        if "histogram_quantile" in promql:
            return [Series({key: r}, 40.0) for r in (STABLE, CANARY)]
        if "5.." in promql:
            return []
        return [Series({key: r}, 3000.0) for r in (STABLE, CANARY)]


def test_analyze_reads_the_store_and_rolls_back_on_feedback(store):
    now = datetime.now(timezone.utc)
    _serve(store, 60, CANARY, "2", "canary", [True] * 30 + [False] * 30, now, "canary")
    _serve(store, 60, STABLE, "1", "production", [True] * 54 + [False] * 6, now, "stable")
    plain = analysis.analyze(_Prometheus(), _state(), T)  # type: ignore[arg-type]
    assert plain.decision == analysis.PROMOTE
    v = analysis.analyze(_Prometheus(), _state(), T, feedback=StoreFeedback(store))  # type: ignore[arg-type]
    assert v.decision == analysis.ROLLBACK and "feedback accuracy failed" in v.reasons


def test_cli_checks_the_feedback_options(capsys):
    assert main(["rollout", "analyze", "--feedback", "--min-feedback", "0", "--gateway", "http://127.0.0.1:9"]) == 2
    assert "min_feedback" in capsys.readouterr().err


def _drift_fix(conf_canary: float = 0.8) -> tuple[Figures, Figures]:
    """A retrain that fixes a drifted sub-population: its class mix differs from stable's
    (stable answered one class for the drifted photos) significantly."""
    stable = Figures("s", 3000.0, 0.0, 40.0, 0.8, {"a": 2700.0, "b": 300.0})
    canary = Figures("c", 3000.0, 0.0, 40.0, conf_canary, {"a": 1500.0, "b": 1500.0})
    return stable, canary


def test_better_feedback_overrides_the_proxies():
    stable, canary = _drift_fix()
    assert decide(stable, canary, T, "1m").decision == analysis.ROLLBACK  # class mix alone
    stable.feedback, canary.feedback = FeedbackFigures(200, 60, 33), FeedbackFigures(200, 60, 54)
    v = decide(stable, canary, T, "1m")
    assert v.decision == analysis.PROMOTE, v.report()
    assert _check(v, decision.CLASS_MIX).overridden and "overridden by feedback" in v.report()
    # ... not when the canary's feedback accuracy is lower (even within chance) or the switch is off
    canary.feedback = FeedbackFigures(200, 60, 32)
    assert decide(stable, canary, T, "1m").decision == analysis.ROLLBACK
    canary.feedback = FeedbackFigures(200, 60, 54)
    off = Thresholds(min_requests=50, min_feedback=30, feedback_overrides_proxies=False)
    assert decide(stable, canary, off, "1m").decision == analysis.ROLLBACK


def test_required_feedback_holds_a_proxy_failure_until_it_is_there():
    stable, canary = _drift_fix()
    stable.feedback, canary.feedback = FeedbackFigures(200, 60, 33), FeedbackFigures(200, 10, 10)
    need = Thresholds(min_requests=50, min_feedback=30, require_feedback=True)
    v = decide(stable, canary, need, "1m")
    assert v.decision == analysis.HOLD and "waiting for 30 feedback answers" in v.reasons[0]
    # an error-rate failure is not a proxy: rolled back at once
    canary.errors = 50.0
    assert decide(stable, canary, need, "1m").decision == analysis.ROLLBACK

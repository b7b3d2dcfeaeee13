"""The canary decision: a pure function of the figures (promote / hold / rollback).

Every comparative check is an always-valid sequential test (:mod:`gourmetgram.rollout.sequential`)
on the outcomes counted since the canary started, so the decision may be taken after every
request: an identical canary is rolled back with probability at most ``alpha`` over the whole
rollout, however often it is analysed. ``alpha`` is split evenly over the comparative checks in
play (Bonferroni): three without feedback (5xx rate, mean confidence, class mix), five with it
(plus feedback accuracy and marked-wrong rate). Each check's confidence sequence is at its share.

Two kinds of checks:

* **harm** (5xx rate, feedback accuracy, marked-wrong rate): FAIL when the sequence for
  ``canary - stable`` lies above 0 (the canary is worse at all); ok when it lies below the margin
  (``max_*``: shown worse by less than that, non-inferiority); inconclusive (hold) in between.
  A canary worse by less than the margin is raised or rolled back, whichever the evidence shows
  first.
* **proxy** (mean confidence, class mix: stand-ins for correctness that a better model may also
  move): FAIL only when the sequence lies beyond the tolerance (``max_confidence_drop``,
  ``max_class_shift``), else ok; they never hold a canary back on their own.

The p95 latency is an SLO-style check on the recent window, as before. PROMOTE means "no worse
on the evidence": ``rollout auto`` then raises the canary to its next step, or promotes it after
the last. A future check (for example a label-free accuracy estimate per revision) joins as one
more harm or proxy check: its counts in, one more share of ``alpha``.
"""

from __future__ import annotations

import dataclasses
import math

from gourmetgram.rollout.config import Thresholds
from gourmetgram.rollout.queries import FeedbackFigures, Figures
from gourmetgram.rollout.sequential import Comparison, class_mix, mix_changed, p_value, tvd_lower_bound

PROMOTE, HOLD, ROLLBACK = "promote", "hold", "rollback"
REQUESTS, ERROR_RATE, P95_LATENCY = "requests", "5xx rate", "p95 latency ms"
FEEDBACK_ACCURACY, WRONG_RATE = "feedback accuracy", "marked-wrong rate"
MEAN_CONFIDENCE, CLASS_MIX = "mean confidence", "class mix shift (TVD)"
PROXIES = (MEAN_CONFIDENCE, CLASS_MIX)  # stand-ins for correctness, which feedback measures


@dataclasses.dataclass(frozen=True)
class Evidence:
    """One comparative check's sequential evidence at this look.

    ``e_worse``: e-value against "the canary is no worse than stable (beyond the tolerance)";
    ``e_no_worse``: e-value against "worse by the margin or more" (harm checks only). The check
    fails at ``e_worse >= 1/alpha`` and shows the canary no worse at ``e_no_worse >= 1/alpha``.
    For the class mix ``e_worse`` is the evidence that some class share changed at all (shown);
    the check itself compares the TVD's lower bound with the tolerance."""

    alpha: float
    e_worse: float
    e_no_worse: float | None = None
    comparison: Comparison | None = None
    mix: tuple[dict[str, float], dict[str, float]] | None = None  # class counts: canary, stable

    @property
    def p_value(self) -> float:
        """Always-valid p-value that the canary is no worse."""
        return p_value(self.e_worse)

    def sequence(self) -> tuple[float, float]:
        """The ``1 - alpha`` confidence sequence: ``canary - stable`` in bad outcomes (for the
        class mix: the total variation distance)."""
        if self.comparison is not None:
            return self.comparison.sequence(self.alpha)
        if self.mix is not None:
            shift = class_mix(self.mix[0], self.mix[1], self.alpha)
            return shift.lower, shift.upper
        return math.nan, math.nan

    def describe(self) -> str:
        lo, hi = self.sequence()
        if self.mix is not None:
            return (f"e(mix changed)={_fmt_e(self.e_worse)} p={self.p_value:.2g}; "
                    f"{1 - self.alpha:.1%} confidence sequence for the TVD [{lo:.4f}, {hi:.4f}]")
        ok = "" if self.e_no_worse is None else f", e(no worse)={_fmt_e(self.e_no_worse)}"
        return (f"e(worse)={_fmt_e(self.e_worse)} p={self.p_value:.2g}{ok}; "
                f"{1 - self.alpha:.1%} confidence sequence for canary - stable [{lo:+.4f}, {hi:+.4f}]")


@dataclasses.dataclass
class Check:
    name: str
    stable: str
    canary: str
    limit: str
    ok: bool | None  # None: inconclusive or not enough data
    overridden: bool = False  # failed, but user feedback says the canary is at least as accurate
    evidence: Evidence | None = None


@dataclasses.dataclass
class Verdict:
    decision: str
    reasons: list[str]
    checks: list[Check]
    stable: Figures
    canary: Figures
    window: str
    since: str | None = None  # the range the counts cover (since the canary started)

    def report(self) -> str:
        """The evidence, as a table a person reads before trusting the decision."""
        span = f"counts since the canary started ({self.since})" if self.since else f"counts over {self.window}"
        lines = [f"canary analysis ({span}; p95 over {self.window}): stable {self.stable.revision} vs canary "
                 f"{self.canary.revision}",
                 f"  {'check':<22} {'stable':>12} {'canary':>12}  {'limit':<36} result"]
        for c in self.checks:
            result = "n/a" if c.ok is None else ("ok" if c.ok else "FAIL")
            result += " (overridden by feedback)" if c.overridden else ""
            lines.append(f"  {c.name:<22} {c.stable:>12} {c.canary:>12}  {c.limit:<36} {result}")
            if c.evidence is not None:
                lines.append(f"  {'':<22} {c.evidence.describe()}")
        top = lambda f: ", ".join(f"{k} {v:.0%}" for k, v in  # noqa: E731
                                  sorted(f.class_shares().items(), key=lambda kv: -kv[1])[:3]) or "-"
        lines.append(f"  top classes  stable: {top(self.stable)}")
        lines.append(f"               canary: {top(self.canary)}")
        lines.append(f"decision: {self.decision.upper()}" + (f" ({'; '.join(self.reasons)})" if self.reasons else ""))
        return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _fmt_e(e: float) -> str:
    return "inf" if math.isinf(e) else (f"{e:.3g}" if e < 1e6 else f"{e:.1e}")


def harm_check(name: str, stable_cell: str, canary_cell: str, comparison: Comparison, margin: float,
               alpha: float) -> Check:
    """FAIL when shown worse than stable at all, ok when shown worse by less than ``margin``."""
    e_worse, e_no_worse = comparison.e_worse(0.0), comparison.e_no_worse(margin)
    evidence = Evidence(alpha, e_worse, e_no_worse, comparison)
    ok = False if e_worse >= 1 / alpha else (True if e_no_worse >= 1 / alpha else None)
    return Check(name, stable_cell, canary_cell, f"worse: > 0; no worse: < +{margin}", ok, evidence=evidence)


def _confidence_check(stable: Figures, canary: Figures, t: Thresholds, alpha: float) -> Check:
    cells = _fmt(stable.confidence, ".3f"), _fmt(canary.confidence, ".3f")
    limit = f"drop <= {t.max_confidence_drop}"
    if stable.confidence is None or canary.confidence is None:
        return Check(MEAN_CONFIDENCE, *cells, limit, None)
    # confidence in [0, 1]: "bad" mass = 1 - confidence, so canary - stable is the drop
    ns, nc = stable.confidence_count, canary.confidence_count
    comparison = Comparison(nc * (1 - canary.confidence), nc, ns * (1 - stable.confidence), ns)
    evidence = Evidence(alpha, comparison.e_worse(t.max_confidence_drop), comparison=comparison)
    return Check(MEAN_CONFIDENCE, *cells, limit, evidence.e_worse < 1 / alpha, evidence=evidence)


def _class_check(stable: Figures, canary: Figures, t: Thresholds, alpha: float) -> Check:
    limit = f"<= {t.max_class_shift}"
    shares_s, shares_c = stable.class_shares(), canary.class_shares()
    if not shares_s or not shares_c:
        return Check(CLASS_MIX, "", "-", limit, None)
    estimate = 0.5 * sum(abs(shares_c.get(k, 0.0) - shares_s.get(k, 0.0)) for k in set(shares_c) | set(shares_s))
    lower = tvd_lower_bound(canary.classes, stable.classes, alpha)
    mix = (dict(canary.classes), dict(stable.classes))
    evidence = Evidence(alpha, mix_changed(*mix), mix=mix)
    return Check(CLASS_MIX, "", f"{estimate:.3f}", limit, not lower > t.max_class_shift, evidence=evidence)


def feedback_checks(stable: FeedbackFigures, canary: FeedbackFigures, t: Thresholds, alpha: float) -> list[Check]:
    """Feedback accuracy and marked-wrong rate, canary vs stable; ``ok`` None below ``min_feedback``."""
    enough = min(stable.answers, canary.answers) >= t.min_feedback

    def cell(value: float | None, n: int) -> str:
        return f"{_fmt(value, '.3f')} n={n}"

    cells_acc = cell(stable.accuracy, stable.answers), cell(canary.accuracy, canary.answers)
    cells_wrong = cell(stable.wrong_rate, stable.served), cell(canary.wrong_rate, canary.served)
    if not enough:
        short = f"n/a below {t.min_feedback} answers"
        return [Check(FEEDBACK_ACCURACY, *cells_acc, short, None), Check(WRONG_RATE, *cells_wrong, short, None)]
    accuracy = harm_check(FEEDBACK_ACCURACY, *cells_acc,
                          Comparison(canary.wrong, canary.answers, stable.wrong, stable.answers),
                          t.max_feedback_accuracy_drop, alpha)
    wrong = harm_check(WRONG_RATE, *cells_wrong, Comparison(canary.wrong, canary.served, stable.wrong, stable.served),
                       t.max_wrong_rate_increase, alpha)
    return [accuracy, wrong]


def decide(stable: Figures, canary: Figures, t: Thresholds, window: str, since: str | None = None) -> Verdict:
    """Roll back on any failed check; hold while the evidence is inconclusive; else promote."""
    with_feedback = stable.feedback is not None and canary.feedback is not None
    alpha = t.alpha / (5 if with_feedback else 3)
    checks: list[Check] = []
    enough = stable.requests >= t.min_requests and canary.requests >= t.min_requests
    checks.append(Check(REQUESTS, _fmt(stable.requests, ".0f"), _fmt(canary.requests, ".0f"),
                        f">= {t.min_requests} each", enough))
    rates = _fmt(stable.error_rate, ".3f"), _fmt(canary.error_rate, ".3f")
    if canary.requests > 0 and stable.requests > 0:
        checks.append(harm_check(ERROR_RATE, *rates, Comparison(canary.errors, canary.requests, stable.errors,
                                                                 stable.requests), t.max_error_rate_increase, alpha))
    else:
        checks.append(Check(ERROR_RATE, *rates, f"no worse: < +{t.max_error_rate_increase}", None))
    if stable.p95_ms is None or canary.p95_ms is None:
        lat_ok = None
    else:
        lat_ok = (canary.p95_ms <= stable.p95_ms * t.max_p95_latency_ratio
                  or canary.p95_ms - stable.p95_ms <= t.p95_latency_slack_ms)
    checks.append(Check(P95_LATENCY, _fmt(stable.p95_ms, ".0f"), _fmt(canary.p95_ms, ".0f"),
                        f"<= x{t.max_p95_latency_ratio} or +{t.p95_latency_slack_ms:.0f} ms", lat_ok))
    checks.append(_confidence_check(stable, canary, t, alpha))
    checks.append(_class_check(stable, canary, t, alpha))

    def verdict(decision: str, reasons: list[str]) -> Verdict:
        return Verdict(decision, reasons, checks, stable, canary, window, since)

    advisory: set[str] = set()
    if with_feedback:
        assert stable.feedback is not None and canary.feedback is not None
        fb = feedback_checks(stable.feedback, canary.feedback, t, alpha)
        checks += fb
        if not t.require_feedback:
            advisory = {c.name for c in fb}
        proxy_failed = [c for c in checks if c.name in PROXIES and c.ok is False]
        if proxy_failed and all(c.ok for c in fb) and t.feedback_overrides_proxies:
            assert stable.feedback.accuracy is not None and canary.feedback.accuracy is not None
            if canary.feedback.accuracy >= stable.feedback.accuracy:
                # Confidence and class mix stand in for correctness; the users' answers ARE
                # correctness. A canary that fixes what users found wrong (a retrain after
                # drift) changes its class mix on purpose.
                for c in proxy_failed:
                    c.overridden = True
        elif proxy_failed and t.require_feedback and not any(c.ok is False for c in fb):
            hard = [c.name for c in checks[1:] if c.ok is False and c.name not in PROXIES]
            if not hard:
                return verdict(HOLD, [f"{', '.join(c.name for c in proxy_failed)} failed: waiting for "
                                      f"{t.min_feedback} feedback answers per revision and the evidence that "
                                      "the canary is no worse"])
    failed = [c.name for c in checks[1:] if c.ok is False and not c.overridden]
    if failed:
        # Always-valid evidence: a failure at any look, on however few requests, is a rollback
        # at the stated false-alarm rate; waiting would only expose more users to the canary.
        return verdict(ROLLBACK, [f"{n} failed" for n in failed])
    if not enough:
        return verdict(HOLD, [f"fewer than {t.min_requests} requests on a revision"])
    missing = [c.name for c in checks[1:] if c.ok is None and c.name not in advisory]
    if missing:
        return verdict(HOLD, [f"no verdict yet from {', '.join(missing)} (inconclusive or no data)"])
    return verdict(PROMOTE, [f"{c.name} overridden by feedback" for c in checks if c.overridden])

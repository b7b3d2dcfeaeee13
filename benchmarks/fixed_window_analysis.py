"""The fixed-window canary decision as it was before the sequential tests (main at dddda42,
``gourmetgram/rollout/analysis.py``): kept here, verbatim, ONLY so that
``benchmarks/canary_error_rates.py`` can measure it beside the new analysis. Nothing else may
import it; the live analysis is :mod:`gourmetgram.rollout.decision`.

It judges each look on the counts of a sliding window (Prometheus ``increase(...[window])``),
with a chi-square test of the class counts, one-sided Fisher exact tests of the feedback, and
point limits on the 5xx share and the mean confidence; ``rollout auto`` raised the canary after
``passes_per_step`` passing looks and rolled it back at the first failing one.
"""

# ruff: noqa
# mypy: ignore-errors
from __future__ import annotations

import dataclasses
import math
from typing import Annotated

from pydantic import Field, StrictBool, StrictFloat

from gourmetgram.config import STRICT, AtLeastOne, Duration, NonNegative, Share

PROMOTE, HOLD, ROLLBACK = "promote", "hold", "rollback"


@dataclasses.dataclass(frozen=True)
class Thresholds:
    __pydantic_config__ = STRICT
    window: Duration = "2m"
    min_requests: AtLeastOne = 50
    max_error_rate_increase: Share = 0.02
    max_p95_latency_ratio: Annotated[StrictFloat, Field(ge=1)] = 1.5
    p95_latency_slack_ms: NonNegative = 100.0
    max_confidence_drop: Share = 0.1
    max_class_shift: Share = 0.25
    # ... and only when the shift is significant (chi-square test of homogeneity on the
    # predicted-class counts): a few dozen canary requests differ from stable by chance.
    class_shift_alpha: Annotated[StrictFloat, Field(gt=0, lt=1)] = 0.01
    # User feedback (loop store), judged only with min_feedback answers on each revision and
    # only when significant (one-sided Fisher exact test, p below feedback_alpha).
    min_feedback: AtLeastOne = 30
    max_feedback_accuracy_drop: Share = 0.05
    max_wrong_rate_increase: Share = 0.05
    feedback_alpha: Annotated[StrictFloat, Field(gt=0, lt=1)] = 0.05
    # True: hold until both revisions have min_feedback answers (else feedback is advisory:
    # without enough of it the other checks decide).
    require_feedback: StrictBool = False
    # True: when both feedback checks pass with enough answers and the canary's feedback accuracy
    # is at least stable's, a failed mean-confidence or class-mix check (proxies for
    # correctness) does not roll it back; it is reported as overridden.
    feedback_overrides_proxies: StrictBool = True


@dataclasses.dataclass(frozen=True)
class FeedbackFigures:
    """What users said about one revision's answers (the loop store), over the canary's period."""

    served: int = 0  # captured predictions
    answers: int = 0  # of those, with user feedback
    correct: int = 0  # of those, marked correct

    @property
    def wrong(self) -> int:
        return self.answers - self.correct

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.answers if self.answers else None

    @property
    def wrong_rate(self) -> float | None:
        return self.wrong / self.served if self.served else None


@dataclasses.dataclass
class Figures:
    """One revision's figures over the window."""

    revision: str
    requests: float = 0.0
    errors: float = 0.0
    p95_ms: float | None = None
    confidence: float | None = None
    classes: dict[str, float] = dataclasses.field(default_factory=dict)
    feedback: FeedbackFigures | None = None  # None: feedback not consulted

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests > 0 else 0.0

    def class_shares(self) -> dict[str, float]:
        total = sum(self.classes.values())
        return {k: v / total for k, v in self.classes.items()} if total > 0 else {}


def class_shift(a: dict[str, float], b: dict[str, float]) -> float:
    """Total variation distance between two class distributions (0 same, 1 disjoint)."""
    if not a or not b:
        return math.nan
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def class_shift_p_value(a: dict[str, float], b: dict[str, float]) -> float:
    """p-value that both revisions' predicted-class counts come from one distribution."""
    from scipy.stats import chi2_contingency

    classes = sorted(k for k in set(a) | set(b) if a.get(k, 0) + b.get(k, 0) > 0)
    table = [[max(0.0, a.get(k, 0.0)) for k in classes], [max(0.0, b.get(k, 0.0)) for k in classes]]
    if len(classes) < 2 or not all(sum(row) > 0 for row in table):
        return 0.0 if a and b and len(classes) >= 2 else math.nan
    return float(chi2_contingency(table)[1])


def worse_p_value(stable_bad: int, stable_good: int, canary_bad: int, canary_good: int) -> float:
    """One-sided Fisher exact test: p-value that the canary's share of bad outcomes is no higher
    than stable's (small p: the canary is worse beyond chance)."""
    from scipy.stats import fisher_exact

    table = [[canary_bad, canary_good], [stable_bad, stable_good]]
    if min(canary_bad + canary_good, stable_bad + stable_good) == 0:
        return math.nan
    return float(fisher_exact(table, alternative="greater")[1])


FEEDBACK_ACCURACY, WRONG_RATE = "feedback accuracy", "marked-wrong rate"
MEAN_CONFIDENCE, CLASS_MIX = "mean confidence", "class mix shift (TVD)"
PROXIES = (MEAN_CONFIDENCE, CLASS_MIX)  # stand-ins for correctness, which feedback measures


def feedback_checks(stable: FeedbackFigures, canary: FeedbackFigures, t: Thresholds) -> list[Check]:
    """Feedback accuracy and marked-wrong rate, canary vs stable; ``ok`` None below ``min_feedback``."""
    enough = min(stable.answers, canary.answers) >= t.min_feedback
    acc_ok: bool | None = None
    wrong_ok: bool | None = None
    acc_p = wrong_p = math.nan
    if enough:
        assert stable.accuracy is not None and canary.accuracy is not None
        acc_p = worse_p_value(stable.wrong, stable.correct, canary.wrong, canary.correct)
        acc_ok = (stable.accuracy - canary.accuracy <= t.max_feedback_accuracy_drop
                  or not acc_p < t.feedback_alpha)
        if stable.served and canary.served:
            assert stable.wrong_rate is not None and canary.wrong_rate is not None
            wrong_p = worse_p_value(stable.wrong, stable.served - stable.wrong, canary.wrong,
                                    canary.served - canary.wrong)
            wrong_ok = (canary.wrong_rate - stable.wrong_rate <= t.max_wrong_rate_increase
                        or not wrong_p < t.feedback_alpha)

    def cell(value: float | None, n: int) -> str:
        return f"{_fmt(value, '.3f')} n={n}"

    short = "" if enough else f"; n/a below {t.min_feedback} answers"
    return [
        Check(FEEDBACK_ACCURACY, cell(stable.accuracy, stable.answers), cell(canary.accuracy, canary.answers),
              f"drop <= {t.max_feedback_accuracy_drop} or p >= {t.feedback_alpha}"
              + (f", p={_fmt(acc_p, '.2g')}" if enough else short), acc_ok),
        Check(WRONG_RATE, cell(stable.wrong_rate, stable.served), cell(canary.wrong_rate, canary.served),
              f"+ <= {t.max_wrong_rate_increase} or p >= {t.feedback_alpha}"
              + (f", p={_fmt(wrong_p, '.2g')}" if enough else short), wrong_ok),
    ]


@dataclasses.dataclass
class Check:
    name: str
    stable: str
    canary: str
    limit: str
    ok: bool | None  # None: not enough data
    overridden: bool = False  # failed, but user feedback says the canary is at least as accurate


@dataclasses.dataclass
class Verdict:
    decision: str
    reasons: list[str]
    checks: list[Check]
    stable: Figures
    canary: Figures
    window: str

    def report(self) -> str:
        """The evidence, as a table a person reads before trusting the decision."""
        lines = [f"canary analysis over {self.window}: stable {self.stable.revision} vs canary "
                 f"{self.canary.revision}",
                 f"  {'check':<22} {'stable':>12} {'canary':>12}  {'limit':<34} result"]
        for c in self.checks:
            result = "n/a" if c.ok is None else ("ok" if c.ok else "FAIL")
            result += " (overridden by feedback)" if c.overridden else ""
            lines.append(f"  {c.name:<22} {c.stable:>12} {c.canary:>12}  {c.limit:<34} {result}")
        top = lambda f: ", ".join(f"{k} {v:.0%}" for k, v in  # noqa: E731
                                  sorted(f.class_shares().items(), key=lambda kv: -kv[1])[:3]) or "-"
        lines.append(f"  top classes  stable: {top(self.stable)}")
        lines.append(f"               canary: {top(self.canary)}")
        lines.append(f"decision: {self.decision.upper()}" + (f" ({'; '.join(self.reasons)})" if self.reasons else ""))
        return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def decide(stable: Figures, canary: Figures, t: Thresholds, window: str) -> Verdict:
    """Roll back on any failed comparison; hold while evidence is short; else promote."""
    checks: list[Check] = []
    enough = stable.requests >= t.min_requests and canary.requests >= t.min_requests
    checks.append(Check("requests", _fmt(stable.requests, ".0f"), _fmt(canary.requests, ".0f"),
                        f">= {t.min_requests} each", enough))
    err_delta = canary.error_rate - stable.error_rate
    checks.append(Check("5xx rate", _fmt(stable.error_rate, ".3f"), _fmt(canary.error_rate, ".3f"),
                        f"canary - stable <= {t.max_error_rate_increase}",
                        None if canary.requests == 0 else err_delta <= t.max_error_rate_increase))
    if stable.p95_ms is None or canary.p95_ms is None:
        lat_ok = None
    else:
        lat_ok = (canary.p95_ms <= stable.p95_ms * t.max_p95_latency_ratio
                  or canary.p95_ms - stable.p95_ms <= t.p95_latency_slack_ms)
    checks.append(Check("p95 latency ms", _fmt(stable.p95_ms, ".0f"), _fmt(canary.p95_ms, ".0f"),
                        f"<= x{t.max_p95_latency_ratio} or +{t.p95_latency_slack_ms:.0f} ms", lat_ok))
    if stable.confidence is None or canary.confidence is None:
        conf_ok = None
    else:
        conf_ok = stable.confidence - canary.confidence <= t.max_confidence_drop
    checks.append(Check(MEAN_CONFIDENCE, _fmt(stable.confidence, ".3f"), _fmt(canary.confidence, ".3f"),
                        f"drop <= {t.max_confidence_drop}", conf_ok))
    shift = class_shift(stable.class_shares(), canary.class_shares())
    p_value = class_shift_p_value(stable.classes, canary.classes)
    shift_ok = None if math.isnan(shift) else (shift <= t.max_class_shift
                                                or not p_value < t.class_shift_alpha)
    checks.append(Check(CLASS_MIX, "", f"{_fmt(shift, '.3f')} p={_fmt(p_value, '.2g')}",
                        f"<= {t.max_class_shift} or p >= {t.class_shift_alpha}", shift_ok))
    advisory: set[str] = set()
    if stable.feedback is not None and canary.feedback is not None:
        fb = feedback_checks(stable.feedback, canary.feedback, t)
        checks += fb
        if not t.require_feedback:
            advisory = {c.name for c in fb}
        if any(c.ok is False for c in fb):
            # min_feedback answers on each revision and a significant difference: evidence
            # enough on its own, however few requests Prometheus counted in its window.
            failed = [c.name for c in checks[1:] if c.ok is False]
            return Verdict(ROLLBACK, [f"{n} failed" for n in failed], checks, stable, canary, window)
        proxy_failed = [c for c in checks if c.name in PROXIES and c.ok is False]
        if proxy_failed and all(c.ok for c in fb) and t.feedback_overrides_proxies:
            assert stable.feedback.accuracy is not None and canary.feedback.accuracy is not None
            if canary.feedback.accuracy >= stable.feedback.accuracy:
                # Confidence and class mix stand in for correctness; the users' answers ARE
                # correctness. A canary that fixes what users found wrong (a retrain after
                # drift) changes its class mix on purpose.
                for c in proxy_failed:
                    c.overridden = True
        elif proxy_failed and t.require_feedback and any(c.ok is None for c in fb):
            hard = [c.name for c in checks[1:] if c.ok is False and c.name not in PROXIES]
            if not hard:
                return Verdict(HOLD, [f"{', '.join(c.name for c in proxy_failed)} failed: waiting for "
                                      f"{t.min_feedback} feedback answers per revision to judge"],
                               checks, stable, canary, window)
    failed = [c.name for c in checks[1:] if c.ok is False and not c.overridden]
    if failed and canary.requests > 0:
        # A canary that fails on the evidence it has is rolled back even before min_requests:
        # waiting would only expose more users to it. Too few requests -> only a hold.
        if enough or canary.requests >= max(10, t.min_requests // 2):
            return Verdict(ROLLBACK, [f"{n} failed" for n in failed], checks, stable, canary, window)
    if not enough:
        return Verdict(HOLD, [f"fewer than {t.min_requests} requests on a revision"], checks, stable,
                       canary, window)
    missing = [c.name for c in checks[1:] if c.ok is None and c.name not in advisory]
    if missing:
        return Verdict(HOLD, [f"no data for {', '.join(missing)}"], checks, stable, canary, window)
    return Verdict(PROMOTE, [f"{c.name} overridden by feedback" for c in checks if c.overridden], checks, stable,
                   canary, window)

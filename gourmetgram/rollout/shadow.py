"""Shadow analysis: the shadow revision against production, on the SAME requests.

A canary is judged on different requests than stable (a split); a shadow answers a copy of
each mirrored request, so its answers can be paired one to one with what the client got
(joined on the inference id) and compared without sampling noise between the groups:

* **agreement**: share of requests where both give the same top-1 label, with a 95%
  Wilson score interval (the lower bound is what must clear ``min_agreement``);
* **class mix**: total variation distance between the two predicted-class distributions,
  failing only when a chi-square test of homogeneity says it is not chance (as the canary's);
* **confidence**: mean top-1 confidence, and a two-sample Kolmogorov-Smirnov test of the two
  confidence distributions (scipy): a drop fails only when it is also significant;
* **accuracy** against labels (user feedback / annotations) where they exist: judged only
  with at least ``min_labelled`` labelled pairs, else reported as n/a.

:func:`decide` is pure (figures in, verdict out) and unit-tested; :func:`figures` computes
them from pairs. The verdict is READY (for a canary), NOT_READY (a check failed, with the
evidence) or HOLD (too few pairs).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Mapping

from gourmetgram.rollout.config import ShadowThresholds

READY, NOT_READY, HOLD = "ready", "not-ready", "hold"
Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (sane at 0, n and small n, unlike p +- z*se)."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def class_shift(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Total variation distance between two class distributions, given as counts or shares
    (each side is normalised first): 0 same, 1 disjoint."""
    total_a, total_b = sum(a.values()), sum(b.values())
    if total_a <= 0 or total_b <= 0:
        return math.nan
    return 0.5 * sum(abs(a.get(k, 0.0) / total_a - b.get(k, 0.0) / total_b) for k in set(a) | set(b))


def class_shift_p_value(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """p-value that both sides' predicted-class counts come from one distribution (chi-square
    test of homogeneity: one look at a fixed sample, as the shadow analysis takes it)."""
    from scipy.stats import chi2_contingency

    classes = sorted(k for k in set(a) | set(b) if a.get(k, 0) + b.get(k, 0) > 0)
    table = [[max(0.0, a.get(k, 0.0)) for k in classes], [max(0.0, b.get(k, 0.0)) for k in classes]]
    if len(classes) < 2 or not all(sum(row) > 0 for row in table):
        return 0.0 if a and b and len(classes) >= 2 else math.nan
    return float(chi2_contingency(table)[1])


def ks_p_value(a: list[float], b: list[float]) -> float:
    """Two-sample Kolmogorov-Smirnov p-value (nan with an empty sample)."""
    if not a or not b:
        return math.nan
    from scipy.stats import ks_2samp

    return float(ks_2samp(a, b).pvalue)


@dataclasses.dataclass(frozen=True)
class PairedAnswer:
    """One instance answered by both revisions (and its true label, when someone gave one)."""

    inference_id: str
    production: str
    production_confidence: float
    shadow: str
    shadow_confidence: float
    label: str | None = None


def paired_answers(pairs: Iterable[Mapping], labels: Mapping[str, str] | None = None) -> list[PairedAnswer]:
    """Flatten the gateway's pairs (``{"inference_id", "production": [...], "shadow": [...]}``,
    one entry per instance) into one :class:`PairedAnswer` per instance. A label applies to
    a single-instance request (feedback is given per inference id)."""
    labels = labels or {}
    out = []
    for pair in pairs:
        prod, shadow = pair.get("production") or [], pair.get("shadow") or []
        if len(prod) != len(shadow):
            continue  # not the same request shape: nothing to pair
        iid = str(pair.get("inference_id"))
        label = labels.get(iid) if len(prod) == 1 else None
        for p, s in zip(prod, shadow):
            out.append(PairedAnswer(iid, p["label"], float(p.get("confidence", math.nan)), s["label"],
                                    float(s.get("confidence", math.nan)), label))
    return out


def captured_answers(rows: Iterable[Mapping]) -> list[PairedAnswer]:
    """The capture store's comparisons (:meth:`gourmetgram.loop.store.Store.shadow_comparisons`:
    one row per captured sample, with the feedback/annotation label where there is one)."""
    nan = math.nan
    return [PairedAnswer(str(r["sample_id"]), str(r["production"]),
                         nan if r.get("production_confidence") is None else float(r["production_confidence"]),
                         str(r["shadow"]),
                         nan if r.get("shadow_confidence") is None else float(r["shadow_confidence"]),
                         r.get("label")) for r in rows]


@dataclasses.dataclass
class ShadowFigures:
    pairs: int = 0
    agreements: int = 0
    production_classes: dict[str, float] = dataclasses.field(default_factory=dict)
    shadow_classes: dict[str, float] = dataclasses.field(default_factory=dict)
    production_confidences: list[float] = dataclasses.field(default_factory=list)
    shadow_confidences: list[float] = dataclasses.field(default_factory=list)
    labelled: int = 0
    production_correct: int = 0
    shadow_correct: int = 0

    @property
    def agreement(self) -> float:
        return self.agreements / self.pairs if self.pairs else math.nan

    @property
    def agreement_ci(self) -> tuple[float, float]:
        return wilson(self.agreements, self.pairs)

    @staticmethod
    def _mean(values: list[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return sum(finite) / len(finite) if finite else math.nan

    @property
    def production_confidence(self) -> float:
        return self._mean(self.production_confidences)

    @property
    def shadow_confidence(self) -> float:
        return self._mean(self.shadow_confidences)

    @property
    def production_accuracy(self) -> float:
        return self.production_correct / self.labelled if self.labelled else math.nan

    @property
    def shadow_accuracy(self) -> float:
        return self.shadow_correct / self.labelled if self.labelled else math.nan


def figures(answers: Iterable[PairedAnswer]) -> ShadowFigures:
    f = ShadowFigures()
    prod_counts: Counter[str] = Counter()
    shadow_counts: Counter[str] = Counter()
    for a in answers:
        f.pairs += 1
        f.agreements += a.production == a.shadow
        prod_counts[a.production] += 1
        shadow_counts[a.shadow] += 1
        f.production_confidences.append(a.production_confidence)
        f.shadow_confidences.append(a.shadow_confidence)
        if a.label is not None:
            f.labelled += 1
            f.production_correct += a.production == a.label
            f.shadow_correct += a.shadow == a.label
    f.production_classes = {k: float(v) for k, v in prod_counts.items()}
    f.shadow_classes = {k: float(v) for k, v in shadow_counts.items()}
    return f


@dataclasses.dataclass
class Check:
    name: str
    production: str
    shadow: str
    limit: str
    ok: bool | None  # None: not enough data to judge


@dataclasses.dataclass
class ShadowVerdict:
    decision: str
    reasons: list[str]
    checks: list[Check]
    figures: ShadowFigures
    production: str = "production"
    shadow: str = "shadow"

    def report(self) -> str:
        f = self.figures
        lines = [f"shadow analysis: {self.shadow} vs {self.production} on the same {f.pairs} requests",
                 f"  {'check':<22} {'production':>12} {'shadow':>12}  {'limit':<34} result"]
        for c in self.checks:
            result = "n/a" if c.ok is None else ("ok" if c.ok else "FAIL")
            lines.append(f"  {c.name:<22} {c.production:>12} {c.shadow:>12}  {c.limit:<34} {result}")

        def top(classes: dict[str, float]) -> str:
            total = sum(classes.values()) or 1.0
            return ", ".join(f"{k} {v / total:.0%}" for k, v in
                             sorted(classes.items(), key=lambda kv: -kv[1])[:3]) or "-"

        lines.append(f"  top classes  production: {top(f.production_classes)}")
        lines.append(f"               shadow:     {top(f.shadow_classes)}")
        label = {READY: "READY FOR CANARY", NOT_READY: "NOT READY", HOLD: "HOLD"}[self.decision]
        lines.append(f"verdict: {label}" + (f" ({'; '.join(self.reasons)})" if self.reasons else ""))
        return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def decide(f: ShadowFigures, t: ShadowThresholds) -> ShadowVerdict:
    """Not ready on any failed check; hold while pairs are few; else ready for a canary.

    Low agreement alone does not fail a shadow that is more accurate on labelled pairs."""
    checks: list[Check] = []
    enough = f.pairs >= t.min_pairs
    checks.append(Check("pairs", "", str(f.pairs), f">= {t.min_pairs}", enough))
    judged = f.labelled >= t.min_labelled
    # Disagreeing is fine for a shadow that is right more often (a better model must differ).
    better = judged and f.shadow_accuracy > f.production_accuracy
    low, high = f.agreement_ci
    checks.append(Check("top-1 agreement", "", f"{_fmt(f.agreement, '.3f')}",
                        f"95% CI [{_fmt(low, '.3f')}, {_fmt(high, '.3f')}] low >= {t.min_agreement}",
                        None if f.pairs == 0 else (low >= t.min_agreement or better)))
    shift = class_shift(f.production_classes, f.shadow_classes)
    shift_p = class_shift_p_value(f.production_classes, f.shadow_classes)
    checks.append(Check("class mix shift (TVD)", "", f"{_fmt(shift, '.3f')} p={_fmt(shift_p, '.2g')}",
                        f"<= {t.max_class_shift} or chi2 p >= {t.class_shift_alpha}",
                        None if math.isnan(shift) else (shift <= t.max_class_shift
                                                        or not shift_p < t.class_shift_alpha)))
    drop = f.production_confidence - f.shadow_confidence
    ks_p = ks_p_value(f.production_confidences, f.shadow_confidences)
    checks.append(Check("mean confidence", _fmt(f.production_confidence, ".3f"),
                        f"{_fmt(f.shadow_confidence, '.3f')} p={_fmt(ks_p, '.2g')}",
                        f"drop <= {t.max_confidence_drop} or KS p >= {t.confidence_alpha}",
                        None if math.isnan(drop) else (drop <= t.max_confidence_drop
                                                       or not ks_p < t.confidence_alpha)))
    if judged:
        acc_ok: bool | None = f.production_accuracy - f.shadow_accuracy <= t.max_accuracy_drop
    else:
        acc_ok = None
    checks.append(Check(f"accuracy (n={f.labelled})", _fmt(f.production_accuracy, ".3f"),
                        _fmt(f.shadow_accuracy, ".3f"),
                        f"drop <= {t.max_accuracy_drop} (>= {t.min_labelled} labelled)", acc_ok))
    failed = [c.name for c in checks[1:] if c.ok is False]
    if failed and f.pairs >= max(10, t.min_pairs // 2):
        return ShadowVerdict(NOT_READY, [f"{n} failed" for n in failed], checks, f)
    if not enough:
        return ShadowVerdict(HOLD, [f"only {f.pairs} of {t.min_pairs} answer pairs so far"], checks, f)
    reasons = [] if acc_ok is not None else [f"accuracy not judged: {f.labelled} labelled pairs"]
    return ShadowVerdict(READY, reasons, checks, f)

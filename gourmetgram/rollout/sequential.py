"""Always-valid comparison of two revisions: e-values and confidence sequences from running counts.

The canary analysis looks every few seconds at counts that keep growing since the canary
started. A fixed-sample test (Fisher, chi-square) re-run at every look rejects a true null far
more often than its level ("peeking", Johari, Koomen, Pekelis & Walsh, KDD 2017). The tests here
are **e-processes**: their value ``E_t`` at any look, however many looks and whenever one stops,
satisfies ``P(sup_t E_t >= 1/alpha) <= alpha`` under the null (Ville's inequality), so the analysis
may look after every request and still roll back an identical canary with probability at most
``alpha``; ``min(1, 1/E_t)`` is an always-valid p-value.

**Model.** Each check is a share of "bad" outcomes per revision: 5xx per request, answers marked
wrong per feedback answer, answers marked wrong per served prediction, one minus the top-1
confidence per prediction, one class's share of predictions. Revision ``j`` (canary ``c``,
stable ``s``) has seen ``n_j`` outcomes ``X_i`` in ``[0, 1]`` with sum ``k_j`` and mean ``p_j``;
``delta = p_c - p_s`` is how much worse the canary is. Only ``(k, n)`` per revision is needed,
which is what Prometheus counters (and the loop store) give.

**E-value against a composite null** (``H0: lo <= delta <= hi``; "universal inference",
Wasserman, Ramdas & Balakrishnan, PNAS 2020, and its anytime-valid form in Ramdas, Grunwald,
Vovk & Shafer, Statistical Science 2023):

    E = M / sup_{(p_c, p_s) in H0} L(p_c, p_s),
    L(p_c, p_s) = prod_j p_j^k_j (1 - p_j)^(n_j - k_j),
    M = prod_j B(k_j + 1/2, n_j - k_j + 1/2) / B(1/2, 1/2)

``M`` is ``L`` averaged over independent Jeffreys Beta(1/2, 1/2) priors (the Krichevsky-Trofimov
mixture: no tuning, near-minimax regret). Why it is valid: for any fixed ``theta0 = (p_c, p_s)``,
``M_t / L_theta0`` is a nonnegative martingale under ``theta0`` when the outcomes are Bernoulli
(a likelihood ratio of a mixture against a point), and a supermartingale when they are merely
bounded in ``[0, 1]`` with those means: ``x -> (q/p)^x ((1-q)/(1-p))^(1-x)`` is convex, so its mean
under any law on ``[0, 1]`` with mean ``p`` is at most its mean under Bernoulli(p), which is 1
(Hoeffding 1963; the "sub-Bernoulli" condition of Howard, Ramdas, McAuliffe & Sekhon, Annals of
Statistics 2021). Dividing by the supremum over the null only makes ``E_t`` smaller than the
test supermartingale of the true ``theta0``, so Ville's inequality holds for ``E_t`` whatever the
true point in the null; the requests may interleave in any order and the traffic split may
change between looks (the split cancels from the likelihood ratio). Counts that Prometheus's
``increase()`` extrapolates slightly (fractions of a request) go in as they are: the Beta
functions take real arguments.

**The supremum** over ``delta`` in an interval: the profile log-likelihood ``l(delta) = max
log L`` subject to ``p_c - p_s = delta`` is concave in ``delta`` (a concave function maximised
over a linear constraint), so the supremum over the null is the unconstrained maximum when the
estimate ``k_c/n_c - k_s/n_s`` lies in it, else the profile at the nearer end. The constrained
maximum has a closed form (the root of a cubic: Farrington & Manning, Statistics in Medicine
1990, after Miettinen & Nurminen 1985), computed vectorised.

**Confidence sequence**: ``C_t = {delta : E_t(H0: delta) < 1/alpha}``, the values not rejected;
valid at all looks at once (``P(exists t: delta_true not in C_t) <= alpha``). ``log E(delta)`` is
convex in ``delta`` (minus a concave profile), so ``C_t`` is an interval, found by bisection.

**Several checks** (error rate, feedback accuracy, marked-wrong rate, mean confidence, class mix):
the rollback tests split the overall ``alpha`` evenly (Bonferroni: an identical canary is rolled
back by some check with probability at most the sum of the per-check levels, whatever the
dependence between checks). The class mix splits its share again over the classes (one
two-sided sequence per class share; the total variation distance is bounded from those).

**Why not a library**: of the packages that implement these (checked December 2026), ``expectation``
needs Python 3.12, ``savvi`` needs numpy 2 (alibi-detect pins numpy below 2 here), and ``confseq``
0.0.11 (2023, "early-stage, should not be considered stable") ships only as C++ source needing
Boost headers and an old pybind11, and pulls matplotlib, pandas and pytest in at run time. The
formulas above are a few lines over scipy's ``betaln``; ``tests/test_sequential.py`` checks them
against values by hand, a reference optimiser and seeded simulations of repeated looks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
from scipy.special import betaln, xlog1py, xlogy

JEFFREYS = 0.5  # Beta(1/2, 1/2) prior on each revision's share
_BISECTIONS = 50  # halvings of [-1, 1]: bounds to ~1e-15, far below what a report shows


def log_mixture(k: np.ndarray | float, n: np.ndarray | float) -> np.ndarray:
    """log of the Bernoulli likelihood ``p^k (1-p)^(n-k)`` averaged over Beta(1/2, 1/2)."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    return betaln(k + JEFFREYS, n - k + JEFFREYS) - betaln(JEFFREYS, JEFFREYS)


def log_likelihood(k: np.ndarray | float, n: np.ndarray | float, p: np.ndarray | float) -> np.ndarray:
    """``k log p + (n-k) log(1-p)`` with ``0 log 0 = 0``."""
    k, n, p = np.asarray(k, float), np.asarray(n, float), np.asarray(p, float)
    return xlogy(k, p) + xlog1py(n - k, -p)


def restricted_mle(kc, nc, ks, ns, delta) -> tuple[np.ndarray, np.ndarray]:
    """The maximum-likelihood ``(p_c, p_s)`` subject to ``p_c - p_s = delta`` (vectorised).

    The closed form of Farrington & Manning (Statistics in Medicine, 1990), after Miettinen &
    Nurminen (1985): with ``theta = n_s/n_c`` the constrained ``p_c`` is the root in
    ``[max(0, delta), min(1, 1 + delta)]`` of a cubic ``a x^3 + b x^2 + c x + d``, taken in
    trigonometric form (checked against a numerical optimiser in tests/test_sequential.py).
    Where a revision has no outcomes the other decides alone.
    """
    kc, nc, ks, ns, delta = (np.asarray(v, float) for v in (kc, nc, ks, ns, delta))
    kc, nc, ks, ns, delta = np.broadcast_arrays(kc, nc, ks, ns, delta)
    low, high = np.maximum(0.0, delta), np.minimum(1.0, 1.0 + delta)  # feasible p_c
    with np.errstate(divide="ignore", invalid="ignore"):
        pc_hat, ps_hat = kc / nc, ks / ns
        theta = ns / nc
        a = 1.0 + theta
        b = -(1.0 + theta + pc_hat + theta * ps_hat + delta * (theta + 2.0))
        c = delta * delta + delta * (2.0 * pc_hat + theta + 1.0) + pc_hat + theta * ps_hat
        d = -pc_hat * delta * (1.0 + delta)
        v = b ** 3 / (27.0 * a ** 3) - b * c / (6.0 * a * a) + d / (2.0 * a)
        u = np.sign(v) * np.sqrt(np.maximum(b * b / (9.0 * a * a) - c / (3.0 * a), 0.0))
        cosine = np.clip(np.where(u == 0, 0.0, v / u ** 3), -1.0, 1.0)
        w = (math.pi + np.arccos(cosine)) / 3.0
        pc = 2.0 * u * np.cos(w) - b / (3.0 * a)
    only_c = (ns <= 0) & (nc > 0)
    only_s = (nc <= 0) & (ns > 0)
    pc = np.where(only_c, kc / np.where(nc > 0, nc, 1.0), pc)
    pc = np.where(only_s, ks / np.where(ns > 0, ns, 1.0) + delta, pc)
    pc = np.where((nc <= 0) & (ns <= 0), low, pc)
    pc = np.where(np.isfinite(pc), pc, low)
    pc = np.clip(pc, low, high)
    return pc, pc - delta


def log_profile(kc, nc, ks, ns, delta) -> np.ndarray:
    """``max log L`` over ``p_c - p_s = delta``."""
    pc, ps = restricted_mle(kc, nc, ks, ns, delta)
    return log_likelihood(kc, nc, pc) + log_likelihood(ks, ns, ps)


def _estimate(kc, nc, ks, ns) -> np.ndarray:
    kc, nc, ks, ns = (np.asarray(v, float) for v in (kc, nc, ks, ns))
    with np.errstate(divide="ignore", invalid="ignore"):
        pc = np.where(nc > 0, kc / np.where(nc > 0, nc, 1.0), 0.5)
        ps = np.where(ns > 0, ks / np.where(ns > 0, ns, 1.0), 0.5)
    return pc - ps


def log_e_value(kc, nc, ks, ns, lo=-1.0, hi=1.0) -> np.ndarray:
    """log E against ``H0: lo <= p_c - p_s <= hi`` (see the module docstring); vectorised."""
    kc, nc, ks, ns, lo, hi = np.broadcast_arrays(*(np.asarray(v, float) for v in (kc, nc, ks, ns, lo, hi)))
    kc, ks = np.clip(kc, 0.0, nc), np.clip(ks, 0.0, ns)  # extrapolated counters may overshoot a little
    nearest = np.clip(_estimate(kc, nc, ks, ns), lo, hi)  # the profile is concave: sup at the nearest point
    return log_mixture(kc, nc) + log_mixture(ks, ns) - log_profile(kc, nc, ks, ns, nearest)


def confidence_sequence(kc, nc, ks, ns, alpha) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of ``{delta : E(H0: delta) < 1/alpha}`` for ``p_c - p_s`` (vectorised bisection)."""
    kc, nc, ks, ns, alpha = np.broadcast_arrays(*(np.asarray(v, float) for v in (kc, nc, ks, ns, alpha)))
    kc, ks = np.clip(kc, 0.0, nc), np.clip(ks, 0.0, ns)
    level = -np.log(alpha)
    base = log_mixture(kc, nc) + log_mixture(ks, ns)
    centre = _estimate(kc, nc, ks, ns)

    def rejected(delta: np.ndarray) -> np.ndarray:
        return base - log_profile(kc, nc, ks, ns, delta) >= level

    bounds = []
    for end in (-1.0, 1.0):
        inside, outside = centre.copy(), np.full_like(centre, end)
        reaches_end = ~rejected(outside)
        for _ in range(_BISECTIONS):
            mid = (inside + outside) / 2.0
            out = rejected(mid)
            outside = np.where(out, mid, outside)
            inside = np.where(out, inside, mid)
        bounds.append(np.where(reaches_end, end, inside))
    return bounds[0], bounds[1]


def _scalar(x: np.ndarray) -> float:
    return float(np.asarray(x).reshape(-1)[0])


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Bad outcomes on the canary and on stable: ``canary_bad`` of ``canary_n`` and so on."""

    canary_bad: float
    canary_n: float
    stable_bad: float
    stable_n: float

    @property
    def difference(self) -> float:
        """``p_c - p_s`` as estimated (how much worse the canary looks)."""
        return _scalar(_estimate(self.canary_bad, self.canary_n, self.stable_bad, self.stable_n))

    def e_value(self, lo: float = -1.0, hi: float = 1.0) -> float:
        """E against ``H0: lo <= p_c - p_s <= hi`` (inf when the data exclude the null outright)."""
        log_e = _scalar(log_e_value(self.canary_bad, self.canary_n, self.stable_bad, self.stable_n, lo, hi))
        return math.exp(min(log_e, 700.0))

    def e_worse(self, tolerance: float = 0.0) -> float:
        """Evidence that the canary is worse than stable by more than ``tolerance``."""
        return self.e_value(-1.0, tolerance)

    def e_no_worse(self, margin: float) -> float:
        """Evidence that the canary is worse by less than ``margin`` (non-inferiority)."""
        return self.e_value(margin, 1.0)

    def sequence(self, alpha: float) -> tuple[float, float]:
        """The ``1 - alpha`` confidence sequence for ``p_c - p_s`` at this look."""
        lo, hi = confidence_sequence(self.canary_bad, self.canary_n, self.stable_bad, self.stable_n, alpha)
        return _scalar(lo), _scalar(hi)


@dataclasses.dataclass(frozen=True)
class MixShift:
    """The confidence sequence for the total variation distance between two class mixes."""

    estimate: float  # TVD of the observed shares
    lower: float
    upper: float


def _class_counts(canary: Mapping[str, float], stable: Mapping[str, float]):
    classes = sorted(k for k in set(canary) | set(stable) if canary.get(k, 0.0) + stable.get(k, 0.0) > 0)
    kc = np.array([max(0.0, canary.get(k, 0.0)) for k in classes])
    ks = np.array([max(0.0, stable.get(k, 0.0)) for k in classes])
    return kc, float(kc.sum()), ks, float(ks.sum())


def class_mix(canary: Mapping[str, float], stable: Mapping[str, float], alpha: float) -> MixShift:
    """Bounds for the TVD ``1/2 sum_k |share_c,k - share_s,k|`` at ``1 - alpha``, from one two-sided
    sequence per class share at ``alpha / K`` (Bonferroni over the K classes either revision
    answered): all of them cover their class's difference at once with probability ``1 - alpha``,
    and then the TVD lies between half the sum of each interval's distance from 0 and half the
    sum of its largest absolute value. K counts the classes answered so far (a class's counter
    appears with its first answer): the model's class count once each class has been answered.
    """
    kc, nc, ks, ns = _class_counts(canary, stable)
    if nc <= 0 or ns <= 0:
        return MixShift(math.nan, math.nan, math.nan)
    if len(kc) == 1:  # both answered one and the same class: the mixes are equal
        return MixShift(0.0, 0.0, 0.0)
    lo, hi = confidence_sequence(kc, nc, ks, ns, alpha / len(kc))
    estimate = 0.5 * float(np.abs(kc / nc - ks / ns).sum())
    lower = 0.5 * float(np.maximum(0.0, np.maximum(lo, -hi)).sum())
    upper = 0.5 * float(np.maximum(np.abs(lo), np.abs(hi)).sum())
    return MixShift(estimate, lower, min(upper, 1.0))


def tvd_lower_bound(canary: Mapping[str, float], stable: Mapping[str, float], alpha: float) -> float:
    """:func:`class_mix`'s lower bound, computing sequences only for the classes whose share is
    shown to differ (the others add 0): what the decision needs at every look, cheaply."""
    kc, nc, ks, ns = _class_counts(canary, stable)
    if nc <= 0 or ns <= 0:
        return math.nan
    if len(kc) == 1:
        return 0.0
    level = alpha / len(kc)
    moved = log_e_value(kc, nc, ks, ns, 0.0, 0.0) >= -math.log(level)
    if not moved.any():
        return 0.0
    lo, hi = confidence_sequence(kc[moved], nc, ks[moved], ns, level)
    return 0.5 * float(np.maximum(0.0, np.maximum(lo, -hi)).sum())


def mix_changed(canary: Mapping[str, float], stable: Mapping[str, float]) -> float:
    """E-value that some class share differs between the revisions: the mean of the per-class
    e-values against "this share is the same" (a mean of e-values is an e-value for the
    intersection of their nulls, so no Bonferroni factor is needed)."""
    kc, nc, ks, ns = _class_counts(canary, stable)
    if nc <= 0 or ns <= 0:
        return math.nan
    if len(kc) == 1:
        return 1.0  # no evidence of any change
    return float(np.mean(np.exp(np.minimum(log_e_value(kc, nc, ks, ns, 0.0, 0.0), 700.0))))


def p_value(e: float) -> float:
    """The always-valid p-value of an e-value (nan stays nan)."""
    return e if math.isnan(e) else (1.0 if e <= 1.0 else 1.0 / e)

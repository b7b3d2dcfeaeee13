"""Canary verdicts under repeated looks: false rollbacks of identical canaries, and how fast worse
ones are caught, for the fixed-window analysis (as it was) and the sequential one, side by side.

No servers: each simulated rollout draws, request by request, the outcomes the analysis reads —
whether a request failed (5xx), the predicted class and its confidence, whether the prediction was
right, whether the user answered and what they said — and files them as the counters Prometheus and
the loop store would hold. Every ``interval_s`` (``configs/rollout.yaml``) both analyses are fed
what they query: the fixed-window one the counts of the last ``window`` (exact window sums, no
scrape jitter: the most favourable reading of it) and the feedback since the canary started; the
sequential one the counts since the canary started. The verdicts come from the REAL decision code:
:func:`gourmetgram.rollout.decision.decide` and, for the old analysis, the verbatim copy of its
``decide`` kept in ``benchmarks/fixed_window_analysis.py``; the steps from the REAL
:class:`gourmetgram.rollout.analysis.StagedRollout` (the same walk ``rollout auto`` took before).

The world (printed with the results): requests arrive as a Poisson stream at ``--rate`` per second;
the canary starts at the first step of ``auto.steps`` and takes its share of them; stable answers
right with probability 0.85 and fails 0.5% of requests; classes follow a skewed 11-class mix, a
wrong answer lands on another class at random; confidences are Beta(8, 2) when right and Beta(3, 3)
when wrong; users answer as the simulated users of ``gourmetgram_app/local/simulate.py`` do (0.3
when the tag is right, 0.6 when wrong, 2% press the other button). Both revisions' p95 latency is
the same (the SLO check is not what is measured here). Scenarios: an identical canary (A/A), a
canary less accurate by 2, 5, 10 and 20 points, and one with 1 and 5 points more 5xx. Old and new
see the same request streams (same seed per rollout).

Usage::

    python benchmarks/canary_error_rates.py [--rollouts 500] [--bad-rollouts 200] [--rate 20]
        [--seed 0] [--no-feedback] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixed_window_analysis as old  # noqa: E402

from gourmetgram.config import check_duration, override  # noqa: E402
from gourmetgram.rollout import decision as new  # noqa: E402
from gourmetgram.rollout.analysis import PROMOTE, RAISE, ROLLBACK, StagedRollout  # noqa: E402
from gourmetgram.rollout.config import RolloutConfig, load_config  # noqa: E402
from gourmetgram.rollout.queries import FeedbackFigures, Figures  # noqa: E402
from gourmetgram_app.local.simulate import Behaviour  # noqa: E402

HELD = "held"  # no decision before auto.timeout_s
STABLE_ACCURACY = 0.85
STABLE_ERROR_RATE = 0.005
CLASS_WEIGHTS = np.array([994, 429, 1500, 986, 848, 1325, 440, 280, 855, 1500, 709], float)  # skewed, 11 classes
CLASS_NAMES = [f"class_{i:02d}" for i in range(len(CLASS_WEIGHTS))]
CONFIDENCE_RIGHT, CONFIDENCE_WRONG = (8.0, 2.0), (3.0, 3.0)
P95_MS = 40.0


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    accuracy_drop: float = 0.0
    error_increase: float = 0.0

    @property
    def identical(self) -> bool:
        return self.accuracy_drop == 0 and self.error_increase == 0


SCENARIOS = (
    Scenario("A/A (identical)"),
    Scenario("accuracy -2 points", accuracy_drop=0.02),
    Scenario("accuracy -5 points", accuracy_drop=0.05),
    Scenario("accuracy -10 points", accuracy_drop=0.10),
    Scenario("accuracy -20 points", accuracy_drop=0.20),
    Scenario("5xx +1 point", error_increase=0.01),
    Scenario("5xx +5 points", error_increase=0.05),
)


class Stream:
    """One revision's requests in arrival order, as running totals: what its counters read after
    its first ``i`` requests (``total(i)``), for any ``i``."""

    FIELDS = ("errors", "served", "confidence", "answers", "said_correct")

    def __init__(self, rng: np.random.Generator, n: int, accuracy: float, error_rate: float,
                 users: Behaviour) -> None:
        failed = rng.random(n) < error_rate
        served = ~failed
        right = served & (rng.random(n) < accuracy)
        true = rng.choice(len(CLASS_WEIGHTS), size=n, p=CLASS_WEIGHTS / CLASS_WEIGHTS.sum())
        other = (true + rng.integers(1, len(CLASS_WEIGHTS), size=n)) % len(CLASS_WEIGHTS)
        predicted = np.where(right, true, other)
        confidence = np.where(right, rng.beta(*CONFIDENCE_RIGHT, size=n), rng.beta(*CONFIDENCE_WRONG, size=n))
        answered = served & (rng.random(n) < np.where(right, users.feedback_rate, users.feedback_rate_when_wrong))
        said_correct = answered & (right ^ (rng.random(n) < users.mistaken_rate))
        columns = {"errors": failed, "served": served, "confidence": np.where(served, confidence, 0.0),
                   "answers": answered, "said_correct": said_correct}
        self.cumulative = {k: np.concatenate([[0.0], np.cumsum(v, dtype=float)]) for k, v in columns.items()}
        classes = np.zeros((n, len(CLASS_WEIGHTS)))
        classes[np.arange(n), predicted] = served
        self.classes = np.vstack([np.zeros(len(CLASS_WEIGHTS)), np.cumsum(classes, axis=0)])

    def between(self, start: int, end: int) -> dict:
        got = {k: float(v[end] - v[start]) for k, v in self.cumulative.items()}
        got["requests"] = float(end - start)
        got["classes"] = {name: float(c) for name, c in zip(CLASS_NAMES, self.classes[end] - self.classes[start])
                          if c > 0}
        return got


def _figures(make_figures: Callable, make_feedback: Callable, name: str, window: dict, since_start: dict,
             with_feedback: bool):
    served = window["served"]
    return make_figures(name, window["requests"], window["errors"], P95_MS,
                        window["confidence"] / served if served > 0 else None, window["classes"],
                        make_feedback(int(since_start["served"]), int(since_start["answers"]),
                                      int(since_start["said_correct"])) if with_feedback else None)


def _new_decision(config: RolloutConfig, with_feedback: bool) -> Callable:
    def judge(canary: Stream, stable: Stream, nc: int, ns: int, window_c: int, window_s: int) -> str:
        figs = []
        for name, stream, n in (("stable", stable, ns), ("canary", canary, nc)):
            counts = stream.between(0, n)
            fig = _figures(Figures, FeedbackFigures, name, counts, counts, with_feedback)
            fig.predictions = counts["served"]
            figs.append(fig)
        return new.decide(figs[0], figs[1], config.analysis, config.analysis.window).decision
    return judge


def _old_decision(thresholds: old.Thresholds, with_feedback: bool) -> Callable:
    def judge(canary: Stream, stable: Stream, nc: int, ns: int, window_c: int, window_s: int) -> str:
        figs = [_figures(old.Figures, old.FeedbackFigures, name, stream.between(start, n), stream.between(0, n),
                         with_feedback)
                for name, stream, n, start in (("stable", stable, ns, window_s), ("canary", canary, nc, window_c))]
        return old.decide(figs[0], figs[1], thresholds, thresholds.window).decision
    return judge


@dataclasses.dataclass(frozen=True)
class Outcome:
    decision: str  # rollback, promote or held
    seconds: float
    canary_requests: int
    requests: int


def rollout(seed: int, scenario: Scenario, judge: Callable, config: RolloutConfig, rate: float,
            window_s: int) -> Outcome:
    """One simulated `rollout auto` from the first step until a decision or the timeout."""
    auto = config.auto
    users = Behaviour()
    streams = np.random.default_rng([seed, 1])
    size = int(rate * auto.timeout_s * 1.2) + 1000
    stable = Stream(streams, size, STABLE_ACCURACY, STABLE_ERROR_RATE, users)
    canary = Stream(streams, size, STABLE_ACCURACY - scenario.accuracy_drop,
                    STABLE_ERROR_RATE + scenario.error_increase, users)
    traffic = np.random.default_rng([seed, 2])
    share = auto.steps[0] / 100
    staged = StagedRollout(list(auto.steps[1:]), auto.passes_per_step)
    # running request counts per second since the canary started: [0] is the start
    nc_at, ns_at = [0], [0]
    interval = max(1, round(auto.interval_s))
    t = 0
    while t + interval <= auto.timeout_s:
        arrivals = traffic.poisson(rate, size=interval)
        to_canary = traffic.binomial(arrivals, share)
        nc_at.extend((nc_at[-1] + np.cumsum(to_canary)).tolist())
        ns_at.extend((ns_at[-1] + np.cumsum(arrivals - to_canary)).tolist())
        t += interval
        nc, ns = min(nc_at[-1], size), min(ns_at[-1], size)
        back = max(0, t - window_s)
        action, step = staged.after(judge(canary, stable, nc, ns, nc_at[back], ns_at[back]))
        if action in (ROLLBACK, PROMOTE):
            return Outcome(action, t, nc, nc + ns)
        if action == RAISE:
            assert step is not None
            share = step / 100
    return Outcome(HELD, t, nc_at[-1], nc_at[-1] + ns_at[-1])


def summarize(outcomes: list[Outcome]) -> dict:
    n = len(outcomes)
    shares = {d: sum(o.decision == d for o in outcomes) / n for d in (ROLLBACK, PROMOTE, HELD)}

    def median(decision: str, field: str) -> float | None:
        values = [getattr(o, field) for o in outcomes if o.decision == decision]
        return statistics.median(values) if values else None

    return {"rollouts": n, "rolled_back": shares[ROLLBACK], "promoted": shares[PROMOTE], "held": shares[HELD],
            "median_canary_requests_to_rollback": median(ROLLBACK, "canary_requests"),
            "median_requests_to_rollback": median(ROLLBACK, "requests"),
            "median_seconds_to_rollback": median(ROLLBACK, "seconds"),
            "median_canary_requests_to_promotion": median(PROMOTE, "canary_requests"),
            "median_seconds_to_promotion": median(PROMOTE, "seconds")}


def _cell(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict) -> str:
    """The side-by-side table (markdown, as it goes on docs/rollout.md)."""
    lines = ["| canary | analysis | rolled back | promoted | held at timeout | median canary requests to "
             "rollback (all requests) | median s to rollback | median canary requests (s) to promotion |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for scenario, by_analysis in results.items():
        for analysis, s in by_analysis.items():
            lines.append(f"| {scenario} | {analysis} | {s['rolled_back']:.1%} | {s['promoted']:.1%} | "
                         f"{s['held']:.1%} | {_cell(s['median_canary_requests_to_rollback'])} "
                         f"({_cell(s['median_requests_to_rollback'])}) | {_cell(s['median_seconds_to_rollback'])} | "
                         f"{_cell(s['median_canary_requests_to_promotion'])} "
                         f"({_cell(s['median_seconds_to_promotion'])}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rollouts", type=int, default=500, help="A/A rollouts (default: %(default)s)")
    p.add_argument("--bad-rollouts", type=int, default=200, help="rollouts per worse canary (default: %(default)s)")
    p.add_argument("--rate", type=float, default=20.0, help="requests per second (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", help="rollout config (default: configs/rollout.yaml)")
    p.add_argument("--no-feedback", action="store_true", help="judge on Prometheus figures only (the demo's "
                   "`rollout auto`), not also on user feedback (`rollout auto --feedback`)")
    p.add_argument("--require-feedback", action="store_true", help="hold until the feedback shows the canary "
                   "no worse (`analysis.require_feedback`, as the loop's canary runs)")
    p.add_argument("--quick", action="store_true", help="40 A/A and 20 rollouts per worse canary (a smoke run)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if args.rollouts < 1 or args.bad_rollouts < 1 or args.rate <= 0:
        p.error("--rollouts and --bad-rollouts must be at least 1 and --rate above 0")
    aa, bad = (40, 20) if args.quick else (args.rollouts, args.bad_rollouts)
    config = load_config(args.config)
    if args.require_feedback:
        config = override(config, "analysis", require_feedback=True)
    window_s = _seconds(config.analysis.window)
    with_feedback = not args.no_feedback
    # the old analysis at the thresholds main shipped (configs/rollout.yaml before the change)
    judges = {"fixed-window (before)": _old_decision(old.Thresholds(window=config.analysis.window), with_feedback),
              "sequential (now)": _new_decision(config, with_feedback)}
    auto = config.auto
    print(f"canary error rates: {aa} A/A rollouts, {bad} per worse canary; {args.rate:g} requests/s, canary "
          f"steps {list(auto.steps)}% then promote, a look every {auto.interval_s:g} s, {auto.passes_per_step} "
          f"passing looks per step, timeout {auto.timeout_s:g} s; fixed-window analysis over "
          f"{config.analysis.window}; sequential alpha {config.analysis.alpha:g}; "
          f"{'with' if with_feedback else 'without'} user feedback"
          f"{' (required)' if config.analysis.require_feedback and with_feedback else ''}; load average before "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    results: dict = {}
    started = time.monotonic()
    for scenario in SCENARIOS:
        count = aa if scenario.identical else bad
        results[scenario.name] = {}
        for name, judge in judges.items():
            outcomes = [rollout(args.seed * 1_000_003 + i, scenario, judge, config, args.rate, window_s)
                        for i in range(count)]
            results[scenario.name][name] = summarize(outcomes)
        print(f"  {scenario.name}: done ({time.monotonic() - started:.0f} s)", flush=True)
    print()
    print(table(results))
    aa_new = results[SCENARIOS[0].name]["sequential (now)"]["rolled_back"]
    aa_old = results[SCENARIOS[0].name]["fixed-window (before)"]["rolled_back"]
    print(f"\nA/A false-rollback rate: fixed-window {aa_old:.1%}, sequential {aa_new:.1%} "
          f"(target for the sequential analysis: at most {config.analysis.alpha:.0%})")
    print(f"load average after {os.getloadavg()[0]:.1f}; {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": {"rollouts": aa, "bad_rollouts": bad, "rate": args.rate,
                                                            "seed": args.seed, "feedback": with_feedback,
                                                            "require_feedback": config.analysis.require_feedback},
                                               "results": results}, indent=2))
    return 0


def _seconds(duration: str) -> int:
    check_duration(duration)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    number = duration.rstrip("smhdwy")
    return max(1, round(float(number) * units[duration[len(number):]]))


if __name__ == "__main__":
    sys.exit(main())

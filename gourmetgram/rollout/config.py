"""The rollout's settings (``configs/rollout.yaml``), validated when loaded.

``analysis``: how the canary is judged against the stable revision (see
:mod:`gourmetgram.rollout.decision` for what each limit means to the decision);
``auto``: the staged raise of ``rollout auto``; ``shadow``: the shadow comparison.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, StrictBool, StrictFloat, StrictStr

from gourmetgram.config import (
    SECTION,
    STRICT,
    AtLeastOne,
    Duration,
    NonNegative,
    Percent,
    Positive,
    Share,
    check_duration,
    load_file,
)
from gourmetgram.constants import CONFIG_DIR
from gourmetgram.errors import ConfigError

DEFAULT_CONFIG = CONFIG_DIR / "rollout.yaml"
Level = Annotated[StrictFloat, Field(gt=0, lt=1)]


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The canary analysis. Comparative checks are always-valid sequential tests on the counts
    since the canary started; ``window`` is the p95 latency's range (an SLO-style check)."""

    __pydantic_config__ = STRICT
    window: Duration = "2m"
    # Raise or promote only once each revision served this many requests (rollbacks need none).
    min_requests: AtLeastOne = 50
    # Chance that an identical canary is ever rolled back by the comparative checks, however
    # often the analysis looks: split evenly over them (Bonferroni). Also the level of the
    # "no worse" evidence each harm check needs before a raise.
    alpha: Level = 0.05
    # Harm checks: rolled back when shown worse than stable at all; raised once shown worse by
    # less than this margin (non-inferiority).
    max_error_rate_increase: Share = 0.02
    max_p95_latency_ratio: Annotated[StrictFloat, Field(ge=1)] = 1.5
    p95_latency_slack_ms: NonNegative = 100.0
    # Proxy checks (stand-ins for correctness): rolled back only when shown beyond the tolerance.
    max_confidence_drop: Share = 0.1
    max_class_shift: Share = 0.25
    # User feedback (loop store): no verdict below min_feedback answers on each revision.
    min_feedback: AtLeastOne = 30
    max_feedback_accuracy_drop: Share = 0.05
    max_wrong_rate_increase: Share = 0.05
    # True: hold until the feedback shows the canary no worse (else feedback is advisory:
    # without enough of it the other checks decide; it can still roll the canary back).
    require_feedback: StrictBool = False
    # True: when both feedback checks show the canary no worse and its feedback accuracy is at
    # least stable's, a failed mean-confidence or class-mix check (proxies for correctness)
    # does not roll it back; it is reported as overridden.
    feedback_overrides_proxies: StrictBool = True


def _increasing(steps: tuple[int, ...]) -> tuple[int, ...]:
    if list(steps) != sorted(set(steps)):
        raise ValueError("must be strictly increasing percentages, e.g. [10, 50]")
    return steps


@dataclasses.dataclass(frozen=True)
class AutoConfig:
    """``rollout auto``: the canary's share takes the values of ``steps`` in turn, one step per
    ``passes_per_step`` analyses in a row that show it no worse, then it is promoted."""

    __pydantic_config__ = STRICT
    steps: Annotated[tuple[Percent, ...], AfterValidator(_increasing)] = (10, 50)
    passes_per_step: AtLeastOne = 2
    interval_s: Positive = 30.0
    timeout_s: Positive = 1800.0


@dataclasses.dataclass(frozen=True)
class ShadowThresholds:
    """Shadow vs production on the same requests (:mod:`gourmetgram.rollout.shadow`)."""

    __pydantic_config__ = STRICT
    min_pairs: AtLeastOne = 50
    # The 95% Wilson interval's LOWER bound of the agreement rate must reach this.
    min_agreement: Share = 0.7
    max_class_shift: Share = 0.25
    class_shift_alpha: Level = 0.01
    max_confidence_drop: Share = 0.1
    confidence_alpha: Level = 0.01
    min_labelled: AtLeastOne = 20
    max_accuracy_drop: Share = 0.02


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    __pydantic_config__ = STRICT
    analysis: Annotated[Thresholds, SECTION] = Thresholds()
    auto: Annotated[AutoConfig, SECTION] = AutoConfig()
    shadow: Annotated[ShadowThresholds, SECTION] = ShadowThresholds()
    source: StrictStr = "<defaults>"


def load_config(path: str | Path | None = None) -> RolloutConfig:
    """``configs/rollout.yaml`` (or ``path``), validated."""
    return load_file(RolloutConfig, path or DEFAULT_CONFIG, "rollout config")


def save_config(config: RolloutConfig, path: Path) -> Path:
    """``config`` as a file ``load_config`` reads back (``rollout auto --config``)."""
    import json

    import yaml

    data = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as lists
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def check_window(window: str) -> str:
    """``window`` if it is a Prometheus duration, else a :class:`ConfigError`."""
    try:
        return check_duration(window)
    except ValueError as exc:
        raise ConfigError(f"window {window!r} {exc}") from None

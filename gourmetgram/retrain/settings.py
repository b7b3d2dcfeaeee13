"""``configs/retrain.yaml``: triggers, the degradation rule, guard rails, what a run trains on.

Validated once, at load, like every config (:func:`gourmetgram.config.from_mapping`): unknown
keys, wrong types, out-of-range values and malformed durations are refused with the key path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, StrictBool, StrictInt, StrictStr

from gourmetgram.config import (
    SECTION,
    STRICT,
    AtLeastOne,
    Count,
    Duration,
    Name,
    Positive,
    Share,
    load_file,
)
from gourmetgram.constants import PRODUCTION, STAGES

_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(value: str) -> float:
    """``30s`` / ``6h`` / ``7d`` -> seconds (the format :data:`gourmetgram.config.Duration` checks)."""
    unit = "ms" if value.endswith("ms") else value[-1]
    return int(value[: -len(unit)]) * _UNIT_S[unit]


def _stage(value: str) -> str:
    if value not in STAGES:
        raise ValueError(f"must be one of {', '.join(STAGES)}")
    return value


def _cron(value: str) -> str:
    # KFP recurring runs take six fields (seconds first); the backend checks the rest.
    if len(value.split()) != 6:
        raise ValueError("must be a six-field cron expression (seconds first), e.g. '0 0 3 * * 1'")
    return value


@dataclasses.dataclass(frozen=True)
class TriggerSettings:
    __pydantic_config__ = STRICT
    schedule_every: Duration = "7d"
    cron: Annotated[StrictStr, AfterValidator(_cron)] = "0 0 3 * * 1"
    drift_alerts: tuple[Name, ...] = ("GourmetGramDriftDetected", "GourmetGramLabelDrift")
    degradation_alerts: tuple[Name, ...] = ("GourmetGramProductionAccuracyLow", "GourmetGramEstimatedAccuracyLow")


@dataclasses.dataclass(frozen=True)
class DegradationSettings:
    __pydantic_config__ = STRICT
    threshold: Share = 0.7
    window: Duration = "1h"
    min_feedback: AtLeastOne = 20
    stage: Annotated[StrictStr, AfterValidator(_stage)] = PRODUCTION


@dataclasses.dataclass(frozen=True)
class GuardSettings:
    __pydantic_config__ = STRICT
    min_new_labels: Count = 60  # configs/retrain.yaml says why
    cooldown: Duration = "6h"


@dataclasses.dataclass(frozen=True)
class RunSettings:
    __pydantic_config__ = STRICT
    dataset_uri: StrictStr = ""
    # Where `loop export` keeps the labelled production data for runs on a KFP backend (e.g.
    # s3://gourmetgram/production/latest); "" = none. Local runs export it fresh each time.
    production_dataset_uri: StrictStr = ""
    config: Name = "demo"
    epochs: Annotated[StrictInt, Field(ge=-1)] = -1
    experiment: Name = "gourmetgram-retrain"


@dataclasses.dataclass(frozen=True)
class StagingSettings:
    """The staging gate of a local run: the compiled staging-gate pipeline's parameters."""

    __pydantic_config__ = STRICT
    slo: Name = "slo"  # configs/slo.yaml, or a path
    users: AtLeastOne = 4
    run_time: Duration = "10s"
    # Requests sent to the new staging stack before Locust starts, so the first inference's
    # one-time costs (ONNX Runtime's first run, connection set-up) are not in the measured p95.
    warmup_requests: Count = 20


@dataclasses.dataclass(frozen=True)
class CanarySettings:
    """The canary of a local run: ``rollout auto --feedback`` with the rollout config's steps
    (``auto.steps``: the canary starts at the first and is raised through the rest), these
    fields over the config's. A local stack's traffic is thin, so the windows are short."""

    __pydantic_config__ = STRICT
    rollout_config: Name = "rollout"
    window: Duration = "15s"
    min_requests: AtLeastOne = 15
    min_feedback: AtLeastOne = 15
    require_feedback: StrictBool = True  # judged on what users say about each revision
    # The 5xx margin the canary must be shown within. With no errors on either revision, showing
    # "no worse than +0.02" at the analysis's level takes about 650 canary requests; +0.1 about
    # 100, what a local stack's users send in a couple of minutes at 10%. None: the config's.
    max_error_rate_increase: Share | None = None
    # The feedback checks' margins, likewise: "no worse than 5 points" on the feedback accuracy
    # takes a few hundred answers per revision; the canary's 10% of a local stack's users gives
    # about one answer every three seconds. None: the config's.
    max_feedback_accuracy_drop: Share | None = None
    max_wrong_rate_increase: Share | None = None
    interval_s: Positive = 4.0
    timeout_s: Positive = 600.0

    def rollout(self):
        """The rollout config a local canary is judged by: ``rollout_config`` with these fields
        over it (the loop's canary, and the demo's canaries on the same local stack)."""
        from gourmetgram.config import override, resolve_config_path
        from gourmetgram.rollout.analysis import load_config

        config = load_config(resolve_config_path(self.rollout_config))
        config = override(config, "analysis", window=self.window, min_requests=self.min_requests,
                          min_feedback=self.min_feedback, require_feedback=self.require_feedback,
                          max_error_rate_increase=self.max_error_rate_increase,
                          max_feedback_accuracy_drop=self.max_feedback_accuracy_drop,
                          max_wrong_rate_increase=self.max_wrong_rate_increase)
        return override(config, "auto", interval_s=self.interval_s, timeout_s=self.timeout_s)


@dataclasses.dataclass(frozen=True)
class ReleaseSettings:
    """What a LOCAL run does after the new version is registered (the receiver started with a
    production gateway): staging stack + staging gate, then the canary, then promote or roll
    back. On the cluster these are the staging-gate pipeline and ``rollout auto --cluster``."""

    __pydantic_config__ = STRICT
    staging: Annotated[StagingSettings, SECTION] = StagingSettings()
    canary: Annotated[CanarySettings, SECTION] = CanarySettings()


@dataclasses.dataclass(frozen=True)
class RetrainSettings:
    __pydantic_config__ = STRICT
    triggers: Annotated[TriggerSettings, SECTION] = TriggerSettings()
    degradation: Annotated[DegradationSettings, SECTION] = DegradationSettings()
    guards: Annotated[GuardSettings, SECTION] = GuardSettings()
    run: Annotated[RunSettings, SECTION] = RunSettings()
    release: Annotated[ReleaseSettings, SECTION] = ReleaseSettings()
    source: str = "<defaults>"


def load_retrain_settings(name_or_path: str | Path = "retrain") -> RetrainSettings:
    return load_file(RetrainSettings, name_or_path, "retrain config")

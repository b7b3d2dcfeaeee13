"""``configs/loop.yaml``: sampling, feedback limits, the selection policy, export shares.

Where things live (database URL, object store URL, Label Studio URL and token) is not in the
file: it comes from the environment, because it differs per machine and holds secrets.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path

from gourmetgram.bundle import Bundle
from gourmetgram.config import STRICT, load_file
from gourmetgram.constants import STAGES
from gourmetgram.errors import ConfigError
from gourmetgram.tracking import home

# Environment variables (one definition; the README lists them).
ENV_DB_URL = "GOURMETGRAM_LOOP_DB"  # SQLAlchemy URL; default sqlite under $GOURMETGRAM_HOME/loop/
ENV_OBJECTS_URL = "GOURMETGRAM_LOOP_OBJECTS"  # file:///dir or s3://bucket/prefix
ENV_S3_ENDPOINT = "GOURMETGRAM_S3_ENDPOINT_URL"  # MinIO / any S3 endpoint; creds from AWS_* vars
ENV_LS_URL = "LABEL_STUDIO_URL"
ENV_LS_TOKEN = "LABEL_STUDIO_API_KEY"
ENV_LS_USERNAME = "LABEL_STUDIO_USERNAME"
ENV_LS_PASSWORD = "LABEL_STUDIO_PASSWORD"


@dataclasses.dataclass(frozen=True)
class CaptureSettings:
    __pydantic_config__ = STRICT  # unknown keys are refused
    sampling: dict = dataclasses.field(default_factory=lambda: {s: 1.0 for s in STAGES})
    max_in_flight: int = 64
    max_event_bytes: int = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class FeedbackSettings:
    __pydantic_config__ = STRICT  # unknown keys are refused
    max_body_bytes: int = 4096
    wait_for_capture_s: float = 2.0
    # A user's correction of a prediction at least this confident waits for an annotator
    # (policy reason "confirm") before it is a label; below it, it is a label at once.
    confirm_confidence: float = 0.8
    # Corrections one client may send per UTC day (more: 429); 0 refuses every correction.
    daily_corrections_per_client: int = 100
    # Callers (addresses or networks) whose X-Client-Id header names the client; anyone else is
    # the client by its address.
    client_id_from: tuple[str, ...] = ("127.0.0.1/32", "::1/128")


@dataclasses.dataclass(frozen=True)
class PolicySettings:
    __pydantic_config__ = STRICT  # unknown keys are refused
    low_confidence: float = 0.6
    wrong: bool = True
    flagged: bool = True
    out_of_distribution: bool = True
    random_share: float = 0.1
    daily_budget: int = 200
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    __pydantic_config__ = STRICT  # unknown keys are refused
    evaluation_share: float = 0.2
    validation_share: float = 0.1
    # The production evaluation set the differential gate's improvement test needs to have power
    # (evaluation.differential.improvement_min_images of the run configs; a test keeps them equal):
    # reserved from the production images' training split, up to max_evaluation_share of them.
    min_evaluation_images: int = 30
    max_evaluation_share: float = 0.5


@dataclasses.dataclass(frozen=True)
class LabelStudioSettings:
    __pydantic_config__ = STRICT  # unknown keys are refused
    project_title: str = "GourmetGram production samples"


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    __pydantic_config__ = STRICT  # unknown keys are refused
    capture: CaptureSettings = CaptureSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    policy: PolicySettings = PolicySettings()
    export: ExportSettings = ExportSettings()
    labelstudio: LabelStudioSettings = LabelStudioSettings()
    source: str = "<defaults>"

    def sampling_rate(self, stage: str | None) -> float:
        return float(self.capture.sampling.get(stage or "", 1.0))


def load_loop_settings(name_or_path: str | Path = "loop") -> LoopSettings:
    s = load_file(LoopSettings, name_or_path, "loop config")
    problems = []
    for stage, rate in s.capture.sampling.items():
        if stage not in STAGES:
            problems.append(f"capture.sampling: unknown stage {stage!r} (stages: {', '.join(STAGES)})")
        elif isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            problems.append(f"capture.sampling.{stage} must be a number in [0, 1]")
    if s.capture.max_in_flight < 1:
        problems.append("capture.max_in_flight must be >= 1")
    if not 0 <= s.feedback.confirm_confidence <= 1:
        problems.append("feedback.confirm_confidence must be in [0, 1]")
    if s.feedback.daily_corrections_per_client < 0:
        problems.append("feedback.daily_corrections_per_client must be >= 0")
    for network in s.feedback.client_id_from:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            problems.append(f"feedback.client_id_from: {network!r} is not an IP address or network")
    if not 0 <= s.policy.low_confidence <= 1 or not 0 <= s.policy.random_share <= 1:
        problems.append("policy.low_confidence and policy.random_share must be in [0, 1]")
    if s.policy.daily_budget < 0:
        problems.append("policy.daily_budget must be >= 0")
    e = s.export
    if e.evaluation_share <= 0 or e.validation_share <= 0 or e.evaluation_share + e.validation_share >= 1:
        problems.append("export shares must be > 0 and sum to less than 1 (the rest is training)")
    if e.min_evaluation_images < 0:
        problems.append("export.min_evaluation_images must be >= 0")
    if not e.evaluation_share <= e.max_evaluation_share < 1:
        problems.append("export.max_evaluation_share must be within [evaluation_share, 1)")
    if problems:
        raise ConfigError(f"{s.source}: " + "; ".join(problems))
    return s


def loop_home() -> Path:
    path = home() / "loop"
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get(ENV_DB_URL) or f"sqlite:///{loop_home() / 'loop.db'}"


def objects_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get(ENV_OBJECTS_URL) or (loop_home() / "objects").as_uri()


def class_names_from(bundle: str | Path | None = None, names: str | None = None) -> list[str]:
    """Class names from ``a,b,c``, or from a bundle's ``model_spec.json`` (read as JSON: the capture
    sink's image has no torch)."""
    import json

    if names:
        return [n.strip() for n in names.split(",") if n.strip()]
    if bundle is None:
        raise ConfigError("name the classes: an exported bundle or a comma-separated list")
    path = Bundle(Path(bundle)).spec_path
    try:
        return list(json.loads(path.read_text())["class_names"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the class names from {path} ({exc}); pass an exported bundle "
                          "or the class names") from None

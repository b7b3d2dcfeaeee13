"""``configs/loop.yaml``: sampling, feedback limits, the selection policy, export shares.

Where things live (database URL, object store URL, Label Studio URL and token) is not in the
file: it comes from the environment, because it differs per machine and holds secrets.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from gourmetgram.bundle import Bundle
from gourmetgram.config import STRICT, AtLeastOne, Count, Name, NonNegative, Share, load_file
from gourmetgram.constants import STAGES
from gourmetgram.environment import environment
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


def _stage(value: str) -> str:
    if value not in STAGES:
        raise ValueError(f"unknown stage {value!r} (stages: {', '.join(STAGES)})")
    return value


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or network") from None
    return value


Stage = Annotated[StrictStr, AfterValidator(_stage)]
Network = Annotated[StrictStr, AfterValidator(_network)]
OpenShare = Annotated[StrictFloat, Field(gt=0, lt=1)]  # a split's share: neither none nor all


@dataclasses.dataclass(frozen=True)
class CaptureSettings:
    __pydantic_config__ = STRICT  # unknown keys are refused
    sampling: dict[Stage, Share] = dataclasses.field(default_factory=lambda: {s: 1.0 for s in STAGES})
    max_in_flight: AtLeastOne = 64
    max_event_bytes: AtLeastOne = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class FeedbackSettings:
    __pydantic_config__ = STRICT  # unknown keys are refused
    max_body_bytes: AtLeastOne = 4096
    wait_for_capture_s: NonNegative = 2.0
    # A user's correction of a prediction at least this confident waits for an annotator
    # (policy reason "confirm") before it is a label; below it, it is a label at once.
    confirm_confidence: Share = 0.8
    # Corrections one client may send per UTC day (more: 429); 0 refuses every correction.
    daily_corrections_per_client: Count = 100
    # Callers (addresses or networks) whose X-Client-Id header names the client; anyone else is
    # the client by its address.
    client_id_from: tuple[Network, ...] = ("127.0.0.1/32", "::1/128")


@dataclasses.dataclass(frozen=True)
class PolicySettings:
    __pydantic_config__ = STRICT  # unknown keys are refused
    low_confidence: Share = 0.6
    wrong: StrictBool = True
    flagged: StrictBool = True
    out_of_distribution: StrictBool = True
    random_share: Share = 0.1
    daily_budget: Count = 200
    seed: StrictInt = 0


def _export_shares(e: "ExportSettings") -> "ExportSettings":
    if e.evaluation_share + e.validation_share >= 1:
        raise ValueError("evaluation_share + validation_share must be below 1 (the rest is training)")
    if e.max_evaluation_share < e.evaluation_share:
        raise ValueError("max_evaluation_share must be at least evaluation_share")
    return e


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    __pydantic_config__ = STRICT  # unknown keys are refused
    evaluation_share: OpenShare = 0.2
    validation_share: OpenShare = 0.1
    # The production evaluation set the differential gate's improvement test needs to have power
    # (evaluation.differential.improvement_min_images of the run configs; a test keeps them equal):
    # reserved from the production images' training split, up to max_evaluation_share of them.
    min_evaluation_images: Count = 30
    max_evaluation_share: OpenShare = 0.5


@dataclasses.dataclass(frozen=True)
class LabelStudioSettings:
    __pydantic_config__ = STRICT  # unknown keys are refused
    project_title: Name = "GourmetGram production samples"


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """configs/loop.yaml: every bound is a field's constraint, checked when the file is loaded."""

    __pydantic_config__ = STRICT  # unknown keys are refused
    capture: CaptureSettings = CaptureSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    policy: PolicySettings = PolicySettings()
    export: Annotated[ExportSettings, AfterValidator(_export_shares)] = ExportSettings()
    labelstudio: LabelStudioSettings = LabelStudioSettings()
    source: str = "<defaults>"

    def sampling_rate(self, stage: str | None) -> float:
        return float(self.capture.sampling.get(stage or "", 1.0))


def load_loop_settings(name_or_path: str | Path = "loop") -> LoopSettings:
    return load_file(LoopSettings, name_or_path, "loop config")


def loop_home() -> Path:
    path = home() / "loop"
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_url(explicit: str | None = None) -> str:
    return explicit or environment().loop_db or f"sqlite:///{loop_home() / 'loop.db'}"


def objects_url(explicit: str | None = None) -> str:
    return explicit or environment().loop_objects or (loop_home() / "objects").as_uri()


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

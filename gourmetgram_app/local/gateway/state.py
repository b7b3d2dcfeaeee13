"""The gateway's rollout state on disk, so a restarted gateway comes back with its rollout.

On the cluster the rollout lives in the InferenceService object (``canaryTrafficPercent``,
``status.latestRolledoutRevision``) and Knative's revisions, none of which dies with the
ingress. Locally the gateway plays Knative's controller, so it writes what it decided after
every change, to ``rollout.json`` (:data:`gourmetgram.control.ROLLOUT_STATE_FILE`) in the
stack's state folder (next to the control token):
the revisions it routes (name, bundle, registered version), the canary percentage, the
rolled-out revision and the shadow (bundle, version, percent). A gateway the supervisor
restarts reads it back and starts the canary and shadow pairs again
(:meth:`gourmetgram_app.local.gateway.control.Controller.restore`); ``serve`` removes the
file when it starts and stops, so a new stack starts from its manifest.

The file is written whole (temporary file + rename), so a gateway killed mid-write leaves the
previous version, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

FORMAT = 1
log = logging.getLogger("gourmetgram.gateway")


@dataclasses.dataclass(frozen=True)
class SavedRevision:
    name: str
    bundle: str | None = None
    version: str | None = None
    started: float | None = None  # when a canary began taking traffic (the analysis counts from then)


@dataclasses.dataclass(frozen=True)
class SavedShadow:
    bundle: str
    percent: int
    version: str | None = None


@dataclasses.dataclass(frozen=True)
class RolloutState:
    """What a gateway needs to route as it did: KServe's state plus the revisions' bundles."""

    inferenceservice: str
    revisions: tuple[SavedRevision, ...]
    rolled_out: str
    canary_percent: int | None = None
    shadow: SavedShadow | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "inferenceservice": self.inferenceservice,
                "canary_traffic_percent": self.canary_percent,
                "latest_rolledout_revision": self.rolled_out,
                "revisions": [dataclasses.asdict(r) for r in self.revisions],
                "shadow": dataclasses.asdict(self.shadow) if self.shadow else None}

    @classmethod
    def from_json(cls, data: Any) -> "RolloutState":
        """Raises ValueError (KeyError, TypeError) on anything but what :meth:`to_json` writes."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a rollout state of format {FORMAT}")
        percent = data["canary_traffic_percent"]
        if percent is not None and (isinstance(percent, bool) or not isinstance(percent, int)
                                    or not 0 <= percent <= 100):
            raise ValueError(f"canary_traffic_percent {percent!r} is not in 0..100")
        revisions = tuple(SavedRevision(str(r["name"]), r.get("bundle"), r.get("version"), _time(r.get("started")))
                          for r in data["revisions"])
        shadow = data.get("shadow")
        return cls(str(data["inferenceservice"]), revisions, str(data["latest_rolledout_revision"]),
                   percent, SavedShadow(str(shadow["bundle"]), int(shadow["percent"]), shadow.get("version"))
                   if shadow else None)


def _time(value: Any) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"started {value!r} is not a Unix time")
    return None if value is None else float(value)


def save(path: Path, state: RolloutState) -> None:
    """Write ``state`` to ``path`` atomically (0600: it names the model store's bundles)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state.to_json(), f, indent=1)
    os.replace(tmp, path)


def load(path: Path, inferenceservice: str) -> RolloutState | None:
    """The state saved at ``path`` for this InferenceService; None when there is none, or it is
    unreadable or another service's (said in the log: the gateway then starts afresh)."""
    if not path.is_file():
        return None
    try:
        state = RolloutState.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("ignoring the rollout state in %s (%s: %s); starting from the given revisions",
                  path, type(exc).__name__, exc)
        return None
    if state.inferenceservice != inferenceservice:
        log.error("ignoring the rollout state in %s: it is %s's, this gateway serves %s",
                  path, state.inferenceservice, inferenceservice)
        return None
    return state

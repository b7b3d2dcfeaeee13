"""What serves where during a rollout, and the backends that change it (local gateway, cluster)."""

from __future__ import annotations

import dataclasses
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class RolloutState:
    """The stable (prev) and canary (latest) revisions of the transformer.

    ``canary_started``: when the canary began taking traffic (Unix seconds), where the backend
    knows it; the analysis counts both revisions' outcomes from then on."""

    inferenceservice: str
    namespace: str
    configuration: str
    model_name: str
    stable: str | None
    canary: str | None
    canary_percent: int | None
    revisions: tuple[dict, ...] = ()
    canary_started: float | None = None


class RolloutBackend(Protocol):
    """The local gateway or the cluster's InferenceService."""

    def state(self) -> RolloutState: ...
    def set_percent(self, percent: int) -> None: ...
    def promote(self) -> None: ...
    def rollback(self) -> None: ...

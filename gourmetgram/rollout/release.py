"""The release steps on any rollout backend (the local gateway or the cluster's InferenceService),
with the registry's aliases kept in step: canary -> ``canary``, promote -> ``production``, a
rollback clears ``canary``. So MLflow always says what serves where.

``gourmetgram rollout`` and the loop's cycle both call these; each takes ``out`` for what it
says (the CLI prints, the cycle records).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from gourmetgram import constants
from gourmetgram.errors import BadInput
from gourmetgram.rollout.analysis import PROMOTE, run_auto
from gourmetgram.rollout.config import RolloutConfig
from gourmetgram.rollout.prometheus import PrometheusClient
from gourmetgram.rollout.queries import FeedbackSource

Out = Callable[[str], None]


def canary_version(backend: Any) -> str | None:
    """The registry version the canary serves, as recorded on the revision/InferenceService."""
    if hasattr(backend, "raw_status"):
        revisions = backend.raw_status().get("revisions", [])
        return revisions[-1].get("version") if revisions else None
    from gourmetgram.rollout.kube import VERSION_ANNOTATION

    annotations = backend.get().get("spec", {}).get("predictor", {}).get("annotations") or {}
    return annotations.get(VERSION_ANNOTATION)


def move_aliases(decision: str, version: str | None, out: Out = print) -> None:
    """Move the registry aliases to match a promote or a rollback of ``version``."""
    if version is None:
        return
    from gourmetgram import registry

    if decision == "promote":
        registry.set_stage(constants.PRODUCTION, int(version))
        registry.clear_stage(constants.CANARY)
        out(f"registry: production -> version {version}; canary alias cleared")
    else:
        if registry.version_for(constants.CANARY) == int(version):
            registry.clear_stage(constants.CANARY)
        out(f"registry: canary alias cleared (version {version} rolled back)")


def start_canary(backend: Any, percent: int, version: int | None = None, bundle: str | None = None,
                 out: Out = print) -> None:
    """A new canary of registry ``version`` (or of ``bundle``) at ``percent``; alias ``canary``."""
    from gourmetgram import registry

    if version is not None:
        bundle = registry.bundle_for(int(version))
    if bundle is None:
        raise BadInput("a canary needs a registry version or a bundle")
    out(f"starting canary {('version ' + str(version)) if version is not None else bundle} at {percent}% ...")
    backend.canary(bundle, percent, version)
    if version is not None:
        registry.set_stage(constants.CANARY, int(version))
        out(f"registry: canary -> version {version}")


def promote(backend: Any, out: Out = print) -> None:
    version = canary_version(backend)
    backend.promote()
    out("promoted: the latest revision serves all traffic")
    move_aliases("promote", version, out)


def rollback(backend: Any, out: Out = print) -> None:
    version = canary_version(backend)
    backend.rollback()
    out("rolled back: canaryTrafficPercent 0, all traffic to the previous revision")
    move_aliases("rollback", version, out)


def auto(backend: Any, client: PrometheusClient, config: RolloutConfig, feedback: FeedbackSource | None = None,
         out: Out = print) -> bool:
    """The staged canary driven by the evidence (:func:`run_auto`), aliases moved with its
    decision; True when it promoted."""
    version = canary_version(backend)
    decision = run_auto(backend, client, config, out=out,
                        on_promote=lambda: move_aliases("promote", version, out),
                        on_rollback=lambda: move_aliases("rollback", version, out), feedback=feedback)
    return decision == PROMOTE


@contextlib.contextmanager
def prometheus_for(url: str | None, gateway: str | None = None, detector: str | None = None,
                   cluster: bool = False, out: Out = print) -> Iterator[PrometheusClient]:
    """The Prometheus at ``url``, or (local stack only) a fresh local one scraping ``gateway``
    (and ``detector``) every second, stopped afterwards."""
    from gourmetgram.rollout.prometheus import LocalPrometheus

    if url:
        yield PrometheusClient(url)
        return
    if cluster:
        raise BadInput("--cluster needs --prometheus URL (the cluster's Prometheus)")
    if not gateway:
        raise BadInput("a local Prometheus needs the gateway's URL to scrape")
    local = LocalPrometheus(gateway, detector_url=detector).start()
    out(f"started a local Prometheus at {local.url} (scraping every 1 s)")
    try:
        yield local.client()
    finally:
        local.stop()

"""Where each revision of the local gateway listens, and how Prometheus finds them.

A :class:`Revision` is one Knative revision as the gateway sees it: its transformer's URL, its
Triton's HTTP and metrics URLs, its traffic share and tag. :func:`http_sd_targets` lists every
revision's metrics endpoints in Prometheus HTTP service-discovery form
(``GET /_gourmetgram/targets``), so the local Prometheus follows canaries as they come and go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from urllib.parse import urlsplit

from gourmetgram.errors import BadInput


@dataclasses.dataclass
class Revision:
    """One Knative revision of the transformer: where it listens and its share of traffic.

    ``tag`` is ``prev``/``latest`` while a canary is configured (KServe's tag routing);
    ``percent`` is the traffic share in 0..100. ``bundle``/``version`` say what model it
    serves, ``triton_metrics_url`` where its predictor's metrics are.
    """

    name: str
    transformer_url: str
    percent: int = 100
    tag: str | None = None
    bundle: str | None = None
    version: str | None = None
    triton_metrics_url: str | None = None
    triton_url: str | None = None  # for the readiness probe
    started: float | None = None  # Unix time a canary began taking traffic (the analysis counts from then)

    @classmethod
    def parse(cls, text: str) -> "Revision":
        """``NAME=URL`` (the CLI form)."""
        name, sep, url = text.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise BadInput(f"revision {text!r} is not NAME=http://HOST:PORT")
        return cls(name=name, transformer_url=url.rstrip("/"))

    def public(self) -> dict:
        return dataclasses.asdict(self)


def http_sd_targets(revisions: Iterable[Revision]) -> list[dict]:
    """Prometheus HTTP service discovery: every revision's transformer and Triton metrics."""
    groups = []
    for r in revisions:
        labels = {"gourmetgram_revision": r.name}
        groups.append({"targets": [urlsplit(r.transformer_url).netloc],
                       "labels": {**labels, "gourmetgram_component": "transformer"}})
        if r.triton_metrics_url:
            groups.append({"targets": [urlsplit(r.triton_metrics_url).netloc],
                           "labels": {**labels, "gourmetgram_component": "predictor"}})
    return groups

"""Structured JSON log lines carrying the inference id, one per hop (gateway, transformer,
capture, detector), so one request can be followed across processes::

    grep '"inference_id": "3f2c..."' $GOURMETGRAM_HOME/logs/serve-staging/*.log

Each line is one JSON object: ``ts`` (UTC, ISO 8601), ``service``, ``event``,
``inference_id`` and the fields of the event. They go to stderr (the service's log file
locally, the container log on the cluster, where a log collector parses JSON lines).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

_LOGGER = logging.getLogger("gourmetgram.trace")
INFERENCE_ID_HEADER = "x-inference-id"


def _configure() -> None:
    if _LOGGER.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    _LOGGER.addHandler(handler)
    _LOGGER.setLevel(logging.INFO)
    _LOGGER.propagate = False  # never mixed into a framework's own log format


def log_json(service: str, event: str, inference_id: str | None, **fields) -> None:
    """Write one JSON line; never raises (a log line must not fail a request)."""
    try:
        _configure()
        record = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                  "service": service, "event": event, "inference_id": inference_id, **fields}
        _LOGGER.info(json.dumps(record, default=str, separators=(",", ":")))
    except Exception:  # noqa: BLE001
        pass


def inference_id_of(headers) -> str | None:
    """The id a hop was given: ``X-Inference-Id`` (set by the gateway) or the logger's ``ce-id``."""
    if not headers:
        return None
    lowered = {str(k).lower(): v for k, v in dict(headers).items()}
    return lowered.get(INFERENCE_ID_HEADER) or lowered.get("ce-id")

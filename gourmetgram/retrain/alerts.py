"""Alertmanager's webhook payload (version 4) -> retrain reasons.

Alertmanager POSTs ``{"version": "4", "status": "firing"|"resolved", "alerts": [{"status",
"labels": {"alertname", ...}, "annotations", "startsAt", ...}], "groupLabels", ...}``. Only
*firing* alerts count; resolved ones and alerts we do not map are acknowledged and ignored
(so Alertmanager does not retry them). A body that is not such a payload is refused with a
:class:`PayloadError` (the receiver answers 400 with its message).
"""

from __future__ import annotations

from typing import Any

from gourmetgram.retrain.policy import DEGRADATION, DRIFT
from gourmetgram.retrain.settings import TriggerSettings

STATUSES = ("firing", "resolved")


class PayloadError(ValueError):
    """Not an Alertmanager webhook payload (the message says what is wrong)."""


def reasons_from(payload: Any, triggers: TriggerSettings) -> tuple[list[str], list[str]]:
    """``(reasons, alert names that fired)`` from one webhook body (already JSON-decoded)."""
    if not isinstance(payload, dict):
        raise PayloadError("the body must be a JSON object (Alertmanager webhook payload, version 4)")
    version = payload.get("version")
    if version is not None and str(version) != "4":
        raise PayloadError(f"unsupported webhook payload version {version!r} (expected \"4\")")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("'alerts' must be a list")
    mapping = {name: DRIFT for name in triggers.drift_alerts}
    mapping.update({name: DEGRADATION for name in triggers.degradation_alerts})
    reasons: list[str] = []
    names: list[str] = []
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise PayloadError(f"alerts[{i}] must be an object")
        status = alert.get("status", payload.get("status"))
        if status not in STATUSES:
            raise PayloadError(f"alerts[{i}].status must be one of {', '.join(STATUSES)}, got {status!r}")
        labels = alert.get("labels")
        if not isinstance(labels, dict) or not isinstance(labels.get("alertname"), str):
            raise PayloadError(f"alerts[{i}].labels.alertname is missing")
        name = labels["alertname"]
        if status == "firing" and name in mapping:
            names.append(name)
            if mapping[name] not in reasons:
                reasons.append(mapping[name])
    return reasons, names

"""Drive the local stack's rollout through the gateway's control endpoint.

The gateway plays Knative's controller locally (``/_gourmetgram/rollout``): a canary is a
new revision (its own Triton + transformer, started from the bundle) at a percentage;
promote and rollback only move traffic. This client is what ``gourmetgram rollout``
uses without ``--cluster``; it sends the stack's control token (found from the gateway's
address, see :mod:`gourmetgram.control`) with every change.
"""

from __future__ import annotations

import httpx

from gourmetgram.errors import BadInput, DependencyUnavailable
from gourmetgram.rollout.state import RolloutState

CONTROL_PATH = "/_gourmetgram/rollout"
SHADOW_PATH = "/_gourmetgram/shadow"
# How long a client waits for a new canary (or shadow) pair: the gateway supervises its first start
# and retries a failed one with back-off (gourmetgram_app.local.supervisor.RestartPolicy.worst_give_up_s,
# 5 x 180 s plus back-offs of 1+2+4+8+16 s = 931 s; a test keeps this at least that), so an earlier client timeout
# would report a failure while the pair may still come up.
CANARY_START_TIMEOUT_S = 1000.0


class LocalRollout:
    """:class:`gourmetgram.rollout.state.RolloutBackend` for a running local stack."""

    def __init__(self, gateway_url: str, token: str | None = None) -> None:
        """``token``: the stack's control token; None reads it when a change is sent."""
        self.gateway_url = gateway_url.rstrip("/")
        self._token = token

    def _call(self, method: str, body: dict | None = None, timeout_s: float = 30.0) -> dict:
        from gourmetgram import control

        url = self.gateway_url + CONTROL_PATH
        headers = {}
        if method != "GET":  # reading the status needs no token; changing it does
            if self._token is None:
                self._token = control.token_for_gateway(self.gateway_url)
            headers = control.bearer(self._token)
        try:
            r = httpx.request(method, url, json=body, headers=headers, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise DependencyUnavailable(f"the local gateway at {self.gateway_url} is not reachable ({exc}); "
                                        "start the stack with `gourmetgram serve --stage production`") from exc
        if r.status_code == 404:
            raise BadInput(f"{self.gateway_url} has no rollout endpoint; is it the gourmetgram gateway?")
        try:
            data = r.json()
        except ValueError:
            raise BadInput(f"{url} answered {r.status_code}: {r.text[:200]}") from None
        if r.status_code == 503:
            raise DependencyUnavailable(f"rollout {body and body.get('action')}: {data.get('error', data)}")
        if r.status_code != 200:
            raise BadInput(f"rollout {body and body.get('action')}: {data.get('error', data)}")
        return data

    def raw_status(self) -> dict:
        return self._call("GET")

    def state(self) -> RolloutState:
        return state_from_status(self.raw_status())

    def canary(self, bundle: str, percent: int, version: int | str | None = None) -> dict:
        return self._call("POST", {"action": "canary", "bundle": str(bundle), "percent": percent,
                                   "version": None if version is None else str(version)},
                          timeout_s=CANARY_START_TIMEOUT_S)

    def set_percent(self, percent: int) -> None:
        self._call("POST", {"action": "percent", "percent": percent})

    def promote(self) -> None:
        self._call("POST", {"action": "promote"}, timeout_s=120.0)

    def rollback(self) -> None:
        self._call("POST", {"action": "rollback"})

    # -- shadow (mirrored traffic, answers never served) ---------------------------------------
    def shadow_start(self, bundle: str, percent: int, version: int | str | None = None) -> dict:
        return self._call("POST", {"action": "shadow", "bundle": str(bundle), "percent": percent,
                                   "version": None if version is None else str(version)},
                          timeout_s=CANARY_START_TIMEOUT_S)

    def shadow_percent(self, percent: int) -> dict:
        return self._call("POST", {"action": "shadow", "percent": percent})

    def shadow_stop(self) -> dict:
        return self._call("POST", {"action": "shadow_stop"}, timeout_s=120.0)

    def shadow_detail(self) -> dict:
        """The shadow's status, its processes and the production/shadow answer pairs kept."""
        from gourmetgram import control

        if self._token is None:
            self._token = control.token_for_gateway(self.gateway_url)
        url = self.gateway_url + SHADOW_PATH
        try:
            r = httpx.get(url, headers=control.bearer(self._token), timeout=30.0)
        except httpx.HTTPError as exc:
            raise BadInput(f"the local gateway at {self.gateway_url} is not reachable ({exc})") from exc
        if r.status_code != 200:
            raise BadInput(f"{url} answered {r.status_code}: {r.text[:200]}")
        return r.json()


def state_from_status(status: dict) -> RolloutState:
    revisions = tuple(status.get("revisions", []))
    stable = status.get("latest_rolledout_revision")
    latest = status.get("latest_revision")
    canary = latest if latest != stable and status.get("canary_traffic_percent") is not None else None
    started = next((r.get("started") for r in revisions if canary and r.get("name") == canary), None)
    return RolloutState(
        inferenceservice=status["inferenceservice"], namespace=status["namespace"],
        configuration=status["configuration"], model_name=status["model"], stable=stable, canary=canary,
        canary_percent=status.get("canary_traffic_percent") if canary else None, revisions=revisions,
        canary_started=started)

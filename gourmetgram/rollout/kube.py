"""Roll out on the cluster: patch the InferenceService through the Kubernetes API.

A canary is ONE JSON merge patch that sets ``canaryTrafficPercent`` and the new bundle on
BOTH components (predictor ``model.storageUri`` = ``<bundle>/triton``, transformer
``STORAGE_URI`` env), so Knative creates the predictor and transformer revisions
together; promote removes the field (merge-patch null), rollback sets it to 0. The
revision names come from ``status.components.transformer`` (``latestRolledoutRevision`` =
stable, the ``latest`` traffic target = canary), which is what the PromQL selects on.

Known limit (kserve#1669): on the cluster the two components still split traffic
independently, so a canary transformer may call a stable predictor; locally the gateway
keeps each revision's pair together.
"""

from __future__ import annotations

import copy
from typing import Any

from gourmetgram.errors import UserError
from gourmetgram.manifests import bundle_uri
from gourmetgram.rollout.analysis import RolloutState

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
COMPONENTS = ("predictor", "transformer")
VERSION_ANNOTATION = "gourmetgram.io/model-version"


def _api(api_client=None):
    from kubernetes import client, config

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                config.load_kube_config()
            except (config.ConfigException, OSError) as exc:
                raise UserError(f"no Kubernetes credentials (in-cluster or kubeconfig): {exc}") from exc
        api_client = client.ApiClient()
    return client.CustomObjectsApi(api_client)


def canary_patch(isvc: dict, storage_uri: str, percent: int, version: str | None = None) -> dict:
    """The one merge patch that starts a canary of ``storage_uri`` at ``percent``%."""
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise UserError(f"canary percentage must be an integer in 0..100, got {percent!r}")
    root = bundle_uri(storage_uri)
    spec = isvc.get("spec", {})
    if "transformer" not in spec:
        raise UserError(f"InferenceService {isvc.get('metadata', {}).get('name')} has no transformer")
    containers = copy.deepcopy(spec["transformer"].get("containers") or [])
    if not containers:
        raise UserError("the transformer has no containers to point at the new bundle")
    env = [e for e in containers[0].get("env", []) if e.get("name") != "STORAGE_URI"]
    containers[0]["env"] = env + [{"name": "STORAGE_URI", "value": root}]
    annotations = {VERSION_ANNOTATION: str(version)} if version is not None else None
    patch: dict[str, Any] = {"spec": {
        "predictor": {"canaryTrafficPercent": percent, "model": {"storageUri": f"{root}/triton"}},
        "transformer": {"canaryTrafficPercent": percent, "containers": containers},
    }}
    if annotations:
        for c in COMPONENTS:
            patch["spec"][c]["annotations"] = annotations
    return patch


def percent_patch(percent: int | None) -> dict:
    """``canaryTrafficPercent`` on both components (None removes it: promote)."""
    return {"spec": {c: {"canaryTrafficPercent": percent} for c in COMPONENTS}}


class KubeRollout:
    """:class:`gourmetgram.rollout.analysis.RolloutBackend` for an InferenceService on a cluster."""

    def __init__(self, name: str, namespace: str, api_client=None) -> None:
        self.name, self.namespace = name, namespace
        self.api = _api(api_client)

    def get(self) -> dict:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)
        except ApiException as exc:
            raise UserError(f"cannot read InferenceService {self.namespace}/{self.name}: "
                            f"{exc.status} {exc.reason}") from None

    def patch(self, body: dict) -> dict:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                           self.name, body)
        except ApiException as exc:
            raise UserError(f"cannot patch InferenceService {self.namespace}/{self.name}: "
                            f"{exc.status} {exc.reason} {exc.body or ''}") from None

    def canary(self, storage_uri: str, percent: int, version: str | int | None = None) -> dict:
        return self.patch(canary_patch(self.get(), storage_uri, percent,
                                       None if version is None else str(version)))

    def set_percent(self, percent: int) -> None:
        self.patch(percent_patch(percent))

    def promote(self) -> None:
        self.patch(percent_patch(None))

    def rollback(self) -> None:
        self.patch(percent_patch(0))

    def state(self) -> RolloutState:
        return state_from_isvc(self.get())


def state_from_isvc(isvc: dict) -> RolloutState:
    """Stable and canary transformer revisions from ``status.components.transformer``."""
    meta, spec = isvc.get("metadata", {}), isvc.get("spec", {})
    name = meta.get("name", "")
    status = (isvc.get("status") or {}).get("components", {}).get("transformer", {})
    traffic = status.get("traffic") or []
    stable = status.get("latestRolledoutRevision")
    canary = None
    for target in traffic:
        if target.get("tag") == "latest" or (target.get("latestRevision") and target.get("revisionName") != stable):
            canary = target.get("revisionName") or status.get("latestReadyRevision")
        if target.get("tag") == "prev":
            stable = target.get("revisionName") or stable
    percent = spec.get("transformer", {}).get("canaryTrafficPercent")
    if canary == stable:
        canary = None
    args = (spec.get("transformer", {}).get("containers") or [{}])[0].get("args", [])
    model = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--model_name"), "food11")
    revisions = tuple({"name": t.get("revisionName"), "percent": t.get("percent"), "tag": t.get("tag")}
                      for t in traffic)
    return RolloutState(inferenceservice=name, namespace=meta.get("namespace", "default"),
                        configuration=f"{name}-transformer", model_name=model, stable=stable,
                        canary=canary, canary_percent=percent if canary else None, revisions=revisions)

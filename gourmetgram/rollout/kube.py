"""Roll out on the cluster: patch the InferenceService through the Kubernetes API.

The transformer is collocated in the predictor pod (kserve#1669), so one component and
one ``canaryTrafficPercent`` decide the split, and each revision is a transformer + Triton
pair. A canary is ONE JSON merge patch that sets the percentage, the new bundle
(``model.storageUri``, the bundle root) and the version annotation; promote removes the
percentage (merge-patch null) and moves the drift detector's reference and the capture
sink's bundle to the promoted bundle; rollback sets it to 0. Revision names come from ``status.components.predictor``
(``latestRolledoutRevision`` = stable, the ``latest`` traffic target = canary), which is
what the PromQL selects on.
"""

from __future__ import annotations

import copy
from typing import Any

from gourmetgram.constants import MODEL_NAME, MODEL_VERSION_ANNOTATION
from gourmetgram.errors import BadInput, DependencyUnavailable
from gourmetgram.manifests import bundle_uri, transformer_container
from gourmetgram.rollout.state import RolloutState

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
KNATIVE_GROUP, KNATIVE_VERSION, KNATIVE_PLURAL = "serving.knative.dev", "v1", "services"
VERSION_ANNOTATION = MODEL_VERSION_ANNOTATION
REFERENCE_ANNOTATION = "gourmetgram.io/reference-bundle"
DETECTOR_NAME = "drift-detector"
# The capture sink (a Deployment) reads its class names from the same stable bundle.
CAPTURE_SINK_NAME = "capture-sink"


def _api(api_client=None):
    from kubernetes import client, config

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                config.load_kube_config()
            except (config.ConfigException, OSError) as exc:
                raise DependencyUnavailable(f"no Kubernetes credentials (in-cluster or kubeconfig): {exc}; set "
                                            "KUBECONFIG or run inside the cluster") from exc
        api_client = client.ApiClient()
    return client.CustomObjectsApi(api_client)


def canary_patch(isvc: dict, storage_uri: str, percent: int, version: str | None = None) -> dict:
    """The one merge patch that starts a canary of ``storage_uri`` at ``percent``%."""
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise BadInput(f"canary percentage must be an integer in 0..100, got {percent!r}")
    root = bundle_uri(storage_uri)  # refuses local paths
    if transformer_container(isvc) is None:
        raise BadInput(f"InferenceService {isvc.get('metadata', {}).get('name')} has no collocated "
                        "transformer-container in its predictor; re-apply inference_services/*.yaml")
    predictor: dict[str, Any] = {"canaryTrafficPercent": percent, "model": {"storageUri": root}}
    if version is not None:
        predictor["annotations"] = {VERSION_ANNOTATION: str(version)}
    return {"spec": {"predictor": predictor}}


def percent_patch(percent: int | None) -> dict:
    """``canaryTrafficPercent`` of the predictor (None removes it: promote)."""
    return {"spec": {"predictor": {"canaryTrafficPercent": percent}}}


def detector_patch(ksvc: dict, bundle: str) -> dict:
    """Point the drift detector's storage-initializer at ``bundle`` (a new revision, a fresh window)."""
    root = bundle_uri(bundle)
    template = copy.deepcopy(((ksvc.get("spec") or {}).get("template")) or {})
    inits = template.get("spec", {}).get("initContainers") or []
    init = next((c for c in inits if c.get("name") == "storage-initializer"), None)
    if init is None or not init.get("args"):
        raise BadInput(f"{DETECTOR_NAME} has no storage-initializer init container to repoint")
    init["args"] = [root, *init["args"][1:]]
    return {"spec": {"template": {
        "metadata": {"annotations": {REFERENCE_ANNOTATION: root}},
        "spec": {"initContainers": inits},  # a merge patch replaces lists whole
    }}}


class KubeRollout:
    """:class:`gourmetgram.rollout.state.RolloutBackend` for an InferenceService on a cluster."""

    def __init__(self, name: str, namespace: str, api_client=None, detector: str | None = DETECTOR_NAME,
                 capture_sink: str | None = CAPTURE_SINK_NAME) -> None:
        self.name, self.namespace, self.detector, self.capture_sink = name, namespace, detector, capture_sink
        self.api = _api(api_client)

    def _call(self, what: str, fn, *args):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError as TransportError

        try:
            return fn(*args)
        except TransportError as exc:  # connection refused, DNS, TLS: the API server is not there
            raise DependencyUnavailable(f"cannot {what}: the Kubernetes API is not reachable ({exc}); check "
                                        "the cluster and your kubeconfig context") from None
        except ApiException as exc:
            message = f"cannot {what}: {exc.status} {exc.reason} {exc.body or ''}".rstrip()
            if exc.status in (401, 403):
                raise DependencyUnavailable(f"{message}; the credentials in use may not do this: check "
                                            "the ServiceAccount or kubeconfig user's RBAC") from None
            if not exc.status or exc.status >= 500:
                raise DependencyUnavailable(f"{message}; the Kubernetes API is failing, retry later") from None
            raise BadInput(message) from None

    def get(self) -> dict:
        return self._call(f"read InferenceService {self.namespace}/{self.name}",
                          self.api.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, self.name)

    def patch(self, body: dict) -> dict:
        return self._call(f"patch InferenceService {self.namespace}/{self.name}",
                          self.api.patch_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                          self.name, body)

    def canary(self, storage_uri: str, percent: int, version: str | int | None = None) -> dict:
        return self.patch(canary_patch(self.get(), storage_uri, percent,
                                       None if version is None else str(version)))

    def set_percent(self, percent: int) -> None:
        self.patch(percent_patch(percent))

    def promote(self) -> None:
        isvc = self.patch(percent_patch(None))
        bundle = (((isvc.get("spec") or {}).get("predictor") or {}).get("model") or {}).get("storageUri")
        if bundle and self.detector:
            self.update_detector(bundle)
        if bundle and self.capture_sink:
            self.update_capture_sink(bundle)

    def update_capture_sink(self, bundle: str) -> dict | None:
        """Move the capture sink's bundle (class names, a new rollout) to ``bundle``; None when
        this stage runs no capture sink (capture.enabled off)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        apps = client.AppsV1Api(self.api.api_client)
        where = f"Deployment {self.namespace}/{self.capture_sink}"
        try:
            deployment = apps.read_namespaced_deployment(self.capture_sink, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            return self._call(f"read {where}", apps.read_namespaced_deployment, self.capture_sink, self.namespace)
        body = apps.api_client.sanitize_for_serialization(deployment)
        return self._call(f"patch {where}", apps.patch_namespaced_deployment, self.capture_sink, self.namespace,
                          detector_patch(body, bundle))

    def update_detector(self, bundle: str) -> dict:
        """Move the drift detector's reference embeddings to ``bundle`` (after a promote)."""
        where = f"Knative Service {self.namespace}/{self.detector}"
        ksvc = self._call(f"read {where}", self.api.get_namespaced_custom_object, KNATIVE_GROUP,
                          KNATIVE_VERSION, self.namespace, KNATIVE_PLURAL, self.detector)
        return self._call(f"patch {where}", self.api.patch_namespaced_custom_object, KNATIVE_GROUP,
                          KNATIVE_VERSION, self.namespace, KNATIVE_PLURAL, self.detector,
                          detector_patch(ksvc, bundle))

    def rollback(self) -> None:
        self.patch(percent_patch(0))

    def state(self) -> RolloutState:
        return state_from_isvc(self.get())


def state_from_isvc(isvc: dict) -> RolloutState:
    """Stable and canary revisions from ``status.components.predictor``."""
    meta, spec = isvc.get("metadata", {}), isvc.get("spec", {})
    name = meta.get("name", "")
    status = (isvc.get("status") or {}).get("components", {}).get("predictor", {})
    traffic = status.get("traffic") or []
    stable = status.get("latestRolledoutRevision")
    canary = None
    for target in traffic:
        if target.get("tag") == "latest" or (target.get("latestRevision") and target.get("revisionName") != stable):
            canary = target.get("revisionName") or status.get("latestReadyRevision")
        if target.get("tag") == "prev":
            stable = target.get("revisionName") or stable
    percent = spec.get("predictor", {}).get("canaryTrafficPercent")
    if canary == stable:
        canary = None
    args = (transformer_container(isvc) or {}).get("args", [])
    model = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--model_name"), MODEL_NAME)
    revisions = tuple({"name": t.get("revisionName"), "percent": t.get("percent"), "tag": t.get("tag")}
                      for t in traffic)
    return RolloutState(inferenceservice=name, namespace=meta.get("namespace", "default"),
                        configuration=f"{name}-predictor", model_name=model, stable=stable,
                        canary=canary, canary_percent=percent if canary else None, revisions=revisions)

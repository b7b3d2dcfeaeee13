"""Strict offline validation of rendered Kubernetes objects against the pinned upstream schemas.

Built-in kinds go through ``kubernetes-validate`` (strict: unknown fields rejected). Custom
resources are checked against the real CRDs of the versions ``infra/versions.env`` installs,
vendored under ``tests/schemas/`` (see the README there for source paths and checksums):
their ``openAPIV3Schema`` is turned into a JSON Schema in which every object that declares
``properties`` rejects unknown keys, as the API server does with ``kubectl apply``'s default
``--validate=strict`` (it prunes them silently otherwise). Knative's own CRD leaves
feature-gated pod fields open (``x-kubernetes-preserve-unknown-fields``), so a Knative
Service's pod template is also checked as a core PodSpec, and the gated fields it uses
must be enabled by the config-features patch the install applies. Knative ConfigMap
patches may only set keys that the pinned release documents in its ``_example`` block.
Knative Eventing's CRDs (Broker, Trigger) keep ``spec`` open for experimental features, but
its admission webhook decodes with unknown fields disallowed: for those kinds an object that
declares ``properties`` is closed even where the CRD preserves unknown fields.
"""

from __future__ import annotations

import copy
import functools
import gzip
import re
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import kubernetes_validate
import yaml

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
# The cluster's Kubernetes minor (k3s in infra/versions.env); kubernetes-validate ships its schemas.
K8S_VERSION = "1.33"
KSERVE_DIR = SCHEMA_DIR / "kserve-v0.20.0"
KNATIVE_DIR = SCHEMA_DIR / "knative-serving-v1.21.1"
PROM_OPERATOR_DIR = SCHEMA_DIR / "prometheus-operator-v0.79.2"
ISTIO_DIR = SCHEMA_DIR / "istio-1.27.1"
EVENTING_DIR = SCHEMA_DIR / "knative-eventing-v1.21.1"
# Groups whose webhook rejects unknown fields that the CRD itself preserves (knative.dev/pkg's
# validation admission controller, created with disallowUnknownFields by Eventing's webhook).
WEBHOOK_STRICT_GROUPS = frozenset({"eventing.knative.dev"})

# (group, kind) -> CRD file
CRD_FILES = {
    ("serving.kserve.io", "InferenceService"): KSERVE_DIR / "serving.kserve.io_inferenceservices.yaml.gz",
    ("serving.kserve.io", "ServingRuntime"): KSERVE_DIR / "serving.kserve.io_servingruntimes.yaml.gz",
    ("serving.knative.dev", "Service"): KNATIVE_DIR / "service.yaml",
    ("monitoring.coreos.com", "PodMonitor"): PROM_OPERATOR_DIR / "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com", "ServiceMonitor"): PROM_OPERATOR_DIR / "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com", "PrometheusRule"): PROM_OPERATOR_DIR / "monitoring.coreos.com_prometheusrules.yaml",
    ("monitoring.coreos.com", "AlertmanagerConfig"):
        PROM_OPERATOR_DIR / "monitoring.coreos.com_alertmanagerconfigs.yaml.gz",
    ("networking.istio.io", "VirtualService"): ISTIO_DIR / "virtualservice.yaml",
    ("eventing.knative.dev", "Broker"): EVENTING_DIR / "broker.yaml",
    ("eventing.knative.dev", "Trigger"): EVENTING_DIR / "trigger.yaml",
}

# Knative pod-spec fields that are off unless config-features enables them (v1.21 defaults).
KNATIVE_GATED_POD_FIELDS = {
    "initContainers": "kubernetes.podspec-init-containers",
    "nodeSelector": "kubernetes.podspec-nodeselector",
    "tolerations": "kubernetes.podspec-tolerations",
    "affinity": "kubernetes.podspec-affinity",
    "runtimeClassName": "kubernetes.podspec-runtimeclassname",
    "securityContext": "kubernetes.podspec-securitycontext",
}
KNATIVE_GATED_VOLUMES = {"emptyDir": "kubernetes.podspec-volumes-emptydir",
                         "persistentVolumeClaim": "kubernetes.podspec-persistent-volume-claim"}


class _CrdLoader(yaml.SafeLoader):
    """YAML as the API server reads it (1.2): a bare ``=`` (an enum value of the
    AlertmanagerConfig CRD) is the string "=", not PyYAML's YAML 1.1 "value" tag."""


_CrdLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def _read_yaml_docs(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return [d for d in yaml.load_all(handle, Loader=_CrdLoader) if d]


def _strict(node: Any, close_declared: bool = False) -> Any:
    """openAPIV3Schema -> JSON Schema that rejects unknown fields where the CRD defines them
    (``close_declared``: also where it declares properties but preserves unknown fields)."""
    if isinstance(node, list):
        return [_strict(n, close_declared) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: _strict(v, close_declared) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") or key in ("allOf", "anyOf", "oneOf"):
            out[key] = _strict(value, close_declared)
        elif key.startswith("x-kubernetes-") or key in ("nullable", "format"):
            continue  # format: Kubernetes formats (int-or-string, quantity) are not JSON Schema's
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-embedded-resource")
    if close_declared and "properties" in node:
        preserve = False
    if node.get("type") == "object" and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(group: str, kind: str, version: str) -> jsonschema.protocols.Validator:
    path = CRD_FILES[(group, kind)]
    for crd in _read_yaml_docs(path):
        if crd.get("kind") != "CustomResourceDefinition" or crd["spec"]["names"]["kind"] != kind:
            continue
        for served in crd["spec"]["versions"]:
            if served["name"] == version:
                schema = copy.deepcopy(served["schema"]["openAPIV3Schema"])
                # metadata is checked as a real ObjectMeta below (the CRD leaves it open)
                schema["properties"]["metadata"] = {"type": "object"}
                strict = _strict(schema, close_declared=group in WEBHOOK_STRICT_GROUPS)
                strict["properties"]["metadata"] = {"type": "object"}
                # apiVersion/kind are on every object whether a CRD lists them or not (Istio's do not)
                for field in ("apiVersion", "kind"):
                    strict["properties"].setdefault(field, {"type": "string"})
                return jsonschema.Draft7Validator(strict)
    raise KeyError(f"{group}/{version} {kind} not in {path}")


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<root>"


def _builtin_errors(obj: dict) -> list[str]:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{obj.get('kind')}: {'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


def metadata_errors(obj: dict) -> list[str]:
    """``metadata`` of any object as a strict core ObjectMeta (a ConfigMap carries it)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        return ["metadata.name is required"]
    return [e.replace("ConfigMap: ", f"{obj.get('kind')}: ", 1)
            for e in _builtin_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})]


def custom_resource_errors(obj: dict) -> list[str]:
    group, _, version = obj["apiVersion"].partition("/")
    validator = crd_validator(group, obj["kind"], version)
    errors = [f"{obj['kind']}: {_path(e)}: {e.message}"
              for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))]
    return errors + metadata_errors(obj)


def pod_template_errors(template: dict, enabled_features: dict[str, str] | None = None) -> list[str]:
    """A Knative revision template's spec as a strict core PodSpec, plus feature gates."""
    spec = template.get("spec", {})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t", **template.get("metadata", {})},
           "spec": spec}
    errors = [e.replace("Pod: ", "pod template: ", 1) for e in _builtin_errors(pod)]
    if enabled_features is not None:
        def on(flag: str) -> bool:
            return enabled_features.get(flag, "disabled") in ("enabled", "allowed")

        for field, flag in KNATIVE_GATED_POD_FIELDS.items():
            if field in spec and not on(flag):
                errors.append(f"pod template uses {field}, which needs {flag}: enabled in config-features")
        for volume in spec.get("volumes", []):
            for source, flag in KNATIVE_GATED_VOLUMES.items():
                if source in volume and not on(flag):
                    errors.append(f"volume {volume.get('name')} uses {source}, which needs {flag}: enabled")
    serving = [c for c in spec.get("containers", []) if c.get("ports")]
    if len(spec.get("containers", [])) > 1 and len(serving) != 1:
        errors.append("Knative needs exactly one container with a port when a pod has several")
    return errors


def object_errors(obj: dict, knative_features: dict[str, str] | None = None) -> list[str]:
    """Every schema error of one rendered object (empty: valid)."""
    api_version = obj.get("apiVersion", "")
    group = api_version.split("/")[0] if "/" in api_version else ""
    if (group, obj.get("kind")) in CRD_FILES:
        errors = custom_resource_errors(obj)
        if group == "serving.knative.dev":
            errors += pod_template_errors(obj.get("spec", {}).get("template", {}), knative_features)
        return errors
    return _builtin_errors(obj)


# --- Knative ConfigMaps -------------------------------------------------------------------

@functools.cache
def knative_config_keys(name: str) -> frozenset[str]:
    """Keys the pinned Knative release documents for ConfigMap ``name`` (its ``_example``)."""
    path = KNATIVE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"no vendored Knative ConfigMap {name} (have: "
                       f"{sorted(p.stem for p in KNATIVE_DIR.glob('config-*.yaml'))})")
    (cm,) = _read_yaml_docs(path)
    keys = set(cm.get("data", {})) - {"_example"}
    for line in cm["data"].get("_example", "").splitlines():
        match = re.match(r"^\s{0,4}([A-Za-z0-9][A-Za-z0-9._-]*):", line)
        if match and not line.lstrip().startswith("#"):
            keys.add(match.group(1))
    return frozenset(keys)


@functools.cache
def knative_config_defaults(name: str) -> dict[str, str]:
    """Key -> documented default value of a pinned Knative ConfigMap (its ``_example``)."""
    (cm,) = _read_yaml_docs(KNATIVE_DIR / f"{name}.yaml")
    defaults = {}
    for line in cm["data"].get("_example", "").splitlines():
        match = re.match(r'^\s{0,4}([A-Za-z0-9][A-Za-z0-9._-]*):\s*"?([^"#]*)"?', line)
        if match and not line.lstrip().startswith("#"):
            defaults[match.group(1)] = match.group(2).strip()
    return defaults


def effective_knative_features(patch: dict | None) -> dict[str, str]:
    """config-features after the install's merge patch: upstream defaults, then the patch."""
    return {**knative_config_defaults("config-features"), **((patch or {}).get("data") or {})}


_DNS_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$")


def knative_patch_errors(patch: dict) -> list[str]:
    """A merge patch for a ``knative-serving`` ConfigMap: a strict ConfigMap, known keys only."""
    errors = _builtin_errors(patch)
    if patch.get("kind") != "ConfigMap" or patch.get("metadata", {}).get("namespace") != "knative-serving":
        return errors + ["not a knative-serving ConfigMap"]
    name = patch["metadata"]["name"]
    data = patch.get("data") or {}
    if name == "config-domain":  # keys are domain names
        return errors + [f"config-domain: {k!r} is not a DNS name" for k in data if not _DNS_NAME.match(k)]
    known = knative_config_keys(name)
    return errors + [f"{name}: unknown key {k!r} for Knative 1.21" for k in data if k not in known]


def iter_errors(objects: Iterable[dict], knative_features: dict[str, str] | None = None) -> list[str]:
    out = []
    for obj in objects:
        out += [f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}: {e}"
                for e in object_errors(obj, knative_features)]
    return out

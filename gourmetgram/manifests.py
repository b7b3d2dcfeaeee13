"""Render the serving chart into the committed InferenceService manifests (contract 3).

``charts/gourmetgram`` is the one source; ``inference_services/<stage>.yaml`` is its output
per stage, rendered offline through the Helm Go SDK (``helm_python``, no ``helm`` binary),
so ``kubectl apply -f inference_services/staging.yaml`` is all a cluster user runs and the
local gateway reads the very same files.

A rollout changes values, never the YAML by hand: :func:`set_rollout` records the model
bundle and canary share in ``charts/gourmetgram/rollout/<stage>.yaml`` (a values overlay)
and re-renders, so ``gourmetgram manifests render --check`` stays true after a rollout.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from gourmetgram.config import read_yaml
from gourmetgram.constants import ISVC_NAMES, MODEL_NAME, PRODUCTION, REPO_ROOT, STAGING, TRANSFORMER_CONTAINER
from gourmetgram.errors import BadInput

CHART_DIR = REPO_ROOT / "charts" / "gourmetgram"
MANIFEST_DIR = REPO_ROOT / "inference_services"
# The alert rules: the chart renders them into a PrometheusRule; a local Prometheus loads
# this same file. Its promtool unit tests sit beside it.
RULES_FILE = CHART_DIR / "rules" / "gourmetgram.rules.yml"
RULES_TEST_FILE = CHART_DIR / "rules" / "gourmetgram.rules.test.yml"
DASHBOARD_DIR = CHART_DIR / "dashboards"

# Stages with their own InferenceService; "canary" is production's canaryTrafficPercent.
RENDERED_STAGES = (STAGING, PRODUCTION)
ISVC_KIND = "InferenceService"
ISVC_API_VERSION = "serving.kserve.io/v1beta1"
# What a cluster InferenceService's storageUri may name (KServe's storage initializer schemes).
REMOTE_URI_SCHEMES = ("s3://", "gs://", "http://", "https://", "pvc://", "oci://")

# Order of objects in a rendered file: what others depend on comes first (a NetworkPolicy
# before the pods it guards; the logger's Broker and Triggers before the InferenceService).
_KIND_ORDER = ("Namespace", "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "ServingRuntime", "NetworkPolicy",
               "Service", "Deployment", "Ingress", "Broker", "Trigger", "InferenceService", "VirtualService",
               "PodMonitor", "PrometheusRule")

# Helm's ownership metadata (helm v3 pkg/action/validate.go): the chart labels every object
# app.kubernetes.io/managed-by: Helm, so the committed files also name the release that owns
# them; a later `helm install <stage release> -n <namespace>` then adopts what
# `kubectl apply -f inference_services/<stage>.yaml` created instead of refusing it.
HELM_RELEASE_NAME = "meta.helm.sh/release-name"
HELM_RELEASE_NAMESPACE = "meta.helm.sh/release-namespace"

_HEADER = (
    "# Rendered from charts/gourmetgram (values.yaml + values-{stage}.yaml{overlay}) by\n"
    "# `gourmetgram manifests render`. Do not edit: change the values and re-render.\n"
    "# Apply with: kubectl apply -f inference_services/{stage}.yaml\n"
)


def _check_stage(stage: str) -> str:
    if stage not in RENDERED_STAGES:
        raise BadInput(
            f"no InferenceService for stage {stage!r}; choose one of {', '.join(RENDERED_STAGES)} "
            "(a canary is production's canaryTrafficPercent)"
        )
    return stage


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` wins key by key; nested mappings merge, everything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def rollout_file(stage: str, chart_dir: Path = CHART_DIR) -> Path:
    """The values overlay a rollout writes for ``stage``."""
    return Path(chart_dir) / "rollout" / f"{_check_stage(stage)}.yaml"


def stage_values(stage: str, chart_dir: Path = CHART_DIR) -> dict:
    """``values-<stage>.yaml`` plus the stage's rollout overlay, if any (chart defaults excluded)."""
    chart_dir = Path(chart_dir)
    values = read_yaml(chart_dir / f"values-{_check_stage(stage)}.yaml")
    overlay = rollout_file(stage, chart_dir)
    if overlay.exists():
        values = deep_merge(values, read_yaml(overlay))
    return values


def _kind_rank(obj: dict) -> tuple[int, str]:
    kind = obj.get("kind", "")
    rank = _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)
    return rank, obj.get("metadata", {}).get("name", "")


def _render(stage: str, values: dict, chart_dir: Path) -> list[dict[str, Any]]:
    """Render the chart with fully merged stage values; objects in dependency order."""
    import helm_python

    try:
        with helm_python.Chart.load(str(chart_dir)) as chart:
            rendered = chart.render(values, name=ISVC_NAMES[stage], namespace=values.get("namespace"))
    except helm_python.HelmError as exc:
        raise BadInput(f"chart {chart_dir} does not render for {stage}: {exc}") from exc
    objects = [
        doc
        for template in sorted(rendered)
        if not template.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(rendered[template])
        if doc
    ]
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        annotations = meta.get("annotations") or {}
        meta["annotations"] = {**annotations, HELM_RELEASE_NAME: ISVC_NAMES[stage],
                               HELM_RELEASE_NAMESPACE: meta.get("namespace") or values.get("namespace")}
    return sorted(objects, key=_kind_rank)


def render_objects(
    stage: str, overrides: dict | None = None, chart_dir: Path = CHART_DIR
) -> list[dict[str, Any]]:
    """Render the chart for ``stage`` (values + overlay + ``overrides``) into Kubernetes objects."""
    values = deep_merge(stage_values(stage, chart_dir), overrides or {})
    return _render(stage, values, chart_dir)


def dump_objects(objects: Iterable[dict], stage: str, overlay: bool = False) -> str:
    """Serialize objects as one multi-document YAML file with the do-not-edit header."""
    header = _HEADER.format(stage=stage, overlay=f" + rollout/{stage}.yaml" if overlay else "")
    body = "---\n".join(
        yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=120) for obj in objects
    )
    return header + "---\n" + body


def render_text(stage: str, chart_dir: Path = CHART_DIR, overrides: dict | None = None) -> str:
    """The exact text of ``inference_services/<stage>.yaml``."""
    objects = render_objects(stage, overrides, chart_dir)
    return dump_objects(objects, stage, overlay=rollout_file(stage, chart_dir).exists())


def manifest_path(stage: str, out_dir: Path = MANIFEST_DIR) -> Path:
    return Path(out_dir) / f"{_check_stage(stage)}.yaml"


def write_manifests(
    out_dir: Path = MANIFEST_DIR,
    stages: Iterable[str] = RENDERED_STAGES,
    chart_dir: Path = CHART_DIR,
) -> list[Path]:
    """Render every stage and write ``<out_dir>/<stage>.yaml``; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stage in stages:
        path = manifest_path(stage, out_dir)
        path.write_text(render_text(stage, chart_dir))
        written.append(path)
    return written


def stale_manifests(
    out_dir: Path = MANIFEST_DIR,
    stages: Iterable[str] = RENDERED_STAGES,
    chart_dir: Path = CHART_DIR,
) -> list[Path]:
    """Manifests that are missing or differ from a fresh render (empty = up to date)."""
    stale = []
    for stage in stages:
        path = manifest_path(stage, out_dir)
        if not path.exists() or path.read_text() != render_text(stage, chart_dir):
            stale.append(path)
    return stale


def load_manifest(path: Path) -> list[dict[str, Any]]:
    """All objects of a rendered manifest file."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: no such manifest; run `gourmetgram manifests render`")
    try:
        return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    except yaml.YAMLError as exc:
        raise BadInput(f"{path}: not valid YAML: {exc}") from exc


def find_inference_service(objects: Iterable[dict]) -> dict[str, Any]:
    """The one InferenceService among ``objects``."""
    found = [o for o in objects if o.get("kind") == ISVC_KIND]
    if len(found) != 1:
        raise BadInput(f"expected exactly one {ISVC_KIND}, found {len(found)}")
    return found[0]


def bundle_uri(storage_uri: str) -> str:
    """The bundle root from either the bundle URI or its ``/triton`` model repository.

    A cluster InferenceService downloads it with KServe's storage initializer, so a local
    path (which exists only on the machine that exported it) is refused here.
    """
    uri = storage_uri.strip().rstrip("/")
    if not uri:
        raise BadInput("empty storage URI")
    if not uri.startswith(REMOTE_URI_SCHEMES):
        raise BadInput(f"{uri!r} is not an object-store URI: a cluster InferenceService reads its bundle "
                        "from s3://<bucket>/<model>/<version> (the pipeline's register step copies it there)")
    if uri.endswith("/triton"):
        uri = uri[: -len("/triton")]
    return uri


def transformer_container(isvc: dict) -> dict | None:
    """The transformer container collocated in the predictor pod (None if there is none)."""
    containers = ((isvc.get("spec") or {}).get("predictor") or {}).get("containers") or []
    return next((c for c in containers if c.get("name") == TRANSFORMER_CONTAINER), None)


def rollout_overrides(
    *,
    storage_uri: str | None = None,
    canary_percent: int | None = None,
    promote: bool = False,
    model_version: str | None = None,
) -> dict[str, Any]:
    """Values that point a stage at another bundle and/or set or clear its canary share.

    ``storage_uri`` may name the bundle root or its ``triton/`` folder. ``canary_percent``
    0..100 renders the predictor's ``canaryTrafficPercent`` (the transformer is collocated in
    the same revision; 0 pins all traffic to the previous revision); ``promote`` removes it
    (100% to the latest revision). The drift detector keeps the stable bundle as its
    reference until a promote moves it: see :func:`set_rollout`.
    """
    if promote and canary_percent is not None:
        raise BadInput("choose either a canary percentage or promote, not both")
    values: dict[str, Any] = {}
    if storage_uri is not None:
        root = bundle_uri(storage_uri)
        version = model_version or root.rsplit("/", 1)[-1]
        values["model"] = {"bundleUri": root, "version": str(version)}
    elif model_version is not None:
        values["model"] = {"version": str(model_version)}
    if canary_percent is not None:
        if isinstance(canary_percent, bool) or not isinstance(canary_percent, int) or not 0 <= canary_percent <= 100:
            raise BadInput(f"canary percentage must be an integer in 0..100, got {canary_percent!r}")
        values["canary"] = {"trafficPercent": canary_percent}
    if promote:
        values["canary"] = {"trafficPercent": None}
    return values


def set_rollout(
    stage: str,
    *,
    storage_uri: str | None = None,
    canary_percent: int | None = None,
    promote: bool = False,
    model_version: str | None = None,
    chart_dir: Path = CHART_DIR,
    out_dir: Path = MANIFEST_DIR,
) -> Path:
    """Record a rollout step in the stage's values overlay and re-render its manifest.

    Returns the manifest path; ``kubectl apply -f`` it to make the cluster follow. The
    render runs before anything is written, so a bad value leaves both files untouched.
    """
    changes = rollout_overrides(
        storage_uri=storage_uri, canary_percent=canary_percent, promote=promote, model_version=model_version
    )
    chart_dir = Path(chart_dir)
    overlay_path = rollout_file(stage, chart_dir)
    previous = read_yaml(overlay_path) if overlay_path.exists() else {}
    before = deep_merge(read_yaml(chart_dir / f"values-{stage}.yaml"), previous)
    overlay = deep_merge(previous, changes)
    new_bundle = (changes.get("model") or {}).get("bundleUri")
    if promote:  # the detector judges drift against the model that now takes all traffic
        overlay["detector"] = {**overlay.get("detector", {}), "bundleUri": ""}
    elif new_bundle and not (before.get("detector") or {}).get("bundleUri"):
        # a canary: the detector keeps the stable model's reference until promote
        stable = (before.get("model") or {}).get("bundleUri") or read_yaml(chart_dir / "values.yaml")["model"]["bundleUri"]
        overlay["detector"] = {**overlay.get("detector", {}), "bundleUri": stable}
    values = deep_merge(read_yaml(chart_dir / f"values-{stage}.yaml"), overlay)
    objects = _render(stage, values, chart_dir)  # fails before any file is touched
    overlay_path.parent.mkdir(parents=True, exist_ok=True)
    overlay_path.write_text(
        f"# Rollout state for {stage}, written by gourmetgram.manifests.set_rollout.\n"
        + yaml.safe_dump(overlay, sort_keys=False)
    )
    path = manifest_path(stage, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_objects(objects, stage, overlay=True))
    return path


def canary_percent(isvc: dict) -> int | None:
    """The canary share of a rendered InferenceService (None when promoted)."""
    spec = isvc.get("spec", {})
    if "transformer" in spec:
        raise BadInput("spec.transformer is a separate component that splits traffic on its own (kserve#1669); "
                        f"collocate it as predictor container {TRANSFORMER_CONTAINER!r}")
    return (spec.get("predictor") or {}).get("canaryTrafficPercent")


def transformer_model_name(isvc: dict) -> str:
    """The ``--model_name`` the transformer container is started with (defaults to MODEL_NAME)."""
    args = (transformer_container(isvc) or {}).get("args", [])
    for i, arg in enumerate(args):
        if arg == "--model_name" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--model_name="):
            return arg.split("=", 1)[1]
    return MODEL_NAME

"""Read a rendered InferenceService manifest into what the local runtime needs.

The local gateway and stack read the SAME files ``kubectl apply`` gets
(``inference_services/<stage>.yaml``), so the name, namespace, canary percentage, logger
sink and transformer arguments cannot drift between the cluster and a laptop.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gourmetgram import constants
from gourmetgram.constants import TRANSFORMER_CONTAINER
from gourmetgram.errors import ConfigError

ISVC_API_VERSION = "serving.kserve.io/v1beta1"
MANIFEST_DIR = constants.REPO_ROOT / "inference_services"
MANIFEST_STAGES = (constants.STAGING, constants.PRODUCTION)


@dataclasses.dataclass(frozen=True)
class LoggerSpec:
    """``spec.<component>.logger``: where the KServe agent sends CloudEvents."""

    url: str
    mode: str = "all"


@dataclasses.dataclass(frozen=True)
class ServiceManifest:
    """The fields of one InferenceService that the local runtime acts on."""

    name: str
    namespace: str
    canary_traffic_percent: int | None
    logger: LoggerSpec | None
    transformer_args: tuple[str, ...]
    storage_uri: str | None
    annotations: dict[str, str]
    path: Path | None = None

    @property
    def tag_routing(self) -> bool:
        return self.annotations.get("serving.kserve.io/enable-tag-routing", "").lower() == "true"

    def transformer_flags(self) -> dict[str, str]:
        """``--flag value`` / ``--flag=value`` pairs of the transformer container as a dict."""
        flags: dict[str, str] = {}
        args = list(self.transformer_args)
        i = 0
        while i < len(args):
            arg = args[i]
            if arg.startswith("--"):
                if "=" in arg:
                    key, value = arg[2:].split("=", 1)
                elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                    key, value = arg[2:], args[i + 1]
                    i += 1
                else:
                    key, value = arg[2:], "true"
                flags[key] = value
            i += 1
        return flags

    @property
    def model_name(self) -> str:
        return self.transformer_flags().get("model_name", constants.MODEL_NAME)

    @property
    def protocol(self) -> str:
        return self.transformer_flags().get("protocol", "v2")


def configuration_name(manifest: ServiceManifest) -> str:
    """The Knative Configuration KServe creates for the predictor (transformer collocated in it)."""
    return f"{manifest.name}-predictor"


def revision_name(manifest: ServiceManifest, generation: int = 1) -> str:
    """A Knative-style revision name (``<configuration>-00001``)."""
    return f"{configuration_name(manifest)}-{generation:05d}"


def generation_of(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def manifest_path(stage: str, directory: Path = MANIFEST_DIR) -> Path:
    """``inference_services/<stage>.yaml``; the canary stage lives in the production manifest."""
    if stage == constants.CANARY:
        stage = constants.PRODUCTION
    if stage not in MANIFEST_STAGES:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(MANIFEST_STAGES)}")
    return Path(directory) / f"{stage}.yaml"


def _get(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _logger(component: dict | None) -> LoggerSpec | None:
    spec = _get(component, "logger")
    if not isinstance(spec, dict) or not spec.get("url"):
        return None
    return LoggerSpec(url=str(spec["url"]), mode=str(spec.get("mode", "all")))


def parse_manifest(documents: list[Any], path: Path | None = None) -> ServiceManifest:
    """The one InferenceService among ``documents`` (other kinds are skipped)."""
    where = path or "<manifest>"
    isvcs = [d for d in documents if isinstance(d, dict) and d.get("kind") == "InferenceService"]
    if len(isvcs) != 1:
        raise ConfigError(f"{where}: expected exactly one InferenceService, found {len(isvcs)}")
    isvc = isvcs[0]
    if isvc.get("apiVersion") != ISVC_API_VERSION:
        raise ConfigError(f"{where}: apiVersion is {isvc.get('apiVersion')!r}, expected {ISVC_API_VERSION}")
    name = _get(isvc, "metadata", "name")
    if not name:
        raise ConfigError(f"{where}: the InferenceService has no metadata.name")
    predictor = _get(isvc, "spec", "predictor") or {}
    if _get(isvc, "spec", "transformer") is not None:
        raise ConfigError(f"{where}: spec.transformer splits traffic apart from the predictor (kserve#1669); "
                          f"the transformer must be the predictor's {TRANSFORMER_CONTAINER!r} container")
    container: dict = next((c for c in predictor.get("containers") or [] if c.get("name") == TRANSFORMER_CONTAINER), {})
    args = [str(a) for a in (container.get("args") or [])]
    canary = predictor.get("canaryTrafficPercent")
    if canary is not None:
        try:
            canary = int(canary)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: canaryTrafficPercent {canary!r} is not an integer") from None
        if not 0 <= canary <= 100:
            raise ConfigError(f"{where}: canaryTrafficPercent {canary} is not within 0..100")
    return ServiceManifest(
        name=str(name),
        namespace=str(_get(isvc, "metadata", "namespace") or "default"),
        canary_traffic_percent=canary,
        logger=_logger(predictor),
        transformer_args=tuple(args),
        storage_uri=_get(predictor, "model", "storageUri"),
        annotations={str(k): str(v) for k, v in (_get(isvc, "metadata", "annotations") or {}).items()},
        path=path,
    )


def load_manifest(path: str | Path) -> ServiceManifest:
    """Parse an InferenceService YAML file (multi-document files are fine)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"InferenceService manifest {path} does not exist (render it from charts/gourmetgram)"
        )
    try:
        documents = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_manifest(documents, path)


def load_stage_manifest(stage: str, directory: Path = MANIFEST_DIR) -> ServiceManifest:
    return load_manifest(manifest_path(stage, directory))


def local_logger_url(url: str) -> str:
    """A cluster-only sink (``*.svc``/``*.cluster.local``) becomes the local detector's port."""
    host = urlsplit(url).hostname or ""
    if host.endswith((".svc", ".cluster.local")) or ".svc." in host:
        return f"http://{constants.HOST}:{constants.DETECTOR_PORT}/"
    return url

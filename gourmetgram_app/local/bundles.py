"""Which bundle the local stack serves: the newest exported one, or the one a registry alias names."""

from __future__ import annotations

from pathlib import Path

from gourmetgram import constants
from gourmetgram.bundle import Bundle
from gourmetgram.errors import BadInput
from gourmetgram.tracking import home


def find_latest_bundle(root: Path | None = None) -> Path:
    """The newest exported bundle: ``$GOURMETGRAM_HOME/models/*/`` holding a ``triton/`` folder."""
    models = Path(root) if root else home() / "models"
    bundles = [p for p in models.glob("*/") if Bundle(p).is_bundle()] if models.is_dir() else []
    if not bundles:
        raise BadInput(f"no exported model under {models}; run `gourmetgram pipeline run` or "
                        "`gourmetgram demo` first, or pass --bundle DIR")
    return max(bundles, key=lambda p: Bundle(p).triton_repo.stat().st_mtime)


def registered_bundle(stage: str) -> Path:
    """The bundle of the model version the registry's ``stage`` alias points at.

    What ``serve`` runs without ``--bundle``: the registry says what serves where, not the
    newest folder under models/ (after ``gourmetgram demo`` that is a deliberately bad canary).
    """
    from gourmetgram import registry
    from gourmetgram.tracking import tracking_uri

    version = registry.version_for(stage)
    if version is None:
        raise BadInput(
            f"no version of {constants.REGISTERED_MODEL_NAME!r} has the registry alias {stage!r} "
            f"(MLflow at {tracking_uri()}); run `gourmetgram pipeline run --dataset DIR --stage {stage}` "
            f"(it registers the model it exports under that alias), or pass --bundle DIR")
    uri = registry.bundle_for(version)
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.is_dir():
        raise BadInput(f"version {version} (alias {stage!r}) names the bundle {uri}, which is not a "
                        "folder on this machine; pass --bundle DIR")
    return path.resolve()

"""Continual training: a retrain starts from the production model's weights.

With ``train.init_from: production`` (the default) a retrain fine-tunes the model that the
registry's ``production`` alias points at, class head included, on the base data plus the
labelled production data, for ``train.fine_tune.epochs`` at ``train.fine_tune.lr`` instead of
the from-scratch ``train.epochs`` / ``train.lr``. Fine-tuning keeps what the production model
knows (a from-scratch retrain lands somewhere else each time, by more than the differential
gate's margin) and costs a fraction of the time. A first model, with no production alias yet,
trains from scratch and says so; ``init_from: scratch`` always does.

The parent's weights come from the MLflow registry (the version's logged PyTorch model, through
the registry API, so a cluster's MLflow server and its artifact store are read the same way as
the local sqlite store), never from a path guessed on disk. Its lineage (registered model,
version, run, bundle) goes on the new MLflow run and on the registered version.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from gourmetgram.config import RunConfig, override
from gourmetgram.constants import PRODUCTION, REGISTERED_MODEL_NAME
from gourmetgram.errors import BadInput, DependencyUnavailable

if TYPE_CHECKING:  # torch is imported where weights are loaded
    from gourmetgram.model import Classifier, ModelSpec

PRODUCTION_INIT, SCRATCH_INIT = "production", "scratch"
INIT_FROM_CONFIG = ""  # the pipeline parameter's "use the config's train.init_from"
# MLflow run and model-version tags (people, `registry` listings and the tests read these).
TAG_INIT_FROM = "train.init_from"
TAG_PARENT_MODEL = "parent.registered_model"
TAG_PARENT_VERSION = "parent.version"
TAG_PARENT_RUN = "parent.run_id"
TAG_PARENT_BUNDLE = "parent.bundle_uri"
TAG_PARENT_SOURCE = "parent.source"


@dataclasses.dataclass(frozen=True)
class Parent:
    """The model a retrain starts from, and where it came from."""

    model: Classifier
    lineage: dict[str, str]  # the tags above, for the run and the registered version

    @property
    def version(self) -> str:
        return self.lineage.get(TAG_PARENT_VERSION, "")

    def describe(self) -> str:
        if self.version:
            return (f"{self.lineage[TAG_PARENT_MODEL]} version {self.version} (run "
                    f"{self.lineage.get(TAG_PARENT_RUN) or '-'}, bundle {self.lineage.get(TAG_PARENT_BUNDLE) or '-'})")
        return self.lineage.get(TAG_PARENT_SOURCE, "a local model")


def resolve_init_from(cfg: RunConfig, init_from: str = INIT_FROM_CONFIG) -> str:
    """The pipeline parameter (``production`` | ``scratch``; empty: the config's ``train.init_from``)."""
    value = (init_from or "").strip() or cfg.train.init_from
    if value not in (PRODUCTION_INIT, SCRATCH_INIT):
        raise BadInput(f"init_from must be {PRODUCTION_INIT!r}, {SCRATCH_INIT!r} or empty (the config's "
                        f"train.init_from), got {init_from!r}")
    return value


def parent_version(init_from: str, registered_model_name: str = REGISTERED_MODEL_NAME) -> int | None:
    """The version a retrain starts from: the one the ``production`` alias points at, or None
    (``scratch``, or no production model yet: a first model)."""
    from gourmetgram import registry

    if init_from == SCRATCH_INIT:
        return None
    return registry.version_for(PRODUCTION, registered_model_name)


def load_parent(version: int, registered_model_name: str = REGISTERED_MODEL_NAME) -> Parent:
    """The registered version's logged PyTorch model (``models:/<name>/<version>``) and its lineage."""
    from gourmetgram import registry
    from gourmetgram.model import Classifier

    info = registry.get_version(version, registered_model_name)
    uri = f"models:/{registered_model_name}/{int(version)}"
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pytorch.load_model(uri, map_location="cpu")
    except MlflowException as exc:
        raise DependencyUnavailable(f"cannot load the production model {uri} from the MLflow registry "
                                    f"({exc.message}); set train.init_from: scratch to train without it") from None
    if not isinstance(model, Classifier):
        raise BadInput(f"{uri} is a {type(model).__name__}, not a GourmetGram classifier; "
                        "set train.init_from: scratch")
    return Parent(model.eval(), {
        TAG_INIT_FROM: PRODUCTION_INIT, TAG_PARENT_MODEL: registered_model_name, TAG_PARENT_VERSION: str(version),
        TAG_PARENT_RUN: info.run_id or "", TAG_PARENT_BUNDLE: info.tags.get(registry.TAG_BUNDLE, ""),
        TAG_PARENT_SOURCE: uri})


def parent_from_checkpoint(path: str | Path) -> Parent:
    """A local checkpoint as the parent (benchmarks, experiments: no registry)."""
    from gourmetgram.model import load_checkpoint

    return Parent(load_checkpoint(path), {TAG_INIT_FROM: PRODUCTION_INIT, TAG_PARENT_SOURCE: str(path)})


def fine_tune_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the fine-tune's epochs and learning rate in place of the from-scratch ones."""
    ft = cfg.train.fine_tune
    return override(cfg, "train", epochs=ft.epochs, lr=ft.lr)


def production_weights(dataset_root: str | Path, files: list[Path], share: float) -> list[float] | None:
    """Sampling weights that make the merged production photos ``share`` of each epoch's draws
    (the rest: the base images, evenly), or None when there is nothing to raise: no production
    photos in ``files`` (the merge's lineage names them), ``share`` 0, or already that share."""
    import json

    from gourmetgram.data.merge import MERGED_LINEAGE

    root = Path(dataset_root)
    lineage = root / MERGED_LINEAGE
    if share <= 0 or not lineage.is_file():
        return None
    try:
        production = {root / s["file"] for s in json.loads(lineage.read_text())["samples"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"{lineage} is not an export lineage: {exc}") from None
    is_production = [path in production for path in files]
    n_production = sum(is_production)
    n_base = len(files) - n_production
    if n_production == 0 or n_base == 0 or n_production / len(files) >= share:
        return None
    return [share / n_production if p else (1 - share) / n_base for p in is_production]


def check_compatible(parent: Classifier, spec: ModelSpec) -> None:
    """The parent's network must be the one the config builds (classes, architecture, size)."""
    theirs = parent.spec
    for field in ("class_names", "arch", "image_size", "width_mult"):
        if getattr(theirs, field) != getattr(spec, field):
            raise BadInput(f"the production model's {field} ({getattr(theirs, field)!r}) differs from this "
                            f"run's ({getattr(spec, field)!r}): it cannot be fine-tuned into it; set "
                            "train.init_from: scratch (or the pipeline parameter init_from=scratch)")


def _mlflow():
    from gourmetgram.tracking import configure_mlflow

    return configure_mlflow()

"""What the transformer must know about the served model: input size and class names.

Resolution order (first that answers wins, per field):

1. flags: ``--image_size``, ``--labels_file`` (labels.txt, one name per line) or
   ``--class_names`` (comma-separated);
2. ``--model_spec``: an export bundle's ``model_spec.json`` (class_names, image_size);
3. the predictor's v2 model metadata (``GET /v2/models/<name>``): the input's last dim is
   the image size, the output's last dim the class count; a count of 11 means Food-11's
   names, anything else ``class_XX`` placeholders (a warning says to pass the labels).

Flags and files are checked at start-up (a bad path exits with code 2); the predictor is
asked only for what is still missing, at load time and again on the first request if it
was not up yet (so the transformer may start before Triton).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from gourmetgram.bundle import CALIBRATION_FILENAME, Bundle
from gourmetgram.calibration import Calibration
from gourmetgram.classes import FOOD11_CLASSES, class_dir_name
from gourmetgram.errors import BadInput, ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingSpec:
    """The two facts preprocessing and postprocessing need."""

    image_size: int
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class PartialSpec:
    """What flags and files gave; ``None`` fields are asked of the predictor."""

    image_size: int | None = None
    class_names: tuple[str, ...] | None = None

    def complete(self) -> ServingSpec | None:
        if self.image_size is None or self.class_names is None:
            return None
        return ServingSpec(self.image_size, self.class_names)


def read_labels_file(path: str | Path) -> tuple[str, ...]:
    """labels.txt (Triton's label_filename format): one class name per line, index order."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"labels file {p} does not exist; pass the model's labels.txt")
    names = tuple(line.strip() for line in p.read_text().splitlines() if line.strip())
    return _check_names(names, str(p))


def read_model_spec(path: str | Path) -> PartialSpec:
    """An export bundle's model_spec.json (or the bundle folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = Bundle(p).spec_path
    if not p.is_file():
        raise ConfigError(f"model spec {p} does not exist; pass <bundle>/model_spec.json")
    try:
        data = json.loads(p.read_text())
        names = _check_names(tuple(str(n) for n in data["class_names"]), str(p))
        size = _check_size(int(data["image_size"]), str(p))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{p} is not a model spec (needs class_names and image_size): {exc}") from exc
    return PartialSpec(image_size=size, class_names=names)


def read_calibration(path: str | None, model_spec: str | None = None) -> Calibration | None:
    """``--calibration``, else the ``calibration.json`` beside ``--model_spec`` if there is one;
    None (served uncalibrated, every image in distribution) when neither names a file."""
    if path is None and model_spec:
        spec = Path(model_spec)
        beside = (spec if spec.is_dir() else spec.parent) / CALIBRATION_FILENAME
        if not beside.is_file():
            logger.warning("no %s next to the model spec: confidences are not calibrated and no "
                           "image is flagged out of distribution", CALIBRATION_FILENAME)
            return None
        path = str(beside)
    if path is None:
        return None
    if not Path(path).is_file():
        raise ConfigError(f"calibration file {path} does not exist; pass <bundle>/{CALIBRATION_FILENAME}")
    try:
        return Calibration.read(path)
    except BadInput as exc:
        raise ConfigError(str(exc)) from None


def resolve_partial(
    image_size: int | None = None,
    labels_file: str | None = None,
    class_names: str | None = None,
    model_spec: str | None = None,
) -> PartialSpec:
    """Merge flags over the model spec file; raises ConfigError on bad values or paths."""
    base = read_model_spec(model_spec) if model_spec else PartialSpec()
    if image_size is not None:
        base.image_size = _check_size(image_size, "--image_size")
    if labels_file and class_names:
        raise ConfigError("pass either --labels_file or --class_names, not both")
    if labels_file:
        base.class_names = read_labels_file(labels_file)
    elif class_names:
        names = tuple(n.strip() for n in class_names.split(",") if n.strip())
        base.class_names = _check_names(names, "--class_names")
    return base


def fill_from_metadata(partial: PartialSpec, metadata: dict[str, Any]) -> ServingSpec:
    """Complete a partial spec from a v2 model metadata response (Triton's or KServe's)."""
    image_size = partial.image_size
    names = partial.class_names
    try:
        in_shape = [int(d) for d in metadata["inputs"][0]["shape"]]
        out_shape = [int(d) for d in metadata["outputs"][0]["shape"]]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"predictor metadata has no input/output shapes ({exc}); pass --image_size "
            f"and --labels_file"
        ) from exc
    if image_size is None:
        image_size = _check_size(in_shape[-1], "predictor input shape")
    elif in_shape[-1] > 0 and in_shape[-1] != image_size:
        raise ConfigError(
            f"--image_size/--model_spec say {image_size} but the predictor's model takes "
            f"{in_shape[-1]}x{in_shape[-1]} input; pass the spec of the model being served"
        )
    num_classes = out_shape[-1]
    if names is None:
        if num_classes == len(FOOD11_CLASSES):
            names = tuple(FOOD11_CLASSES)
        else:
            names = tuple(class_dir_name(i) for i in range(num_classes))
            logger.warning(
                "no class names given and the model has %d classes; using %s..%s. "
                "Pass --labels_file or --model_spec for real names.",
                num_classes, names[0], names[-1],
            )
    elif num_classes > 0 and num_classes != len(names):
        raise ConfigError(
            f"the predictor's model has {num_classes} outputs but {len(names)} class names "
            f"were given; pass the labels.txt of the model being served"
        )
    return ServingSpec(image_size, names)


def _check_size(size: int, where: str) -> int:
    if not 8 <= size <= 4096:
        raise ConfigError(f"{where}: image size {size} is out of range (8..4096)")
    return size


def _check_names(names: Sequence[str], where: str) -> tuple[str, ...]:
    names = tuple(names)
    if len(names) < 2:
        raise ConfigError(f"{where}: needs at least 2 class names, found {len(names)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: class names are not unique")
    return names

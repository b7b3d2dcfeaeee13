"""The export bundle's layout (contract 1), spelled out once.

Every step after export reads the bundle: KServe/Triton serve ``<bundle>/triton``, the
local PyTriton predictor takes its batching settings from the same ``config.pbtxt``, the
transformer takes class names from ``labels.txt``/``model_spec.json``, the drift detector
embeds images with ``feature_extractor.onnx`` and keeps its state under ``detector/``::

    <bundle>/triton/<model_name>/config.pbtxt
    <bundle>/triton/<model_name>/labels.txt
    <bundle>/triton/<model_name>/1/model.onnx
    <bundle>/feature_extractor.onnx
    <bundle>/model_spec.json
    <bundle>/parity.json
    <bundle>/calibration.json           (temperature, OOD and ATC thresholds: gourmetgram.calibration)
    <bundle>/quantization.json          (INT8 variants only, gourmetgram.quantize)
    <bundle>/detector/detector.json     (after the detector step, drift_detector.build)

This module is a leaf (no torch, no onnx, no tritonclient at import time) so that the
transformer, the detector and the capture sink can use it in their own small images.
Reading ``config.pbtxt`` and checking the bundle against it lives in
:mod:`gourmetgram.export` (it needs Triton's protobuf schema).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gourmetgram.constants import MODEL_NAME
from gourmetgram.errors import BadInput

if TYPE_CHECKING:
    from gourmetgram.calibration import Calibration
    from gourmetgram.model import ModelSpec

TRITON_DIR = "triton"
MODEL_VERSION = "1"  # Triton version folders are numeric; the bundle carries one version
ONNX_FILENAME = "model.onnx"  # Triton's default file name for platform onnxruntime_onnx
CONFIG_FILENAME = "config.pbtxt"
LABELS_FILENAME = "labels.txt"
FEATURE_EXTRACTOR_FILENAME = "feature_extractor.onnx"
MODEL_SPEC_FILENAME = "model_spec.json"
PARITY_FILENAME = "parity.json"
CALIBRATION_FILENAME = "calibration.json"
QUANTIZATION_FILENAME = "quantization.json"
DETECTOR_DIR = "detector"
DETECTOR_SETTINGS_FILENAME = "detector.json"


def join_uri(uri: str, *parts: str) -> str:
    """``s3://b/k`` + parts -> ``s3://b/k/part/...`` (KFP artifact URIs are not local paths)."""
    return "/".join([uri.rstrip("/"), *parts])


def triton_repo_uri(bundle_uri: str) -> str:
    """The Triton model repository inside a bundle at ``bundle_uri``: KServe's ``storageUri``."""
    return join_uri(bundle_uri, TRITON_DIR)


@dataclasses.dataclass(frozen=True)
class Bundle:
    """An export bundle at ``root`` serving the Triton model ``model_name``: paths, not contents.

    Constructing one touches nothing on disk; :meth:`missing`/:meth:`require` check presence,
    :meth:`spec_dict`/:meth:`load_spec`/:meth:`class_names`/:meth:`image_size` read
    ``model_spec.json`` with an error that names the file.
    """

    root: Path
    model_name: str = MODEL_NAME

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())
        if not self.model_name or "/" in self.model_name or self.model_name.startswith("."):
            raise BadInput(f"invalid Triton model name {self.model_name!r}")

    # --- the Triton model repository ---------------------------------------------------
    @property
    def triton_repo(self) -> Path:
        return self.root / TRITON_DIR

    @property
    def model_dir(self) -> Path:
        return self.triton_repo / self.model_name

    @property
    def version_dir(self) -> Path:
        return self.model_dir / MODEL_VERSION

    @property
    def onnx_path(self) -> Path:
        return self.version_dir / ONNX_FILENAME

    @property
    def config_path(self) -> Path:
        return self.model_dir / CONFIG_FILENAME

    @property
    def labels_path(self) -> Path:
        return self.model_dir / LABELS_FILENAME

    # --- beside the repository --------------------------------------------------------
    @property
    def feature_extractor_path(self) -> Path:
        return self.root / FEATURE_EXTRACTOR_FILENAME

    @property
    def spec_path(self) -> Path:
        return self.root / MODEL_SPEC_FILENAME

    @property
    def parity_path(self) -> Path:
        return self.root / PARITY_FILENAME

    @property
    def calibration_path(self) -> Path:
        return self.root / CALIBRATION_FILENAME

    @property
    def quantization_path(self) -> Path:
        return self.root / QUANTIZATION_FILENAME

    @property
    def detector_dir(self) -> Path:
        return self.root / DETECTOR_DIR

    @property
    def detector_settings_path(self) -> Path:
        return self.detector_dir / DETECTOR_SETTINGS_FILENAME

    def with_model(self, model_name: str) -> Bundle:
        """The same bundle seen as serving another model folder (a variant in the same repo)."""
        return dataclasses.replace(self, model_name=model_name)

    # --- presence ---------------------------------------------------------------------
    @property
    def required(self) -> tuple[Path, ...]:
        """What export writes and serving needs (the detector is optional: serve says so)."""
        return (self.config_path, self.labels_path, self.onnx_path, self.feature_extractor_path,
                self.spec_path, self.parity_path)

    def missing(self) -> list[str]:
        """Required files that are absent, relative to the root, in layout order."""
        return [str(p.relative_to(self.root)) for p in self.required if not p.is_file()]

    def require(self) -> Bundle:
        """Raise :class:`BadInput` naming the missing files unless the bundle is complete."""
        if not self.root.is_dir():
            raise BadInput(f"model bundle {self.root} does not exist")
        missing = self.missing()
        if missing:
            raise BadInput(f"model bundle {self.root} is incomplete; missing: {', '.join(missing)}")
        return self

    def served_onnx(self) -> Path:
        """``model.onnx`` of the served model, or a :class:`BadInput` saying it is not there."""
        if not self.onnx_path.is_file():
            raise BadInput(f"{self.onnx_path} does not exist; is {self.root} an exported model bundle "
                            f"for {self.model_name!r}?")
        return self.onnx_path

    def is_bundle(self) -> bool:
        """Whether ``root`` holds a Triton model repository (how ``serve`` finds bundles)."""
        return self.triton_repo.is_dir()

    def has_detector(self) -> bool:
        return self.detector_dir.is_dir()

    # --- contents ---------------------------------------------------------------------
    def spec_dict(self) -> dict[str, Any]:
        """``model_spec.json`` as JSON (no torch: for the transformer, detector, capture sink)."""
        path = self.spec_path
        if not path.is_file():
            raise BadInput(f"{path} does not exist; is {self.root} an exported model bundle?")
        try:
            doc = json.loads(path.read_text())
        except ValueError as exc:
            raise BadInput(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise BadInput(f"{path} must hold a JSON object, not {type(doc).__name__}")
        return doc

    def class_names(self) -> list[str]:
        names = self.spec_dict().get("class_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise BadInput(f"{self.spec_path} has no valid 'class_names' (a non-empty list of names)")
        return names

    def image_size(self) -> int:
        size = self.spec_dict().get("image_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise BadInput(f"{self.spec_path} has no valid 'image_size' (a positive integer): {size!r}")
        return size

    def load_spec(self) -> ModelSpec:
        """``model_spec.json`` as the model's :class:`ModelSpec` (imports torch)."""
        from gourmetgram.model import ModelSpec

        doc = self.spec_dict()
        try:
            return ModelSpec.from_dict(doc)
        except (ValueError, TypeError, KeyError) as exc:
            raise BadInput(f"{self.spec_path} is not a valid model spec: {exc}") from None

    def load_calibration(self) -> Calibration:
        """``calibration.json``, or the identity calibration (T = 1, no OOD threshold, no ATC)
        for a bundle exported before calibration existed."""
        from gourmetgram.calibration import Calibration

        path = self.calibration_path
        return Calibration.read(path) if path.is_file() else Calibration.identity()

    def precision(self) -> str:
        """The served graph's precision: ``int8`` (quantized variant), else what export recorded
        in ``parity.json`` (``fp32``/``fp16``; ``fp32`` for bundles written before FP16 existed)."""
        if self.quantization_path.is_file():
            return "int8"
        try:
            doc = json.loads(self.parity_path.read_text())
        except (OSError, ValueError):
            return "fp32"
        value = doc.get("precision", "fp32") if isinstance(doc, dict) else "fp32"
        return value if isinstance(value, str) else "fp32"

    def triton_size_bytes(self) -> int:
        """Bytes under ``triton/``: what KServe's storage initializer downloads."""
        return sum(p.stat().st_size for p in self.triton_repo.rglob("*") if p.is_file())

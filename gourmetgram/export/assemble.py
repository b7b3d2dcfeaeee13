"""Assemble an export bundle (contract 1, layout in :mod:`gourmetgram.bundle`) and check one.

The bundle is built in a sibling temporary folder and moved into place only after its
parity check passes, so a failed export never leaves a half bundle for ``serve`` to pick up.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gourmetgram.bundle import LABELS_FILENAME, Bundle
from gourmetgram.calibration import Calibration
from gourmetgram.config import ExportConfig
from gourmetgram.constants import FEATURES_NAME, MODEL_NAME
from gourmetgram.errors import BadInput
from gourmetgram.export.onnx_graph import convert_fp16, export_onnx
from gourmetgram.export.parity import CPU_FP16_NOTE, ParityReport, check_parity, enforce_parity, tolerances
from gourmetgram.export.triton_config import check_export_config, check_labels, read_triton_config, write_triton_model
from gourmetgram.model import Classifier, FeatureExtractor, ModelSpec, load_checkpoint

RANDOM_PARITY_IMAGES = 8


@dataclasses.dataclass(frozen=True)
class ExportResult:
    bundle_dir: str
    triton_repo: str
    model_dir: str
    onnx_path: str
    config_path: str
    size_bytes: int
    parity: ParityReport
    seconds: float = 0.0
    precision: str = "fp32"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["parity"] = self.parity.to_dict()
        return d


def read_labels(model_dir: str | Path) -> list[str]:
    """``<model_dir>/labels.txt``, one class name per line (any model folder, variants too)."""
    path = Path(model_dir) / LABELS_FILENAME
    if not path.is_file():
        raise BadInput(f"labels file {path} does not exist")
    return [line for line in path.read_text().splitlines() if line]


def load_model_spec(bundle_dir: str | Path) -> ModelSpec:
    return Bundle(Path(bundle_dir)).load_spec()


def validate_bundle(bundle_dir: str | Path, model_name: str = MODEL_NAME,
                    check_config: bool = True) -> ModelSpec:
    """Check a bundle is complete and self-consistent; raise :class:`BadInput` naming what is wrong.

    ``check_config`` also parses ``config.pbtxt`` and checks it against the spec.
    """
    b = Bundle(Path(bundle_dir), model_name).require()
    spec = b.load_spec()
    problems = []
    labels = read_labels(b.model_dir)
    if labels != list(spec.class_names):
        problems.append(f"labels.txt ({len(labels)} classes) differs from model_spec.json "
                        f"({spec.num_classes} classes)")
    if check_config:
        tc = read_triton_config(b.model_dir)
        if tc.name != model_name:
            problems.append(f"config.pbtxt names model {tc.name!r}, folder is {model_name!r}")
        if tc.input_dims != (3, spec.image_size, spec.image_size):
            problems.append(f"config.pbtxt input dims {list(tc.input_dims)} do not match image size "
                            f"{spec.image_size}")
        if tc.output_dims != (spec.num_classes,):
            problems.append(f"config.pbtxt output dims {list(tc.output_dims)} do not match "
                            f"{spec.num_classes} classes")
    if problems:
        raise BadInput(f"model bundle {b.root} is inconsistent: " + "; ".join(problems))
    return spec


def _as_model(checkpoint_or_model: str | Path | nn.Module) -> Classifier:
    if isinstance(checkpoint_or_model, (str, Path)):
        return load_checkpoint(checkpoint_or_model)
    if not isinstance(checkpoint_or_model, Classifier):
        raise BadInput(f"expected a checkpoint path or a Classifier, got {type(checkpoint_or_model).__name__}")
    return copy.deepcopy(checkpoint_or_model).cpu().eval()  # never touch the caller's model


def _parity_images(spec: ModelSpec, images: np.ndarray | None) -> np.ndarray:
    if images is None:
        rng = np.random.default_rng(0)
        return rng.standard_normal((RANDOM_PARITY_IMAGES, 3, spec.image_size, spec.image_size),
                                   dtype=np.float32)
    images = np.ascontiguousarray(images, dtype=np.float32)
    expected = (3, spec.image_size, spec.image_size)
    if images.ndim != 4 or images.shape[1:] != expected or len(images) == 0:
        raise BadInput(f"parity images must have shape (N>0, {', '.join(map(str, expected))}); "
                        f"got {images.shape}")
    return images


def _parity_labels(labels: np.ndarray | None, images: np.ndarray | None, num_classes: int) -> np.ndarray | None:
    if labels is None:
        return None
    if images is None:
        raise BadInput("parity labels need the parity images they label")
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) \
            or labels.min() < 0 or labels.max() >= num_classes:
        raise BadInput(f"parity labels must be {len(images)} class indices in 0..{num_classes - 1}")
    return labels


def export_bundle(checkpoint_or_model: str | Path | nn.Module, bundle_dir: str | Path,
                  export_cfg: ExportConfig, model_name: str = MODEL_NAME,
                  parity_images: np.ndarray | None = None, overwrite: bool = False,
                  parity_labels: np.ndarray | None = None, calibration: Calibration | None = None) -> ExportResult:
    """Export a classifier to ``bundle_dir`` (contract 1) after a parity check.

    ``calibration`` (fitted on the validation split by
    :func:`gourmetgram.evaluation.calibration.fit_calibration`) is written as
    ``calibration.json``; the parity check then also compares the calibrated confidence the
    transformer computes from ONNX logits with the in-process model's.

    ``export_cfg.precision`` picks the served graph: ``fp32`` (the exported graph) or ``fp16``
    (its float16 conversion, checked against the FP32 PyTorch model with the ``fp16_*``
    tolerances and, given ``parity_labels``, the accuracy drop). The feature extractor
    stays FP32. An existing non-empty ``bundle_dir`` is replaced only with ``overwrite=True``.
    """
    started = time.perf_counter()
    target = Bundle(Path(bundle_dir).expanduser().resolve(), model_name)  # checks the model name
    root = target.root
    if root.exists() and (not root.is_dir() or any(root.iterdir())) and not overwrite:
        raise BadInput(f"{root} already exists and is not empty; pick another folder or overwrite")
    check_export_config(export_cfg)
    model = _as_model(checkpoint_or_model)
    spec = model.spec
    check_labels(spec.class_names)
    labels = _parity_labels(parity_labels, parity_images, spec.num_classes)
    images = _parity_images(spec, parity_images)
    precision = export_cfg.precision

    root.parent.mkdir(parents=True, exist_ok=True)
    work = Bundle(Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent)), model_name)
    try:
        onnx_tmp = export_onnx(model, work.root / "classifier.onnx", spec.image_size, export_cfg.opset)
        if precision == "fp16":
            onnx_tmp = convert_fp16(onnx_tmp, work.root / "classifier_fp16.onnx")
        write_triton_model(work.model_dir, onnx_tmp, spec.class_names, spec.image_size, export_cfg)
        for leftover in work.root.glob("classifier*.onnx"):
            leftover.unlink()
        features = export_onnx(FeatureExtractor(model).eval(), work.feature_extractor_path,
                               spec.image_size, export_cfg.opset, output_name=FEATURES_NAME)
        report = check_parity(model, work.onnx_path, images, features, labels=labels, precision=precision,
                              calibration=calibration)
        enforce_parity(report, export_cfg)
        work.spec_path.write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
        if calibration is not None:
            calibration.write(work.calibration_path)
        import onnxruntime

        atol_name, atol, agree_name, min_agreement = tolerances(export_cfg, precision)
        parity_doc = {**report.to_dict(), atol_name: atol, agree_name: min_agreement,
                      "random_inputs": parity_images is None, "opset": export_cfg.opset,
                      "exporter": "torch.onnx (TorchScript, dynamo=False)",
                      "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
        if precision == "fp16":
            parity_doc.update({"fp16_max_accuracy_drop": export_cfg.fp16_max_accuracy_drop,
                               "converter": "onnxconverter_common.float16 (keep_io_types=True)",
                               "measured_on": CPU_FP16_NOTE})
        work.parity_path.write_text(json.dumps(parity_doc, indent=2) + "\n")
        if root.exists():
            shutil.rmtree(root) if root.is_dir() else root.unlink()
        os.replace(work.root, root)
        os.chmod(root, 0o755)  # mkdtemp makes it 0700
    except BaseException:
        shutil.rmtree(work.root, ignore_errors=True)
        raise

    return ExportResult(
        bundle_dir=str(root), triton_repo=str(target.triton_repo), model_dir=str(target.model_dir),
        onnx_path=str(target.onnx_path), config_path=str(target.config_path),
        size_bytes=target.triton_size_bytes(), parity=report,
        seconds=round(time.perf_counter() - started, 3), precision=precision,
    )

"""Parity check: the exported graphs against the FP32 PyTorch model on the same images.

Every export is checked in ONNX Runtime before the bundle appears on disk. FP32 graphs must
reproduce PyTorch to ``parity_atol`` with identical top-1 classes; an FP16 graph is held to
the ``fp16_*`` tolerances instead (float16 keeps ~3 significant digits), and, when labelled
images are given, to an accuracy drop against the FP32 model.

What the CPU measures for FP16: ONNX Runtime's CPU provider has no float16 kernel for most
of this graph's ops (Conv, Clip, Gemm...) and inserts Cast nodes so they run in float32 on
float16-rounded weights and activations (``cpu_upcast_casts`` counts the casts it added).
The check is therefore real for the rounding FP16 storage causes, but not for float16
arithmetic on a GPU (CUDA / TensorRT), which is measured only where a GPU serves the model.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from gourmetgram.calibration import Calibration
from gourmetgram.config import ExportConfig
from gourmetgram.errors import BadInput
from gourmetgram.export.onnx_graph import PARITY_BATCH, run_onnx
from gourmetgram.model import Classifier

CPU_FP16_NOTE = ("onnxruntime CPU provider: float16 nodes without a CPU kernel run in float32 "
                 "(Cast nodes inserted); float16 arithmetic on a GPU is not measured here")


class ExportParityError(BadInput):
    """ONNX Runtime disagrees with PyTorch beyond the configured tolerance."""


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """How closely the exported graphs reproduce PyTorch (FP32) on the same inputs."""

    max_abs_diff: float
    top1_agreement: float
    n_images: int
    feature_max_abs_diff: float
    precision: str = "fp32"
    torch_accuracy: float | None = None  # FP32 PyTorch on labelled parity images
    onnx_accuracy: float | None = None  # the exported graph on the same images
    cpu_upcast_casts: int = 0  # FP16 only: casts ONNX Runtime CPU added to run fp16 nodes in fp32
    # With the bundle's calibration: the served (temperature-scaled) top-1 confidence and energy
    # score from ONNX logits against the in-process model's, same calibration
    confidence_max_abs_diff: float | None = None
    energy_max_abs_diff: float | None = None

    @property
    def accuracy_drop(self) -> float | None:
        if self.torch_accuracy is None or self.onnx_accuracy is None:
            return None
        return self.torch_accuracy - self.onnx_accuracy

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "accuracy_drop": self.accuracy_drop}


def _run_torch(model: Classifier, images: np.ndarray,
               batch: int = PARITY_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch logits (the real ``forward``) and embeddings, in one pass where possible.

    The embedding is captured as the head's input during ``forward``; it is computed
    separately only when ``forward`` does not go through ``model.classifier``.
    """
    logits, features, captured = [], [], []
    hook = model.classifier.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    try:
        with torch.inference_mode():
            for i in range(0, len(images), batch):
                x = torch.from_numpy(images[i:i + batch])
                captured.clear()
                logits.append(model(x).numpy())
                features.append((captured[0] if len(captured) == 1 else model.embed(x)).numpy())
    finally:
        hook.remove()
    return np.concatenate(logits), np.concatenate(features)


def cpu_inserted_casts(onnx_path: str | Path) -> int:
    """Cast nodes ONNX Runtime's CPU provider adds to a graph (float16 ops it runs in float32)."""
    import onnx
    import onnxruntime as ort

    before = sum(n.op_type == "Cast" for n in onnx.load(str(onnx_path)).graph.node)
    fd, optimized = tempfile.mkstemp(suffix=".onnx")
    os.close(fd)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = optimized
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        after = sum(n.op_type == "Cast" for n in onnx.load(optimized).graph.node)
    finally:
        os.unlink(optimized)
    return max(0, after - before)


def check_parity(model: Classifier, onnx_path: str | Path, images: np.ndarray,
                 features_path: str | Path | None = None, labels: np.ndarray | None = None,
                 precision: str = "fp32", calibration: Calibration | None = None) -> ParityReport:
    """Compare ONNX Runtime with FP32 PyTorch on the same images (logits and, optionally,
    features, accuracy on labelled images and the calibrated confidence and energy score)."""
    if not len(images):
        raise BadInput("parity check needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise BadInput(f"parity labels ({len(labels)}) and images ({len(images)}) differ in number")
    want, f_want = _run_torch(model, images)
    got = run_onnx(onnx_path, images)
    max_diff = float(np.abs(got - want).max())
    agreement = float((got.argmax(1) == want.argmax(1)).mean())
    feature_diff = 0.0
    if features_path is not None:
        feature_diff = float(np.abs(run_onnx(features_path, images) - f_want).max())
    torch_acc = onnx_acc = None
    if labels is not None:
        torch_acc = float((want.argmax(1) == labels).mean())
        onnx_acc = float((got.argmax(1) == labels).mean())
    casts = cpu_inserted_casts(onnx_path) if precision == "fp16" else 0
    confidence_diff = energy_diff = None
    if calibration is not None:
        served, in_process = calibration.score(got), calibration.score(want)
        confidence_diff = float(np.abs(served.confidence - in_process.confidence).max())
        energy_diff = float(np.abs(served.energy - in_process.energy).max())
    return ParityReport(max_diff, agreement, int(len(images)), feature_diff, precision,
                        torch_acc, onnx_acc, casts, confidence_diff, energy_diff)


def tolerances(cfg: ExportConfig, precision: str) -> tuple[str, float, str, float]:
    """(name, atol, name, min agreement) the logits of a ``precision`` graph are held to."""
    if precision == "fp16":
        return "fp16_parity_atol", cfg.fp16_parity_atol, "fp16_min_agreement", cfg.fp16_min_agreement
    return "parity_atol", cfg.parity_atol, "parity_min_agreement", cfg.parity_min_agreement


def enforce_parity(report: ParityReport, cfg: ExportConfig) -> None:
    """Raise :class:`ExportParityError` with the figures when ONNX drifts from PyTorch."""
    atol_name, atol, agree_name, min_agreement = tolerances(cfg, report.precision)
    problems = []
    if not report.max_abs_diff <= atol:  # also catches NaN
        problems.append(f"max |logit diff| {report.max_abs_diff:.3g} > {atol_name} {atol:g}")
    if not report.feature_max_abs_diff <= cfg.parity_atol:  # the feature extractor stays FP32
        problems.append(f"feature extractor max |diff| {report.feature_max_abs_diff:.3g} "
                        f"> parity_atol {cfg.parity_atol:g}")
    if report.top1_agreement < min_agreement:
        problems.append(f"top-1 agreement {report.top1_agreement:.4f} < {agree_name} {min_agreement:g}")
    drop = report.accuracy_drop
    if report.precision == "fp16" and drop is not None and not drop <= cfg.fp16_max_accuracy_drop:
        problems.append(f"accuracy drop {drop:.4f} (PyTorch FP32 {report.torch_accuracy:.4f}, "
                        f"ONNX FP16 {report.onnx_accuracy:.4f}) > fp16_max_accuracy_drop "
                        f"{cfg.fp16_max_accuracy_drop:g}")
    if problems:
        raise ExportParityError(
            f"ONNX {report.precision.upper()} export does not match PyTorch on {report.n_images} images: "
            + "; ".join(problems)
        )

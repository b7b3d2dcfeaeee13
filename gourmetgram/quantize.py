"""INT8 variants of an exported model (ONNX Runtime quantization) behind an accuracy gate.

Why: on CPU an INT8 MobileNetV2 runs faster and is a quarter of the size, but
quantization changes predictions. The variant is therefore measured against the FP32
model on the evaluation set (top-1 agreement and accuracy delta) and written as its
own contract-1 bundle only when it passes the gate in :class:`ExportConfig`: top-1 agreement
at least ``int8_min_agreement``, and not worse than FP32 by more than ``int8_max_accuracy_drop``
with one-sided confidence ``int8_confidence``. The accuracy check is paired, like the
differential gate's (:mod:`gourmetgram.evaluation.paired`): a drop of a few images moves with the
calibration sample (over three samples of one model, 0.000 to 0.022 on 368 images), so a
point threshold of one point rejected a sound variant on one machine and passed it on another.

Two methods:

* ``static`` (default): weights and activations in INT8 (QDQ format, per-channel
  weights), activation ranges calibrated on preprocessed *training* images. This is
  what makes convolutions fast (``QLinearConv``/``ConvInteger`` kernels).
* ``dynamic``: weights only, activation ranges computed per call. Cheap to make, but
  ONNX Runtime only quantizes MatMul/Gemm-like ops well dynamically, so a CNN gains
  little; kept for comparison.

The INT8 bundle is a copy of the FP32 bundle with ``triton/<model>/1/model.onnx``
replaced and a ``quantization.json`` added, so it is served, registered and deployed
exactly like the FP32 one (same model name, same transformer).

Run: ``python -m gourmetgram.quantize --bundle B --dataset D --out B_int8 [--config demo]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from gourmetgram.bundle import QUANTIZATION_FILENAME, Bundle
from gourmetgram.config import ExportConfig, load_config
from gourmetgram.constants import MODEL_NAME, SPLITS
from gourmetgram.errors import BadInput, entry_point
from gourmetgram.evaluation.paired import PairedCounts, difference_interval

METHODS = ("static", "dynamic")
CALIBRATION_BATCH = 16
EVAL_BATCH = 32


@dataclasses.dataclass(frozen=True)
class QuantizationReport:
    """FP32 vs INT8 on the same evaluation images, with the gate's verdict."""

    method: str
    n_eval: int
    fp32_accuracy: float
    int8_accuracy: float
    accuracy_drop: float  # fp32 - int8; negative when INT8 happens to do better
    top1_agreement: float
    max_abs_logit_diff: float
    fp32_bytes: int
    int8_bytes: int
    fp32_ms_per_image: float
    int8_ms_per_image: float
    speedup: float
    timing_batch: int
    min_agreement: float
    max_accuracy_drop: float
    # paired bootstrap interval of the drop (fp32 - int8), two-sided at 2 * confidence - 1
    drop_interval: tuple[float, float] = (float("nan"), float("nan"))
    confidence: float = float("nan")
    problems: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["problems"] = list(self.problems)
        d["drop_interval"] = list(self.drop_interval)
        d["passed"] = self.passed
        return d

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.problems)
        return (f"INT8 ({self.method}) on {self.n_eval} evaluation images: accuracy "
                f"{self.fp32_accuracy:.4f} -> {self.int8_accuracy:.4f} (drop {self.accuracy_drop:+.4f}, "
                f"{self.confidence:.0%} bounds [{self.drop_interval[0]:+.4f}, {self.drop_interval[1]:+.4f}]), "
                f"top-1 agreement {self.top1_agreement:.4f}, size {self.fp32_bytes / 1e6:.1f} -> "
                f"{self.int8_bytes / 1e6:.1f} MB, {self.fp32_ms_per_image:.2f} -> "
                f"{self.int8_ms_per_image:.2f} ms/image (x{self.speedup:.2f} at batch "
                f"{self.timing_batch}); gate {verdict}")


# --------------------------------------------------------------------------- data


def load_split(dataset_root: str | Path, split: str, image_size: int,
               limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed images (N, 3, H, W) and labels from one split, with the shared preprocessing.

    ``limit`` takes a seeded random sample (calibration needs a few hundred images at most).
    """
    from gourmetgram.data.dataset import ImageFolderDataset

    folder = Path(dataset_root) / split
    if not folder.is_dir():
        raise BadInput(f"{folder} does not exist; {dataset_root} has no {split!r} split")
    dataset = ImageFolderDataset(folder, image_size)
    if len(dataset) == 0:
        raise BadInput(f"{folder} holds no images")
    indices = list(range(len(dataset)))
    if limit is not None and limit < len(indices):
        indices = sorted(random.Random(seed).sample(indices, limit))
    images = np.stack([dataset.load(i) for i in indices])
    labels = np.array([dataset.items[i][1] for i in indices], dtype=np.int64)
    return images, labels


try:  # the base class lives in onnxruntime; keep this module importable without it
    from onnxruntime.quantization import CalibrationDataReader as _ReaderBase
except ImportError:  # pragma: no cover - onnxruntime is a core dependency
    _ReaderBase = object


class ImageCalibrationReader(_ReaderBase):
    """Feeds preprocessed images to ONNX Runtime's calibrator in small batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = CALIBRATION_BATCH):
        if images.ndim != 4 or len(images) == 0:
            raise BadInput(f"calibration needs (N>0, 3, H, W) images, got shape {images.shape}")
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.input_name = input_name
        self.batch = batch
        self._it: Iterator[dict] | None = None

    def _batches(self) -> Iterator[dict]:
        for i in range(0, len(self.images), self.batch):
            yield {self.input_name: self.images[i:i + self.batch]}

    def get_next(self) -> dict | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


# --------------------------------------------------------------------------- quantization


def _input_name(path: str | Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initialisers = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initialisers)


def quantize_onnx(fp32_path: str | Path, int8_path: str | Path, method: str = "static",
                  calibration: np.ndarray | None = None) -> Path:
    """Write an INT8 copy of ``fp32_path``; ``static`` needs ``calibration`` images.

    Static quantization first runs ONNX Runtime's ``quant_pre_process`` (shape inference
    and graph optimisation, e.g. folding BatchNorm), as its documentation recommends.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise BadInput(f"unknown quantization method {method!r}; choose one of {METHODS}")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    if not fp32_path.is_file():
        raise BadInput(f"ONNX model {fp32_path} does not exist")
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    if method == "dynamic":
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
        return int8_path
    if calibration is None or len(calibration) == 0:
        raise BadInput("static quantization needs calibration images (preprocessed training images)")
    with tempfile.TemporaryDirectory(prefix="gg-quant-") as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
        reader = ImageCalibrationReader(calibration, _input_name(prepped))
        quantize_static(
            str(prepped), str(int8_path), reader,
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return int8_path


# --------------------------------------------------------------------------- measurement


def ort_session(path: str | Path, threads: int = 0):
    """A CPU ONNX Runtime session; ``threads`` 0 lets ONNX Runtime use every core."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session, images: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + batch]})[0]
                           for i in range(0, len(images), batch)])


def time_session(session, images: np.ndarray, batch: int, repeats: int = 3,
                 warmup: int = 1) -> float:
    """Best-of-``repeats`` milliseconds per image over ``images`` in ``batch``-sized calls."""
    for _ in range(warmup):
        run_session(session, images[:batch], batch)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run_session(session, images, batch)
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best / len(images)


def drop_interval(counts: PairedCounts, cfg: ExportConfig) -> tuple[float, float]:
    """The paired bootstrap interval of the accuracy drop (FP32 minus INT8); each bound is
    one-sided at ``cfg.int8_confidence``. ``counts``: INT8 as the candidate, FP32 as production."""
    low, high = difference_interval(counts, 2 * cfg.int8_confidence - 1)
    return -high, -low


def gate_problems(counts: PairedCounts, agreement: float, cfg: ExportConfig) -> tuple[str, ...]:
    """What the INT8 variant fails, in words; empty when it passes. ``counts``: per image, INT8
    (the candidate) and FP32 (production) right or wrong."""
    problems = []
    if not agreement >= cfg.int8_min_agreement:  # NaN fails too
        problems.append(f"top-1 agreement with FP32 {agreement:.4f} < int8_min_agreement "
                        f"{cfg.int8_min_agreement:g}")
    if counts.n == 0:
        return (*problems, "no evaluation images to judge the accuracy drop on")
    low, _ = drop_interval(counts, cfg)
    if low > cfg.int8_max_accuracy_drop:  # worse than FP32 by more than the margin, with confidence
        problems.append(f"accuracy drop {-counts.difference:.4f} ({counts.losses} images lost, {counts.gains} "
                        f"gained): more than int8_max_accuracy_drop {cfg.int8_max_accuracy_drop:g} with "
                        f"{cfg.int8_confidence:.0%} confidence (its lower bound {low:.4f})")
    return tuple(problems)


def compare(fp32_path: str | Path, int8_path: str | Path, images: np.ndarray, labels: np.ndarray,
            cfg: ExportConfig, method: str, timing_batch: int = 16, threads: int = 0,
            timing_images: int = 64) -> QuantizationReport:
    """Accuracy, agreement, size and speed of INT8 vs FP32 on the same images."""
    if len(images) == 0 or len(images) != len(labels):
        raise BadInput(f"need as many evaluation images as labels (got {len(images)} and {len(labels)})")
    fp32, int8 = ort_session(fp32_path, threads), ort_session(int8_path, threads)
    want, got = run_session(fp32, images), run_session(int8, images)
    fp32_acc = float((want.argmax(1) == labels).mean())
    int8_acc = float((got.argmax(1) == labels).mean())
    counts = PairedCounts.from_correct(got.argmax(1) == labels, want.argmax(1) == labels)
    agreement = float((want.argmax(1) == got.argmax(1)).mean())
    sample = images[:timing_images]
    if len(sample) < timing_batch:
        sample = np.concatenate([sample] * (timing_batch // len(sample) + 1))[:timing_batch]
    fp32_ms = time_session(fp32, sample, timing_batch)
    int8_ms = time_session(int8, sample, timing_batch)
    return QuantizationReport(
        method=method, n_eval=int(len(images)), fp32_accuracy=fp32_acc, int8_accuracy=int8_acc,
        accuracy_drop=fp32_acc - int8_acc, top1_agreement=agreement,
        max_abs_logit_diff=float(np.abs(want - got).max()),
        fp32_bytes=Path(fp32_path).stat().st_size, int8_bytes=Path(int8_path).stat().st_size,
        fp32_ms_per_image=fp32_ms, int8_ms_per_image=int8_ms,
        speedup=fp32_ms / int8_ms if int8_ms > 0 else float("nan"), timing_batch=timing_batch,
        min_agreement=cfg.int8_min_agreement, max_accuracy_drop=cfg.int8_max_accuracy_drop,
        drop_interval=drop_interval(counts, cfg), confidence=cfg.int8_confidence,
        problems=gate_problems(counts, agreement, cfg),
    )


# --------------------------------------------------------------------------- bundles


def quantize_bundle(bundle_dir: str | Path, dataset_root: str | Path, out_dir: str | Path,
                    cfg: ExportConfig, method: str = "static", model_name: str = MODEL_NAME,
                    force: bool = False, overwrite: bool = False,
                    eval_images: tuple[np.ndarray, np.ndarray] | None = None,
                    calibration: np.ndarray | None = None) -> QuantizationReport:
    """Quantize a bundle's model, gate it on the evaluation split, write the INT8 bundle.

    The INT8 bundle (``out_dir``) is the FP32 bundle with its ``model.onnx`` replaced and
    ``quantization.json`` added; it is written only when the gate passes (or ``force``).
    Returns the report either way, so a pipeline can log it and pick the variant.
    ``eval_images``/``calibration`` let a caller reuse arrays it already has.
    """
    bundle, out = Path(bundle_dir).resolve(), Path(out_dir).resolve()
    if out == bundle:
        raise BadInput("the INT8 bundle must go to another folder than the FP32 bundle")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BadInput(f"{out} already exists and is not empty; pick another folder or overwrite")
    spec = Bundle(bundle, model_name).load_spec()
    fp32_onnx = Bundle(bundle, model_name).served_onnx()
    if eval_images is None:
        eval_images = load_split(dataset_root, SPLITS[2], spec.image_size)
    if method == "static" and calibration is None:
        calibration, _ = load_split(dataset_root, SPLITS[0], spec.image_size,
                                    limit=cfg.int8_calibration_images)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(bundle, work, dirs_exist_ok=True)
        int8_onnx = Bundle(work, model_name).served_onnx()
        quantize_onnx(fp32_onnx, int8_onnx, method, calibration)
        report = compare(fp32_onnx, int8_onnx, eval_images[0], eval_images[1], cfg, method)
        if not report.passed and not force:
            shutil.rmtree(work, ignore_errors=True)
            return report
        doc = {**report.to_dict(), "source_bundle": str(bundle), "precision": "int8",
               "calibration_images": 0 if calibration is None else int(len(calibration))}
        (work / QUANTIZATION_FILENAME).write_text(json.dumps(doc, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        work.replace(out)
        out.chmod(0o755)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return report


def select_bundle(fp32_bundle: str | Path, int8_bundle: str | Path,
                  report: QuantizationReport, min_speedup: float = 1.0) -> Path:
    """The bundle a pipeline should register: INT8 when it passed its accuracy gate and is
    faster (a small model at a small input size can be slower in INT8), FP32 otherwise."""
    int8 = Path(int8_bundle)
    if report.passed and report.speedup >= min_speedup and (int8 / QUANTIZATION_FILENAME).is_file():
        return int8
    return Path(fp32_bundle)


# --------------------------------------------------------------------------- CLI


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gourmetgram.quantize", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, type=Path, help="the exported FP32 bundle")
    p.add_argument("--dataset", required=True, type=Path, help="dataset root (training/ and evaluation/)")
    p.add_argument("--out", required=True, type=Path, help="where to write the INT8 bundle")
    p.add_argument("--config", default="demo", help="run config holding the export gate (default: demo)")
    p.add_argument("--method", choices=METHODS, default="static")
    p.add_argument("--model-name", default=MODEL_NAME)
    p.add_argument("--force", action="store_true", help="write the INT8 bundle even if the gate fails")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    cfg = load_config(args.config).export
    report = quantize_bundle(args.bundle, args.dataset, args.out, cfg, args.method,
                             args.model_name, force=args.force, overwrite=args.overwrite)
    print(report.summary())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())

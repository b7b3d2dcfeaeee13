"""The served bundle: export to Triton (parity-checked), the optional INT8 variant, the
drift detector that ships inside it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from components.steps.outcomes import DetectorOutcome, QuantizeOutcome, finite
from components.steps.runtime import copy_bundle, resolve_config
from gourmetgram.bundle import Bundle
from gourmetgram.config import RunConfig

if TYPE_CHECKING:
    from gourmetgram.export import ExportResult

PARITY_IMAGES = 32  # real evaluation images used for the ONNX-vs-PyTorch parity check
FP16_PARITY_IMAGES = 512  # FP16 also gates on accuracy: more labelled images, so one flip is < 1 %


def parity_images(dataset_dir: str | Path, image_size: int, limit: int = PARITY_IMAGES):
    """Real evaluation images, spread over the classes, preprocessed as serving does, and
    their labels. -> (images, labels), or (None, None) without an evaluation split."""
    import numpy as np

    from gourmetgram.data.layout import list_images
    from gourmetgram.preprocessing import preprocess_batch

    items = list_images(Path(dataset_dir) / "evaluation")
    if not items:
        return None, None
    step = max(1, len(items) // limit)
    chosen = items[::step][:limit]
    return (preprocess_batch([p.read_bytes() for p, _ in chosen], image_size),
            np.array([label for _, label in chosen], dtype=np.int64))


def export_step(checkpoint: str | Path, dataset_dir: str | Path, config: str, bundle_dir: str | Path,
                model_name: str) -> ExportResult:
    """Export the Triton bundle (parity-checked on real images), calibrated on the validation split."""
    from gourmetgram.evaluation.calibration import fit_validation_calibration
    from gourmetgram.export import export_bundle
    from gourmetgram.model import load_checkpoint

    cfg = resolve_config(config)
    model = load_checkpoint(checkpoint)
    fp16 = cfg.export.precision == "fp16"
    images, labels = parity_images(dataset_dir, model.spec.image_size,
                                   FP16_PARITY_IMAGES if fp16 else PARITY_IMAGES)
    calibration = fit_validation_calibration(model, dataset_dir, cfg.evaluation.batch_size, cfg.export.ood_pass_rate)
    print(f"calibration on {calibration.n_validation} validation images: temperature "
          f"{calibration.temperature:.3f}, ECE {calibration.ece_before:.3f} -> {calibration.ece_after:.3f}; "
          f"OOD threshold (energy) {calibration.ood_threshold:.3f} passes "
          f"{calibration.ood_pass_rate:.0%} of them", flush=True)
    result = export_bundle(model, bundle_dir, cfg.export, model_name=model_name, parity_images=images,
                           parity_labels=labels, overwrite=True, calibration=calibration)
    p = result.parity
    accuracy = (f", accuracy {p.onnx_accuracy:.3f} vs PyTorch FP32 {p.torch_accuracy:.3f}"
                if p.onnx_accuracy is not None and p.torch_accuracy is not None else "")
    print(f"exported {model_name} ({result.precision.upper()}) to {result.bundle_dir} "
          f"({result.size_bytes / 1e6:.1f} MB); parity: max |logit diff| {p.max_abs_diff:.2e}, "
          f"top-1 agreement {p.top1_agreement:.3f} on {p.n_images} images{accuracy}", flush=True)
    return result


def quantize_step(bundle_dir: str | Path, dataset_dir: str | Path, config: str | RunConfig, out_dir: str | Path,
                  model_name: str, enabled: bool = True, min_speedup: float = 1.0) -> QuantizeOutcome:
    """Write to ``out_dir`` the bundle to serve: INT8 when it passes the config's accuracy
    gate and is faster, else a copy of the FP32 bundle (artifacts are immutable).

    ``enabled=False`` copies the FP32 bundle through untouched (the pipeline's
    ``quantize`` parameter is off). ``config`` is a name/path (the pipeline) or a loaded
    :class:`RunConfig`.
    """
    from gourmetgram.quantize import quantize_bundle, select_bundle

    out = Path(out_dir)
    report, precision = None, "fp32"
    exported = Bundle(Path(bundle_dir)).precision()
    if not enabled:
        copy_bundle(bundle_dir, out)
        precision = exported
        reason = "quantization is off (pipeline parameter quantize=false)"
    elif exported != "fp32":  # static INT8 calibrates an FP32 graph; an FP16 one is served as is
        copy_bundle(bundle_dir, out)
        precision = exported
        reason = f"the exported bundle is {exported.upper()} (export.precision); INT8 quantizes FP32 graphs"
    else:
        cfg = config if isinstance(config, RunConfig) else resolve_config(config)
        candidate = out.parent / f".{out.name}.int8"
        shutil.rmtree(candidate, ignore_errors=True)
        try:
            report = quantize_bundle(bundle_dir, dataset_dir, candidate, cfg.export, method="static",
                                     model_name=model_name, overwrite=True)
            print(report.summary(), flush=True)
            chosen = select_bundle(bundle_dir, candidate, report, min_speedup=min_speedup)
            if chosen == candidate:
                if out.exists():
                    shutil.rmtree(out)
                candidate.replace(out)
                precision = "int8"
                reason = f"INT8 passed the accuracy gate and is x{report.speedup:.2f} faster"
            else:
                copy_bundle(bundle_dir, out)
                reason = (f"INT8 failed the accuracy gate: {'; '.join(report.problems)}" if not report.passed
                          else f"INT8 passed the accuracy gate but is not faster (x{report.speedup:.2f} "
                               f"< x{min_speedup:g})")
        finally:
            shutil.rmtree(candidate, ignore_errors=True)
    size = Bundle(out).triton_size_bytes()
    print(f"serving the {precision.upper()} bundle: {reason}", flush=True)
    return QuantizeOutcome(precision="int8" if precision == "int8" else "fp16" if precision == "fp16" else "fp32",
                           reason=reason, size_bytes=size,
                           report=finite(report.to_dict()) if report is not None else None)


def detector_step(bundle_dir: str | Path, dataset_dir: str | Path, served_bundle_dir: str | Path
                  ) -> DetectorOutcome:
    """Copy the exported bundle and add ``detector/``: online MMD on training embeddings.

    Artifacts are immutable, so the served bundle (what register tags and serving loads)
    is a new artifact: the exported bundle plus the detector built from its own feature
    extractor.
    """
    from drift_detector.build import build_detector

    served = Path(served_bundle_dir)
    shutil.copytree(bundle_dir, served, dirs_exist_ok=True)
    folder = build_detector(served, dataset_dir)
    settings = json.loads(Bundle(served).detector_settings_path.read_text())
    print(f"drift detector built in {folder}", flush=True)
    return DetectorOutcome(folder=str(folder), settings=settings)


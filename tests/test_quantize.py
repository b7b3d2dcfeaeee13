"""INT8 quantization: real ONNX Runtime quantization of a small exported MobileNetV2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from gourmetgram.config import ExportConfig
from gourmetgram.errors import BadInput
from gourmetgram.evaluation.paired import PairedCounts
from gourmetgram.export import export_bundle, validate_bundle
from gourmetgram.model import ModelSpec, build_model
from gourmetgram.quantize import (
    QUANTIZATION_FILENAME,
    ImageCalibrationReader,
    drop_interval,
    gate_problems,
    load_split,
    main,
    ort_session,
    quantize_bundle,
    quantize_onnx,
    run_session,
    select_bundle,
)

IMAGE_SIZE = 32


def _op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory, demo_dataset) -> Path:
    """A small untrained MobileNetV2 over the demo classes, exported as a contract-1 bundle."""
    torch.manual_seed(0)
    classes = tuple((demo_dataset / "classes.txt").read_text().split())
    model = build_model(ModelSpec(classes, IMAGE_SIZE, "mobilenet_v2", 0.5, 0.2)).eval()
    out = tmp_path_factory.mktemp("q") / "fp32"
    export_bundle(model, out, ExportConfig())
    return out


@pytest.fixture(scope="module")
def eval_set(demo_dataset):
    images, labels = load_split(demo_dataset, "evaluation", IMAGE_SIZE, limit=96)
    return images, labels


@pytest.fixture(scope="module")
def calibration(demo_dataset) -> np.ndarray:
    images, _ = load_split(demo_dataset, "training", IMAGE_SIZE, limit=32)
    return images


def _onnx_of(bundle: Path) -> Path:
    return bundle / "triton" / "food11" / "1" / "model.onnx"


def test_calibration_reader_feeds_every_image_once_per_pass():
    images = np.zeros((37, 3, 8, 8), np.float32)
    reader = ImageCalibrationReader(images, "input", batch=16)
    sizes = []
    while (item := reader.get_next()) is not None:
        sizes.append(len(item["input"]))
    assert sizes == [16, 16, 5]
    reader.rewind()
    assert len(reader.get_next()["input"]) == 16
    with pytest.raises(BadInput):
        ImageCalibrationReader(np.zeros((0, 3, 8, 8), np.float32), "input")


def test_static_int8_is_quantized_smaller_and_close_to_fp32(fp32_bundle, calibration, eval_set, tmp_path):
    fp32 = _onnx_of(fp32_bundle)
    int8 = quantize_onnx(fp32, tmp_path / "int8.onnx", "static", calibration)
    ops = _op_types(int8)
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format: activations and weights
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size  # int8 weights: about a quarter
    images, _ = eval_set
    want = run_session(ort_session(fp32), images)
    got = run_session(ort_session(int8), images)
    assert got.shape == want.shape
    # Calibrated INT8 tracks the FP32 logits closely (an uncalibrated or broken graph does not).
    corr = np.corrcoef(want.ravel(), got.ravel())[0, 1]
    assert corr > 0.9, corr


def test_dynamic_int8_quantizes_weights_only(fp32_bundle, tmp_path):
    int8 = quantize_onnx(_onnx_of(fp32_bundle), tmp_path / "dyn.onnx", "dynamic")
    ops = _op_types(int8)
    assert ops & {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "DequantizeLinear"}
    assert "QuantizeLinear" not in ops  # no calibrated activation quantization


def test_static_needs_calibration_and_known_method(fp32_bundle, tmp_path):
    with pytest.raises(BadInput, match="calibration"):
        quantize_onnx(_onnx_of(fp32_bundle), tmp_path / "x.onnx", "static", None)
    with pytest.raises(BadInput, match="unknown quantization method"):
        quantize_onnx(_onnx_of(fp32_bundle), tmp_path / "x.onnx", "fp16")


def test_gate_problems_judge_the_paired_drop_not_a_few_images():
    cfg = ExportConfig(int8_min_agreement=0.95, int8_max_accuracy_drop=0.01, int8_confidence=0.95)
    # What one machine's calibration sample gave: 0.019 lower on 368 images (14 lost, 7 gained).
    # Within noise of a 0.01 margin: passes (a point threshold rejected it).
    noisy = PairedCounts(both=338, gains=7, losses=14, neither=9)
    assert round(-noisy.difference, 3) == 0.019
    assert gate_problems(noisy, 0.96, cfg) == ()
    low, high = drop_interval(noisy, cfg)
    assert low < 0.01 < high
    # A clear loss (40 lost, 2 gained: -0.10): rejected with the figures that say so.
    clear = PairedCounts(both=310, gains=2, losses=40, neither=16)
    problems = gate_problems(clear, 0.90, cfg)
    assert len(problems) == 2
    assert "agreement" in problems[0] and "0.9000" in problems[0]
    assert "accuracy drop 0.1033 (40 images lost, 2 gained)" in problems[1] and "95% confidence" in problems[1]
    assert drop_interval(clear, cfg)[0] > 0.01
    assert gate_problems(noisy, float("nan"), cfg)  # NaN agreement never passes
    assert gate_problems(PairedCounts(0, 0, 0, 0), 1.0, cfg)  # nothing to judge on: not a pass


def test_quantize_bundle_writes_a_servable_int8_bundle(fp32_bundle, demo_dataset, eval_set, calibration,
                                                       tmp_path):
    cfg = ExportConfig(int8_min_agreement=0.0, int8_max_accuracy_drop=1.0)
    out = tmp_path / "int8"
    report = quantize_bundle(fp32_bundle, demo_dataset, out, cfg, eval_images=eval_set,
                             calibration=calibration)
    assert report.passed and report.n_eval == len(eval_set[0])
    assert 0.0 <= report.top1_agreement <= 1.0
    assert report.int8_bytes < report.fp32_bytes and report.speedup > 0
    # A complete contract-1 bundle, same model name and labels, with the INT8 graph in place.
    spec = validate_bundle(out)
    assert spec == validate_bundle(fp32_bundle)
    assert "QuantizeLinear" in _op_types(_onnx_of(out))
    assert "QuantizeLinear" not in _op_types(_onnx_of(fp32_bundle))  # the source is untouched
    doc = json.loads((out / QUANTIZATION_FILENAME).read_text())
    assert doc["passed"] is True and doc["calibration_images"] == len(calibration)
    assert doc["top1_agreement"] == pytest.approx(report.top1_agreement)
    assert select_bundle(fp32_bundle, out, report, min_speedup=0.0) == out
    assert select_bundle(fp32_bundle, out, report, min_speedup=1e9) == fp32_bundle  # not faster: keep FP32


def test_a_failing_gate_writes_nothing_and_keeps_fp32(fp32_bundle, demo_dataset, eval_set, calibration,
                                                      tmp_path):
    cfg = ExportConfig(int8_min_agreement=1.01)  # unreachable: the gate must fail
    out = tmp_path / "int8"
    report = quantize_bundle(fp32_bundle, demo_dataset, out, cfg, eval_images=eval_set,
                             calibration=calibration)
    assert not report.passed and "agreement" in report.problems[0]
    assert not out.exists()
    assert select_bundle(fp32_bundle, out, report) == fp32_bundle
    forced = quantize_bundle(fp32_bundle, demo_dataset, out, cfg, force=True, eval_images=eval_set,
                             calibration=calibration)
    assert not forced.passed and json.loads((out / QUANTIZATION_FILENAME).read_text())["passed"] is False
    with pytest.raises(BadInput, match="not empty"):
        quantize_bundle(fp32_bundle, demo_dataset, out, cfg, eval_images=eval_set, calibration=calibration)
    with pytest.raises(BadInput, match="another folder"):
        quantize_bundle(fp32_bundle, demo_dataset, fp32_bundle, cfg)


def test_cli_exit_codes(fp32_bundle, tmp_path, capsys):
    assert main(["--bundle", str(tmp_path / "missing"), "--dataset", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err

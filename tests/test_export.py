"""Export to a Triton model repository bundle: layout, config, dynamic batch, parity."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from gourmetgram.config import ExportConfig
from gourmetgram.constants import FEATURES_NAME, INPUT_NAME, MODEL_NAME, OUTPUT_NAME
from gourmetgram.errors import BadInput
from gourmetgram.export import (
    ExportParityError,
    ParityReport,
    check_parity,
    enforce_parity,
    export_bundle,
    load_model_spec,
    parse_triton_config,
    read_labels,
    read_triton_config,
    render_triton_config,
    validate_bundle,
    write_triton_model,
)
from gourmetgram.model import Classifier, ModelSpec, load_checkpoint, save_checkpoint

SPEC = ModelSpec(tuple(f"dish_{i}" for i in range(10)), image_size=64, width_mult=0.5)
CFG = ExportConfig(max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_delay_microseconds=250,
                   instance_count=2, instance_kind="KIND_CPU")


def _model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(SPEC).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export from a checkpoint on disk, with explicit parity images."""
    root = tmp_path_factory.mktemp("export")
    checkpoint = save_checkpoint(_model(), root / "model.pt")
    images = np.random.default_rng(1).standard_normal((12, 3, 64, 64), dtype=np.float32)
    (root / "bundle").mkdir()  # an empty output folder, as KFP hands a component
    result = export_bundle(checkpoint, root / "bundle", CFG, parity_images=images)
    return result, checkpoint, images


def test_bundle_layout(exported):
    result, _, _ = exported
    bundle = Path(result.bundle_dir)
    model_dir = bundle / "triton" / MODEL_NAME
    for rel in ("triton/food11/config.pbtxt", "triton/food11/labels.txt", "triton/food11/1/model.onnx",
                "feature_extractor.onnx", "model_spec.json", "parity.json"):
        assert (bundle / rel).is_file(), rel
    assert Path(result.triton_repo) == bundle / "triton"
    assert Path(result.model_dir) == model_dir
    assert Path(result.onnx_path) == model_dir / "1" / "model.onnx"
    assert result.size_bytes == sum(p.stat().st_size for p in (bundle / "triton").rglob("*") if p.is_file())
    assert read_labels(model_dir) == list(SPEC.class_names)
    assert (model_dir / "labels.txt").read_text().splitlines() == list(SPEC.class_names)
    assert load_model_spec(bundle) == SPEC
    assert json.loads(json.dumps(result.to_dict()))["parity"]["n_images"] == 12
    assert validate_bundle(bundle) == SPEC
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".bundle.")]  # no temp left


def test_config_parses_back_with_triton_schema(exported):
    tc = read_triton_config(exported[0].model_dir)
    assert tc.name == MODEL_NAME and tc.platform == "onnxruntime_onnx"
    assert tc.max_batch_size == CFG.max_batch_size
    assert tc.dynamic_batching and tc.preferred_batch_sizes == CFG.preferred_batch_sizes
    assert tc.max_queue_delay_microseconds == CFG.max_queue_delay_microseconds
    assert (tc.instance_count, tc.instance_kind) == (2, "KIND_CPU")
    assert (tc.input_name, tc.input_dims, tc.input_data_type) == (INPUT_NAME, (3, 64, 64), "TYPE_FP32")
    assert (tc.output_name, tc.output_dims) == (OUTPUT_NAME, (10,))
    assert tc.label_filename == "labels.txt"


def test_config_without_preferred_sizes_and_gpu(tmp_path):
    cfg = ExportConfig(max_batch_size=64, max_queue_delay_microseconds=0, instance_kind="KIND_GPU")
    text = render_triton_config("variant", 224, 11, cfg)
    assert "preferred_batch_size" not in text
    (tmp_path / "variant").mkdir()
    (tmp_path / "variant" / "config.pbtxt").write_text(text)
    tc = read_triton_config(tmp_path / "variant")
    assert tc.preferred_batch_sizes == () and tc.dynamic_batching
    assert (tc.max_batch_size, tc.instance_kind) == (64, "KIND_GPU")
    assert (tc.input_dims, tc.output_dims) == ((3, 224, 224), (11,))


def test_config_is_written_from_the_protobuf_message_and_round_trips():
    """config.pbtxt is Triton's ModelConfig message through text_format: parsing the text back
    gives the same message, and every field serving relies on has its configured value."""
    from google.protobuf import text_format

    from gourmetgram.export import build_model_config
    from gourmetgram.export.triton_config import model_config_pb2

    cfg = ExportConfig(max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_delay_microseconds=250,
                       instance_count=3, instance_kind="KIND_GPU", tensorrt_fp16=True)
    text = render_triton_config("food11", 96, 11, cfg)
    pb = model_config_pb2()
    parsed = text_format.Parse(text, pb.ModelConfig())
    assert parsed == build_model_config("food11", 96, 11, cfg)
    assert parsed.max_batch_size == 16 and parsed.platform == "onnxruntime_onnx"
    assert list(parsed.dynamic_batching.preferred_batch_size) == [4, 8]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 250
    assert [(g.count, pb.ModelInstanceGroup.Kind.Name(g.kind)) for g in parsed.instance_group] == [(3, "KIND_GPU")]
    assert [(t.name, list(t.dims), pb.DataType.Name(t.data_type)) for t in parsed.input] == \
        [(INPUT_NAME, [3, 96, 96], "TYPE_FP32")]
    assert [(t.name, list(t.dims), t.label_filename) for t in parsed.output] == [(OUTPUT_NAME, [11], "labels.txt")]
    (accel,) = parsed.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.name == "tensorrt" and dict(accel.parameters)["precision_mode"] == "FP16"
    tc = parse_triton_config(text)
    assert (tc.gpu_accelerators, tc.tensorrt_precision_mode) == (("tensorrt",), "FP16")
    # without the option there is no optimization block; a zero delay still keeps the batcher
    plain = parse_triton_config(render_triton_config("food11", 96, 11, ExportConfig(max_queue_delay_microseconds=0)))
    assert plain.gpu_accelerators == () and plain.dynamic_batching and plain.max_queue_delay_microseconds == 0
    assert "optimization" not in render_triton_config("food11", 96, 11, ExportConfig())


def test_tensorrt_on_cpu_instances_is_refused():
    with pytest.raises(BadInput, match="tensorrt_fp16 needs GPU instances"):
        render_triton_config("food11", 96, 11, ExportConfig(instance_kind="KIND_CPU", tensorrt_fp16=True))


def test_bad_config_file_is_a_user_error(tmp_path):
    (tmp_path / "config.pbtxt").write_text("name: \"x\"\nmax_batch_size: lots\n")
    with pytest.raises(BadInput, match="not a valid Triton model config"):
        read_triton_config(tmp_path)
    with pytest.raises(BadInput, match="does not exist"):
        read_triton_config(tmp_path / "nothing")


def test_onnx_has_dynamic_batch_and_matches_torch(exported):
    result, checkpoint, _ = exported
    model = load_checkpoint(checkpoint)
    proto = onnx.load(result.onnx_path)
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    logits = ort.InferenceSession(result.onnx_path, providers=["CPUExecutionProvider"])
    features = ort.InferenceSession(str(Path(result.bundle_dir) / "feature_extractor.onnx"),
                                    providers=["CPUExecutionProvider"])
    assert [o.name for o in features.get_outputs()] == [FEATURES_NAME]
    for n in (1, 7):
        x = np.random.default_rng(n).standard_normal((n, 3, 64, 64), dtype=np.float32)
        (got,) = logits.run(None, {INPUT_NAME: x})
        (emb,) = features.run(None, {INPUT_NAME: x})
        with torch.inference_mode():
            want, want_emb = model(torch.from_numpy(x)).numpy(), model.embed(torch.from_numpy(x)).numpy()
        assert got.shape == (n, 10) and emb.shape == (n, model.feature_dim)
        np.testing.assert_allclose(got, want, atol=1e-4)
        np.testing.assert_allclose(emb, want_emb, atol=1e-4)


def test_parity_figures_recorded(exported):
    result, _, _ = exported
    p = result.parity
    assert p.n_images == 12 and p.top1_agreement == 1.0
    assert 0 <= p.max_abs_diff <= CFG.parity_atol and 0 <= p.feature_max_abs_diff <= CFG.parity_atol
    doc = json.loads((Path(result.bundle_dir) / "parity.json").read_text())
    assert doc["max_abs_diff"] == p.max_abs_diff and doc["parity_atol"] == CFG.parity_atol
    assert doc["opset"] == CFG.opset and doc["random_inputs"] is False


def test_tampered_onnx_weights_fail_parity(exported, tmp_path):
    result, checkpoint, images = exported
    proto = onnx.load(result.onnx_path)
    bias = next(t for t in proto.graph.initializer if t.name == "classifier.1.bias")
    values = numpy_helper.to_array(bias).copy()
    values[3] += 50.0  # class 3 wins everywhere in the tampered graph
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(proto, tmp_path / "tampered.onnx")
    report = check_parity(load_checkpoint(checkpoint), tmp_path / "tampered.onnx", images)
    assert report.max_abs_diff >= 49 and report.top1_agreement < 1.0
    with pytest.raises(ExportParityError, match=r"max \|logit diff\| .* > parity_atol .*top-1 agreement"):
        enforce_parity(report, CFG)


class _EagerOnlyShift(Classifier):
    """Behaviour that tracing does not capture: eager PyTorch shifts a logit, ONNX does not."""

    def forward(self, x):
        logits = super().forward(x)
        if not torch.jit.is_tracing():
            logits = logits + torch.tensor([0.0] * 9 + [0.5])
        return logits


def test_export_fails_on_parity_and_leaves_nothing(tmp_path):
    torch.manual_seed(0)
    model = _EagerOnlyShift(SPEC).eval()
    with pytest.raises(ExportParityError) as info:
        export_bundle(model, tmp_path / "bundle", ExportConfig(parity_min_agreement=0.0))
    assert "max |logit diff| 0.5" in str(info.value) and "8 images" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no half bundle, no temp folder


def test_composable_variant_and_validation(exported, tmp_path):
    """A second Triton model (e.g. a later INT8 variant) in the same repo; validate finds gaps."""
    result, _, _ = exported
    variant = write_triton_model(Path(tmp_path) / "food11_int8", result.onnx_path, SPEC.class_names,
                                 SPEC.image_size, ExportConfig(max_batch_size=8))
    assert read_triton_config(variant).name == "food11_int8"
    assert (variant / "1" / "model.onnx").read_bytes() == Path(result.onnx_path).read_bytes()

    broken = tmp_path / "broken"
    export_copy = Path(result.bundle_dir)
    subprocess.run(["cp", "-r", str(export_copy), str(broken)], check=True)
    (broken / "feature_extractor.onnx").unlink()
    (broken / "triton" / MODEL_NAME / "1" / "model.onnx").unlink()
    with pytest.raises(BadInput, match=r"missing: triton/food11/1/model.onnx, feature_extractor.onnx"):
        validate_bundle(broken)
    subprocess.run(["rm", "-r", str(broken)], check=True)
    subprocess.run(["cp", "-r", str(export_copy), str(broken)], check=True)
    (broken / "triton" / MODEL_NAME / "labels.txt").write_text("a\nb\n")
    with pytest.raises(BadInput, match="labels.txt"):
        validate_bundle(broken)


def test_bad_inputs_are_user_errors(exported, tmp_path):
    result, _, _ = exported
    with pytest.raises(BadInput, match="not empty"):
        export_bundle(_model(), result.bundle_dir, CFG)
    with pytest.raises(BadInput, match="instance_kind"):
        export_bundle(_model(), tmp_path / "b", ExportConfig(instance_kind="GPU"))
    with pytest.raises(BadInput, match="parity images must have shape"):
        export_bundle(_model(), tmp_path / "b", CFG, parity_images=np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(BadInput, match="does not exist"):
        export_bundle(tmp_path / "missing.pt", tmp_path / "b", CFG)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_read_triton_config_in_a_kserve_process(exported):
    """The transformer process imports kserve; Triton's tritonclient.grpc clashes with it."""
    code = ("import kserve\nfrom gourmetgram.export import read_triton_config\n"
            f"print(read_triton_config({exported[0].model_dir!r}).max_batch_size)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(CFG.max_batch_size)


# --- FP16 variant (issue 14) ------------------------------------------------------------------

FP16 = ExportConfig(max_batch_size=16, precision="fp16")


def test_fp16_export_is_float16_inside_fp32_at_the_edges_and_parity_checked(tmp_path):
    """export.precision fp16: the served graph's weights are float16, its input/output stay FP32
    (so the Triton config and the transformer are unchanged), and the parity check compared it
    with the FP32 PyTorch model, with accuracy on labelled images, before the bundle appeared."""
    model = _model()
    images = np.random.default_rng(3).standard_normal((16, 3, 64, 64), dtype=np.float32)
    with torch.inference_mode():
        labels = model(torch.from_numpy(images)).argmax(1).numpy()  # PyTorch FP32 is 100 % right
    result = export_bundle(model, tmp_path / "b16", FP16, parity_images=images, parity_labels=labels)
    proto = onnx.load(result.onnx_path)
    floats = {numpy_helper.to_array(t).dtype for t in proto.graph.initializer
              if numpy_helper.to_array(t).dtype.kind == "f"}
    assert floats == {np.dtype(np.float16)}
    elem = onnx.TensorProto.FLOAT
    assert proto.graph.input[0].type.tensor_type.elem_type == elem
    assert proto.graph.output[0].type.tensor_type.elem_type == elem
    tc = read_triton_config(result.model_dir)
    assert (tc.input_data_type, tc.output_data_type) == ("TYPE_FP32", "TYPE_FP32")

    p = result.parity
    assert result.precision == p.precision == "fp16" and p.n_images == 16
    assert 0 < p.max_abs_diff <= FP16.fp16_parity_atol  # float16 rounding is visible, and bounded
    assert p.top1_agreement >= FP16.fp16_min_agreement
    assert p.torch_accuracy == 1.0 and p.onnx_accuracy is not None and p.accuracy_drop <= FP16.fp16_max_accuracy_drop
    assert p.cpu_upcast_casts > 0  # ONNX Runtime CPU ran float16 nodes in float32: said, not hidden
    doc = json.loads((Path(result.bundle_dir) / "parity.json").read_text())
    assert doc["precision"] == "fp16" and doc["fp16_parity_atol"] == FP16.fp16_parity_atol
    assert "parity_atol" not in doc and "not measured here" in doc["measured_on"]
    assert validate_bundle(result.bundle_dir) == SPEC
    # the FP16 file is about half the FP32 one
    fp32 = export_bundle(model, tmp_path / "b32", CFG)
    assert Path(result.onnx_path).stat().st_size < 0.6 * Path(fp32.onnx_path).stat().st_size
    assert fp32.parity.cpu_upcast_casts == 0 and fp32.parity.onnx_accuracy is None


def test_fp16_gate_uses_fp16_tolerances_and_accuracy(exported):
    report = ParityReport(max_abs_diff=0.02, top1_agreement=1.0, n_images=100, feature_max_abs_diff=0.0,
                          precision="fp16", torch_accuracy=0.90, onnx_accuracy=0.90)
    enforce_parity(report, FP16)  # 0.02 fails the FP32 gate (1e-3) but is fine for FP16
    with pytest.raises(ExportParityError, match=r"max \|logit diff\| 0.02 > parity_atol"):
        enforce_parity(dataclasses.replace(report, precision="fp32"), FP16)
    worse = dataclasses.replace(report, max_abs_diff=0.2, top1_agreement=0.95, onnx_accuracy=0.85)
    with pytest.raises(ExportParityError, match=r"ONNX FP16 export .*max \|logit diff\| 0.2 > fp16_parity_atol "
                       r"0.05.*top-1 agreement 0.9500 < fp16_min_agreement 0.99.*accuracy drop 0.0500"):
        enforce_parity(worse, FP16)


def test_fp16_export_that_fails_its_gate_leaves_nothing(tmp_path):
    strict = ExportConfig(precision="fp16", fp16_parity_atol=1e-9)
    with pytest.raises(ExportParityError, match="fp16_parity_atol"):
        export_bundle(_model(), tmp_path / "bundle", strict)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BadInput, match="parity labels must be 8 class indices"):
        export_bundle(_model(), tmp_path / "bundle", FP16, parity_images=np.zeros((8, 3, 64, 64), np.float32),
                      parity_labels=np.full(8, 10))

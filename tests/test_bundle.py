"""The export bundle's layout (contract 1) is spelled out once, in gourmetgram.bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gourmetgram.bundle import Bundle, triton_repo_uri
from gourmetgram.errors import BadInput


def test_paths_are_the_contract_layout(tmp_path):
    b = Bundle(tmp_path, "food11")
    rel = {name: str(getattr(b, name).relative_to(tmp_path)) for name in (
        "triton_repo", "model_dir", "version_dir", "onnx_path", "config_path", "labels_path",
        "feature_extractor_path", "spec_path", "parity_path", "quantization_path", "detector_dir",
        "detector_settings_path")}
    assert rel == {
        "triton_repo": "triton", "model_dir": "triton/food11", "version_dir": "triton/food11/1",
        "onnx_path": "triton/food11/1/model.onnx", "config_path": "triton/food11/config.pbtxt",
        "labels_path": "triton/food11/labels.txt", "feature_extractor_path": "feature_extractor.onnx",
        "spec_path": "model_spec.json", "parity_path": "parity.json", "quantization_path": "quantization.json",
        "detector_dir": "detector", "detector_settings_path": "detector/detector.json"}
    assert b.with_model("food11_int8").onnx_path == tmp_path / "triton/food11_int8/1/model.onnx"
    assert triton_repo_uri("s3://models/food11/7/") == "s3://models/food11/7/triton"
    assert Bundle(str(tmp_path)).root == tmp_path  # strings are accepted, paths kept


@pytest.mark.parametrize("name", ["", "a/b", ".hidden"])
def test_bad_model_names_are_user_errors(tmp_path, name):
    with pytest.raises(BadInput, match="invalid Triton model name"):
        Bundle(tmp_path, name)


def test_presence_and_errors_name_the_files(tmp_path):
    b = Bundle(tmp_path / "b")
    with pytest.raises(BadInput, match="does not exist"):
        b.require()
    b.version_dir.mkdir(parents=True)
    b.onnx_path.write_bytes(b"x")
    b.spec_path.write_text("{not json")
    assert not b.has_detector() and b.is_bundle()
    assert b.missing() == ["triton/food11/config.pbtxt", "triton/food11/labels.txt",
                           "feature_extractor.onnx", "parity.json"]
    with pytest.raises(BadInput, match=r"incomplete; missing: triton/food11/config.pbtxt, "):
        b.require()
    with pytest.raises(BadInput, match="model_spec.json is not valid JSON"):
        b.spec_dict()
    b.spec_path.write_text(json.dumps({"class_names": ["a", 3], "image_size": True}))
    with pytest.raises(BadInput, match="no valid 'class_names'"):
        b.class_names()
    with pytest.raises(BadInput, match="no valid 'image_size'"):
        b.image_size()
    b.spec_path.write_text(json.dumps({"class_names": ["a", "b"], "image_size": 64}))
    assert (b.class_names(), b.image_size()) == (["a", "b"], 64)
    assert b.served_onnx() == b.onnx_path
    with pytest.raises(BadInput, match="is .* an exported model bundle for 'other'"):
        b.with_model("other").served_onnx()


def test_precision_reads_what_export_recorded(tmp_path):
    b = Bundle(Path(tmp_path))
    assert b.precision() == "fp32"  # bundles from before FP16 existed
    b.parity_path.write_text(json.dumps({"precision": "fp16"}))
    assert b.precision() == "fp16"
    b.quantization_path.write_text("{}")
    assert b.precision() == "int8"

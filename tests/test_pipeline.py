"""The KFP training pipeline: compiled spec, local runs through the gate, submission on the wire."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from helpers import FakeKFPApi

from gourmetgram.bundle import Bundle
from gourmetgram.config import load_config
from gourmetgram_app.cli.main import main

COMMITTED = Path(__file__).resolve().parent.parent / "pipelines" / "training_pipeline.yaml"


def _compiled(tmp_path: Path) -> Path:
    from components import base
    from pipelines.training_pipeline import compile_pipeline

    assert base.PIPELINE_IMAGE == base.DEFAULT_PIPELINE_IMAGE, "unset GOURMETGRAM_PIPELINE_IMAGE for this test"
    return Path(compile_pipeline(str(tmp_path / "pipeline.yaml")))


@pytest.fixture(scope="module")
def spec_docs(tmp_path_factory) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform spec) of a fresh compile."""
    docs = list(yaml.safe_load_all(_compiled(tmp_path_factory.mktemp("spec")).read_text()))
    assert len(docs) == 2, "expected the pipeline spec and the kubernetes platform spec"
    return docs[0], docs[1]["platforms"]["kubernetes"]


def test_committed_yaml_is_not_stale(tmp_path):
    fresh = _compiled(tmp_path).read_bytes()
    assert COMMITTED.is_file(), "run `gourmetgram pipeline compile` and commit pipelines/training_pipeline.yaml"
    assert fresh == COMMITTED.read_bytes(), (
        "pipelines/training_pipeline.yaml is stale: run `gourmetgram pipeline compile` and commit it")


def _all_tasks(spec: dict) -> dict[str, dict]:
    """Every task of the pipeline, from the root DAG and from the condition sub-DAGs."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def test_spec_requests_a_gpu_retries_and_caches_training(spec_docs):
    spec, _ = spec_docs
    executor = spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    accelerator = executor["resources"]["accelerator"]
    assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "1")
    train = spec["root"]["dag"]["tasks"]["train-model"]
    assert train["retryPolicy"]["maxRetryCount"] == 2
    assert train["cachingOptions"] == {"enableCache": True}
    tasks = _all_tasks(spec)
    # side effects are never cached
    assert tasks["register-model"].get("cachingOptions", {}).get("enableCache") is not True
    # the differential gate reads the registry: its verdict is never reused from the cache
    assert tasks["evaluate-model"].get("cachingOptions", {}).get("enableCache") is not True
    # the same URI may hold new data: the uncached dataset-version step names what it holds,
    # and ingest (cached) is keyed on it, so an unchanged dataset is a hit for ingest and train
    assert tasks["dataset-version"].get("cachingOptions", {}).get("enableCache") is not True
    ingest = tasks["ingest-and-validate"]
    assert ingest["cachingOptions"] == {"enableCache": True}
    assert ingest["inputs"]["parameters"]["source_version"]["taskOutputParameter"]["producerTask"] == "dataset-version"
    assert train["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"]["producerTask"] == "ingest-and-validate"
    # continual training: the parent (which version the production alias points at now) is
    # resolved by an uncached step and is an input of train, so train's cache is keyed on it
    assert tasks["parent-model"].get("cachingOptions", {}).get("enableCache") is not True
    parent = train["inputs"]["parameters"]["parent_version"]["taskOutputParameter"]
    assert parent == {"producerTask": "parent-model", "outputParameterKey": "Output"}
    parent_params = tasks["parent-model"]["inputs"]["parameters"]
    assert parent_params["init_from"]["componentInputParameter"] == "init_from"
    assert parent_params["registered_model_name"]["componentInputParameter"] == "registered_model_name"
    # the steps run the project image, without a pip install at start-up
    from components.base import PIPELINE_IMAGE

    for name, ex in spec["deploymentSpec"]["executors"].items():
        assert ex["container"]["image"] == PIPELINE_IMAGE, name
        assert "pip install" not in " ".join(ex["container"]["command"]), name


def test_spec_gates_export_and_register_on_the_evaluation(spec_docs):
    spec, _ = spec_docs
    tasks = _all_tasks(spec)
    passed = [t for t in tasks.values() if t.get("taskInfo", {}).get("name") == "evaluation-passed"]
    failed = [t for t in tasks.values() if t.get("taskInfo", {}).get("name") == "evaluation-failed"]
    assert len(passed) == len(failed) == 1
    cond = passed[0]["triggerPolicy"]["condition"]
    assert "evaluate-model-passed" in cond and cond.replace(" ", "").endswith("==true")
    assert failed[0]["triggerPolicy"]["condition"].startswith("!(")
    branch = spec["components"][passed[0]["componentRef"]["name"]]["dag"]["tasks"]
    assert set(branch) == {"export-model", "quantize-model", "build-drift-detector", "register-model"}
    assert branch["quantize-model"]["dependentTasks"] == ["export-model"]
    assert branch["build-drift-detector"]["dependentTasks"] == ["quantize-model"]
    assert branch["register-model"]["dependentTasks"] == ["build-drift-detector"]
    other = spec["components"][failed[0]["componentRef"]["name"]]["dag"]["tasks"]
    assert set(other) == {"reject-model"}
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {
        "dataset_uri", "config", "epochs", "model_name", "stage", "registered_model_name", "quantize",
        "production_dataset_uri", "init_from"}
    assert spec["root"]["inputDefinitions"]["parameters"]["production_dataset_uri"]["isOptional"]
    assert spec["root"]["inputDefinitions"]["parameters"]["init_from"]["defaultValue"] == ""  # the config's
    # the production export reaches ingest; the differential gate (in evaluate) knows the registry
    ingest_params = tasks["ingest-and-validate"]["inputs"]["parameters"]
    assert ingest_params["production_dataset_uri"]["componentInputParameter"] == "production_dataset_uri"
    eval_params = tasks["evaluate-model"]["inputs"]["parameters"]
    assert eval_params["registered_model_name"]["componentInputParameter"] == "registered_model_name"


def test_spec_quantizes_the_exported_bundle_only_on_request(spec_docs):
    """The optional INT8 step sits between export and the detector: it reads the exported
    bundle, is switched by the ``quantize`` parameter (off by default), and its bundle is
    what the detector (and so register) gets."""
    spec, _ = spec_docs
    root_param = spec["root"]["inputDefinitions"]["parameters"]["quantize"]
    assert root_param["parameterType"] == "BOOLEAN" and root_param["defaultValue"] is False
    tasks = _all_tasks(spec)
    quant = tasks["quantize-model"]
    exported = quant["inputs"]["artifacts"]["exported"]["taskOutputArtifact"]
    assert exported == {"outputArtifactKey": "bundle", "producerTask": "export-model"}
    assert quant["inputs"]["parameters"]["enabled"]["componentInputParameter"].endswith("quantize")
    detector_in = tasks["build-drift-detector"]["inputs"]["artifacts"]["bundle"]["taskOutputArtifact"]
    assert detector_in == {"outputArtifactKey": "bundle", "producerTask": "quantize-model"}
    outputs = spec["components"]["comp-quantize-model"]["outputDefinitions"]
    assert outputs["artifacts"]["bundle"]["artifactType"]["schemaTitle"] == "system.Model"
    assert outputs["parameters"]["precision"]["parameterType"] == "STRING"


@pytest.fixture(scope="module")
def small_bundle(demo_dataset, tmp_path_factory) -> Path:
    """An untrained demo-sized model exported as a contract-1 bundle (seconds, no training)."""
    import torch

    from gourmetgram.data.layout import validate_dataset
    from gourmetgram.export import export_bundle
    from gourmetgram.model import ModelSpec, build_model

    torch.manual_seed(0)
    cfg = load_config("demo")
    classes = validate_dataset(demo_dataset, check_images=False, progress=False).class_names
    model = build_model(ModelSpec(list(classes), cfg.model.image_size, cfg.model.arch, cfg.model.width_mult,
                                  cfg.model.dropout)).eval()
    out = tmp_path_factory.mktemp("quant") / "fp32"
    export_bundle(model, out, cfg.export)
    return out


def _onnx_bytes(bundle: Path) -> bytes:
    from gourmetgram.bundle import Bundle

    return Bundle(bundle).onnx_path.read_bytes()


def _write_config(tmp_path: Path, **export) -> str:
    from gourmetgram.constants import REPO_ROOT

    doc = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())
    doc["export"].update(export)
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_quantize_step_serves_int8_only_when_it_passes_and_is_faster(small_bundle, demo_dataset, tmp_path):
    from components.steps import quantize_step
    from gourmetgram.constants import MODEL_NAME
    from gourmetgram.export import validate_bundle
    from gourmetgram.quantize import QUANTIZATION_FILENAME

    fp32_onnx = _onnx_bytes(small_bundle)
    # off: a copy of the FP32 bundle, nothing measured
    off = quantize_step(small_bundle, demo_dataset, "demo", tmp_path / "off", MODEL_NAME, enabled=False)
    assert off.precision == "fp32" and off.report is None
    assert _onnx_bytes(tmp_path / "off") == fp32_onnx and not (tmp_path / "off" / QUANTIZATION_FILENAME).exists()

    # a gate INT8 cannot fail and no speed requirement: the INT8 bundle is served
    lenient = _write_config(tmp_path, int8_min_agreement=0.0, int8_max_accuracy_drop=1.0,
                            int8_calibration_images=32)
    on = quantize_step(small_bundle, demo_dataset, lenient, tmp_path / "int8", MODEL_NAME, min_speedup=0.0)
    assert on.precision == "int8" and on.quantized and on.report["passed"]
    quant_doc = json.loads((tmp_path / "int8" / QUANTIZATION_FILENAME).read_text())
    assert quant_doc["precision"] == "int8" and quant_doc["n_eval"] == on.report["n_eval"] > 0
    assert len(_onnx_bytes(tmp_path / "int8")) < len(fp32_onnx) / 2  # really quantized
    validate_bundle(tmp_path / "int8", MODEL_NAME)  # still a servable contract-1 bundle
    assert not list(tmp_path.glob(".int8.int8*")), "the INT8 candidate folder is cleaned up"
    json.dumps(on.to_dict(), allow_nan=False)  # artifact metadata must be plain JSON

    # an impossible speed requirement: INT8 passed the gate but FP32 is served
    slow = quantize_step(small_bundle, demo_dataset, lenient, tmp_path / "slow", MODEL_NAME, min_speedup=1e9)
    assert slow.precision == "fp32" and "not faster" in slow.reason and slow.report["passed"]
    assert _onnx_bytes(tmp_path / "slow") == fp32_onnx

    # a gate INT8 cannot pass (agreement above 100 %; a config file may not say that, a
    # RunConfig can): FP32 is served, with the gate's reason

    demo = load_config("demo")
    strict = dataclasses.replace(demo, export=dataclasses.replace(demo.export, int8_min_agreement=1.01,
                                                                  int8_calibration_images=32))
    failed = quantize_step(small_bundle, demo_dataset, strict, tmp_path / "gated", MODEL_NAME, min_speedup=0.0)
    assert failed.precision == "fp32" and not failed.report["passed"]
    assert "failed the accuracy gate" in failed.reason and "int8_min_agreement" in failed.reason
    assert _onnx_bytes(tmp_path / "gated") == fp32_onnx
    assert not (tmp_path / "gated" / QUANTIZATION_FILENAME).exists()


def test_spec_reads_credentials_from_required_secrets(spec_docs):
    """On the cluster the Secrets are required: a missing one stops the pod before it starts
    (no per-pod sqlite MLflow, no AWS default for the object store)."""
    from components.base import MLFLOW_SECRET, OBJECT_STORE_SECRET

    _, k8s = spec_docs
    executors = k8s["deploymentSpec"]["executors"]
    for name in ("exec-dataset-version", "exec-ingest-and-validate", "exec-train-model", "exec-evaluate-model",
                 "exec-register-model", "exec-reject-model"):
        secrets = {s["secretName"]: s for s in executors[name]["secretAsEnv"]}
        assert set(secrets) == {MLFLOW_SECRET, OBJECT_STORE_SECRET}, name
        assert not any(s.get("optional") for s in secrets.values()), name
        envs = {m["envVar"] for s in secrets.values() for m in s["keyToEnv"]}
        assert {"MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                "GOURMETGRAM_MODELS_BUCKET"} <= envs
    assert int(executors["exec-train-model"]["activeDeadlineSeconds"]) >= 3600
    assert "nvidia.com/gpu" in json.dumps(executors["exec-train-model"]["tolerations"])
    # DataLoader workers need a memory-backed /dev/shm (a pod's default is 64 MiB)
    shm = executors["exec-train-model"]["emptyDirMounts"]
    assert [(m["mountPath"], m["medium"]) for m in shm] == [("/dev/shm", "Memory")]
    assert shm[0]["sizeLimit"].endswith("Gi")


def test_ingest_step_links_the_dataset_and_describes_it(demo_dataset, tmp_path):
    from components.steps import ingest_step

    info = ingest_step(str(demo_dataset), tmp_path / "dataset")
    assert info.class_names[:2] == ["zero", "one"] and info.num_classes == 10
    assert sum(info.images.values()) == sum(sum(c) for c in info.counts.values())
    assert info.metadata()["num_classes"] == 10 and info.metadata()["fingerprint"] == info.fingerprint
    src = next((demo_dataset / "training" / "class_03").iterdir())
    dst = tmp_path / "dataset" / "training" / "class_03" / src.name
    assert dst.read_bytes() == src.read_bytes() and dst.stat().st_ino == src.stat().st_ino  # hard link


def test_a_bad_dataset_stops_the_pipeline_with_its_reason(demo_dataset, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(demo_dataset / "training", bad / "training")
    shutil.copytree(demo_dataset / "validation", bad / "validation")
    code = main(["pipeline", "run", "--dataset", str(bad), "--config", "demo",
                 "--pipeline-root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert "missing split folder(s) evaluation" in err


# -- local runs (slow) -------------------------------------------------------------------------

def _registered_versions(name: str) -> list[int]:
    from gourmetgram.tracking import configure_mlflow

    mlflow = configure_mlflow()
    return sorted(int(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name='{name}'"))


@pytest.mark.slow
def test_local_run_trains_passes_the_gate_exports_and_registers(demo_pipeline_run, session_home):
    from gourmetgram import registry
    from gourmetgram.constants import MODEL_NAME, REGISTERED_MODEL_NAME

    run = demo_pipeline_run  # `gourmetgram pipeline run --config demo --init-from scratch`, once a session
    out = run.out
    assert run.code == 0, out[-3000:]
    summary = out[out.rindex("Offline evaluation:"):]
    assert "Verdict: PASSED" in summary and "exported and registered" in summary
    version = run.version  # alias staging right after the run
    assert version is not None and f"version {version} (alias 'staging')" in summary
    info = registry.get_version(version)
    bundle = Path(info.tags[registry.TAG_BUNDLE])
    assert bundle.parent == session_home / "models" and str(bundle) in summary
    layout = Bundle(bundle, MODEL_NAME)
    assert layout.config_path.is_file() and layout.onnx_path.stat().st_size > 10_000
    assert layout.labels_path.read_text().split("\n")[:2] == ["zero", "one"]
    assert layout.detector_settings_path.is_file()  # the drift detector travels with the model
    calibration = layout.load_calibration()  # fitted on validation by the export step
    assert calibration.fitted and calibration.temperature > 0 and calibration.ood_pass_rate == 0.95
    assert "Calibration (temperature scaling" in summary and "Out-of-distribution threshold" in summary
    assert float(info.tags[registry.TAG_ACCURACY]) >= load_config("demo").evaluation.min_overall_accuracy
    run_id = info.run_id
    assert run_id and re.search(rf"MLflow run:\s+{run_id}", summary)
    from gourmetgram.tracking import configure_mlflow

    run = configure_mlflow().get_run(run_id)
    assert run.data.tags["gate"] == "passed" and run.data.tags["evaluation.passed"] == "true"
    assert REGISTERED_MODEL_NAME in summary


@pytest.mark.slow
def test_the_gate_rejects_an_untrained_model(demo_dataset, session_home, capsys):
    """Through `gourmetgram demo --epochs 0`: the demo reuses the dataset in $GOURMETGRAM_HOME."""
    from gourmetgram.constants import REGISTERED_MODEL_NAME

    models = session_home / "models"
    before_bundles = sorted(models.iterdir()) if models.is_dir() else []
    before_versions = _registered_versions(REGISTERED_MODEL_NAME)
    code = main(["demo", "--epochs", "0"])
    out = capsys.readouterr().out
    assert code == 1, out[-3000:]
    assert f"using the demo dataset in {demo_dataset}" in out
    summary = out[out.rindex("Offline evaluation:"):]
    assert "REJECTED by the evaluation gate" in summary and "Verdict: FAILED" in summary
    assert "overall accuracy" in summary  # the reason, not just the verdict
    assert "MODEL REJECTED by the evaluation gate" in out  # the reject step's own log
    assert (sorted(models.iterdir()) if models.is_dir() else []) == before_bundles  # nothing exported
    assert _registered_versions(REGISTERED_MODEL_NAME) == before_versions  # nothing registered
    run_dirs = sorted((session_home / "pipeline_runs").glob("gourmetgram-training-*"))
    assert not (run_dirs[-1] / "export-model").exists() and (run_dirs[-1] / "reject-model").is_dir()
    from gourmetgram.tracking import configure_mlflow

    newest = configure_mlflow().search_runs(search_all_experiments=True, order_by=["attributes.start_time DESC"],
                                            max_results=1, output_format="list")[0]
    assert newest.data.tags["gate"] == "rejected" and "overall accuracy" in newest.data.tags["gate.reasons"]
    assert newest.info.run_id in summary


def test_demo_builds_its_dataset_only_when_absent(tmp_path, monkeypatch):
    import argparse

    from gourmetgram_app.cli.commands.demo import DemoContext, stage_data

    monkeypatch.setenv("GOURMETGRAM_HOME", str(tmp_path))
    ctx = DemoContext(args=argparse.Namespace(rebuild_data=False), home=tmp_path)
    stage_data(ctx)
    assert ctx.dataset == tmp_path / "data" / "demo" and (ctx.dataset / "classes.txt").is_file()
    marker = ctx.dataset / "training" / "class_00" / "kept.jpg"
    marker.write_bytes(next((ctx.dataset / "training" / "class_00").iterdir()).read_bytes())
    stage_data(ctx)
    assert marker.exists()  # reused, not rebuilt
    ctx.args.rebuild_data = True
    stage_data(ctx)
    assert not marker.exists()


# -- submit, up to the wire --------------------------------------------------------------------

class _FakeKFP(FakeKFPApi):
    """Answers the KFP v2beta1 calls kfp.Client makes to create a run."""

    def post(self, path: str, body: dict) -> dict | None:
        if path == "/apis/v2beta1/runs":
            return {"run_id": "run-456", "display_name": body.get("display_name"),
                    "experiment_id": body.get("experiment_id"), "state": "PENDING"}
        return None


@pytest.fixture
def fake_kfp(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp/context.json
    _FakeKFP.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKFP)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _FakeKFP.requests
    server.shutdown()
    server.server_close()


def test_submit_sends_the_compiled_spec_and_parameters(fake_kfp, monkeypatch, capsys):
    url, requests = fake_kfp
    monkeypatch.setenv("KFP_TOKEN", "secret-token")
    code = main(["pipeline", "submit", "--host", url, "--experiment", "food11-nightly", "--run-name", "r1",
                 "--param", "dataset_uri=https://example.org/food11.zip", "--param", "epochs=3",
                 "--param", "config=food11"])
    assert code == 0, capsys.readouterr()
    assert "run-456" in capsys.readouterr().out
    posts = {path: (headers, body) for method, path, headers, body in requests if method == "POST"}
    _, experiment = posts["/apis/v2beta1/experiments"]
    assert experiment["display_name"] == "food11-nightly"
    headers, run = posts["/apis/v2beta1/runs"]
    assert headers.get("authorization") == "Bearer secret-token"
    assert run["display_name"] == "r1" and run["experiment_id"] == "exp-1"
    spec, platform = run["pipeline_spec"]["pipeline_spec"], run["pipeline_spec"]["platform_spec"]
    assert spec["pipelineInfo"]["name"] == "gourmetgram-training"
    assert "exec-train-model" in spec["deploymentSpec"]["executors"]
    assert "mlflow-credentials" in json.dumps(platform)  # the Secrets travel with the run
    assert run["runtime_config"]["parameters"] == {
        "dataset_uri": "https://example.org/food11.zip", "epochs": 3, "config": "food11"}


def test_submit_rejects_bad_parameters_before_the_wire(fake_kfp, capsys):
    url, requests = fake_kfp
    assert main(["pipeline", "submit", "--host", url, "--param", "epochs=3"]) == 2
    assert "missing required pipeline parameter(s): dataset_uri" in capsys.readouterr().err
    assert main(["pipeline", "submit", "--host", url, "--param", "dataset_uri=x", "--param", "epochs=many"]) == 2
    assert "expected int" in capsys.readouterr().err
    assert main(["pipeline", "submit", "--host", url, "--param", "dataset_uri=x", "--param", "lr=1"]) == 2
    assert "unknown pipeline parameter 'lr'" in capsys.readouterr().err
    assert requests == []


def test_export_step_fp16_gates_on_labelled_evaluation_images_and_quantize_passes_it_through(
        demo_dataset, tmp_path, capsys):
    """export.precision fp16 in the pipeline: the export step checks the FP16 graph on labelled
    evaluation images (accuracy against PyTorch FP32), and the INT8 step serves it unchanged."""
    import torch

    from components.steps import export_step, quantize_step
    from gourmetgram.bundle import Bundle
    from gourmetgram.constants import MODEL_NAME
    from gourmetgram.data.layout import validate_dataset
    from gourmetgram.model import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(0)
    cfg = load_config("demo")
    classes = validate_dataset(demo_dataset, check_images=False, progress=False).class_names
    model = build_model(ModelSpec(list(classes), cfg.model.image_size, cfg.model.arch, cfg.model.width_mult,
                                  cfg.model.dropout)).eval()
    checkpoint = save_checkpoint(model, tmp_path / "model.pt")
    result = export_step(checkpoint, demo_dataset, _write_config(tmp_path, precision="fp16"),
                         tmp_path / "b16", MODEL_NAME)
    p = result.parity
    assert result.precision == "fp16" and p.n_images > 32  # more images than the FP32 check
    assert p.torch_accuracy is not None and p.onnx_accuracy is not None and p.accuracy_drop <= 0.01
    out = capsys.readouterr().out
    assert "(FP16)" in out and "calibration on 355 validation images: temperature" in out
    assert Bundle(tmp_path / "b16").precision() == "fp16"
    calibration = Bundle(tmp_path / "b16").load_calibration()  # the export ships the validation fit
    assert calibration.n_validation == 355 and sum(calibration.class_prior) == pytest.approx(1.0)
    assert set(calibration.atc_thresholds) == {"atc", "atc_prior", "atc_energy", "atc_energy_prior"}
    assert p.confidence_max_abs_diff is not None and p.confidence_max_abs_diff < 0.01
    served = quantize_step(tmp_path / "b16", demo_dataset, "demo", tmp_path / "served", MODEL_NAME)
    assert served.precision == "fp16" and served.report is None and "INT8 quantizes FP32" in served.reason
    assert _onnx_bytes(tmp_path / "served") == _onnx_bytes(tmp_path / "b16")

"""The staging gate pipeline: compiled spec, the load-test step against a real local stack,
and the two branches (canary / block) against a real MLflow registry and, for the cluster
patch, a stand-in Kubernetes API server behind the real client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gourmetgram.errors import BadInput
from gourmetgram_app.cli.main import main

COMMITTED = Path(__file__).resolve().parent.parent / "pipelines" / "staging_gate_pipeline.yaml"
REQUIRED = {"staging_url", "version", "images_uri"}


def _compiled(tmp_path: Path) -> Path:
    from components import base
    from pipelines.staging_gate_pipeline import compile_pipeline

    assert base.PIPELINE_IMAGE == base.DEFAULT_PIPELINE_IMAGE, "unset GOURMETGRAM_PIPELINE_IMAGE for this test"
    return Path(compile_pipeline(str(tmp_path / "staging_gate.yaml")))


@pytest.fixture(scope="module")
def spec_docs(tmp_path_factory) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all(_compiled(tmp_path_factory.mktemp("gate-spec")).read_text()))
    assert len(docs) == 2, "expected the pipeline spec and the kubernetes platform spec"
    return docs[0], docs[1]["platforms"]["kubernetes"]


def test_committed_yaml_is_not_stale(tmp_path):
    fresh = _compiled(tmp_path).read_bytes()
    assert COMMITTED.is_file(), ("run `gourmetgram pipeline compile --pipeline staging-gate` and commit "
                                 "pipelines/staging_gate_pipeline.yaml")
    assert fresh == COMMITTED.read_bytes(), (
        "pipelines/staging_gate_pipeline.yaml is stale: run `gourmetgram pipeline compile` and commit it")


def _all_tasks(spec: dict) -> dict[str, dict]:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def test_spec_gates_the_canary_on_the_load_test(spec_docs):
    spec, _ = spec_docs
    tasks = _all_tasks(spec)
    met = [t for t in tasks.values() if t.get("taskInfo", {}).get("name") == "slo-met"]
    missed = [t for t in tasks.values() if t.get("taskInfo", {}).get("name") == "slo-missed"]
    assert len(met) == len(missed) == 1
    cond = met[0]["triggerPolicy"]["condition"]
    assert "loadtest-staging-passed" in cond and cond.replace(" ", "").endswith("==true")
    assert missed[0]["triggerPolicy"]["condition"].startswith("!(")
    assert set(spec["components"][met[0]["componentRef"]["name"]]["dag"]["tasks"]) == {"promote-to-canary"}
    assert set(spec["components"][missed[0]["componentRef"]["name"]]["dag"]["tasks"]) == {"block-canary"}
    # the branches get the version and the load test's verdict text
    promote = tasks["promote-to-canary"]["inputs"]["parameters"]
    assert promote["version"]["componentInputParameter"].endswith("version")
    assert promote["canary_percent"]["componentInputParameter"].endswith("canary_percent")
    assert promote["summary"]["componentInputParameter"].endswith("loadtest-staging-summary")
    block = tasks["block-canary"]["inputs"]["parameters"]
    assert block["reasons"]["componentInputParameter"].endswith("loadtest-staging-reasons")
    # a live measurement and side effects are never cached
    for name in ("loadtest-staging", "promote-to-canary", "block-canary"):
        assert tasks[name].get("cachingOptions", {}).get("enableCache") is not True, name


def test_spec_parameters_and_outputs(spec_docs):
    spec, _ = spec_docs
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == REQUIRED | {"slo", "users", "run_time", "canary_percent", "registered_model_name",
                                      "isvc_namespace", "isvc_name"}
    assert {k for k, v in params.items() if not v.get("isOptional")} == REQUIRED  # no cluster-invalid default
    assert params["canary_percent"]["defaultValue"] == 10 and params["slo"]["defaultValue"] == "slo"
    assert params["isvc_namespace"]["defaultValue"] == ""  # off: only the registry alias moves
    assert params["version"]["parameterType"] == "NUMBER_INTEGER"
    out = spec["components"]["comp-loadtest-staging"]["outputDefinitions"]
    assert out["artifacts"]["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert out["artifacts"]["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert out["parameters"]["passed"]["parameterType"] == "BOOLEAN"
    assert out["parameters"]["summary"]["parameterType"] == "STRING"
    root_out = spec["root"]["outputDefinitions"]
    assert set(root_out["parameters"]) == {"passed", "summary", "outcome"}
    assert root_out["artifacts"]["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    from components.base import PIPELINE_IMAGE

    for name, ex in spec["deploymentSpec"]["executors"].items():
        assert ex["container"]["image"] == PIPELINE_IMAGE, name
        assert "pip install" not in " ".join(ex["container"]["command"]), name


def test_spec_reads_mlflow_credentials_in_every_step(spec_docs):
    _, platform = spec_docs
    for executor in ("exec-loadtest-staging", "exec-promote-to-canary", "exec-block-canary"):
        secrets = platform["deploymentSpec"]["executors"][executor]["secretAsEnv"]
        mlflow = [s for s in secrets if s["secretName"] == "mlflow-credentials"]
        assert mlflow and not mlflow[0].get("optional"), executor  # required on the cluster


def test_cli_compiles_either_pipeline(tmp_path, capsys):
    out = tmp_path / "gate.yaml"
    assert main(["pipeline", "compile", "--pipeline", "staging-gate", "--output", str(out)]) == 0
    assert next(yaml.safe_load_all(out.read_text()))["pipelineInfo"]["name"] == "gourmetgram-staging-gate"
    legacy = tmp_path / "train.yaml"  # --output alone keeps compiling the training pipeline
    assert main(["pipeline", "compile", "--output", str(legacy)]) == 0
    assert next(yaml.safe_load_all(legacy.read_text()))["pipelineInfo"]["name"] == "gourmetgram-training"
    assert main(["pipeline", "compile", "--pipeline", "all", "--output", str(out)]) == 2
    assert "--output names one file" in capsys.readouterr().err


# -- the load-test step: bad input, then a real server -------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"staging_url": "food11-staging:80"}, r"must be an http\(s\) URL"),
    ({"images": ""}, "images_uri is empty"),
    ({"images": "/nonexistent/images"}, "is not a folder with"),
    ({"run_time": "soon"}, "run_time 'soon'"),
    ({"users": 0}, "users must be >= 1"),
])
def test_loadtest_step_rejects_bad_input(demo_dataset, tmp_path, kwargs, message):
    from components.steps import loadtest_step

    args = {"staging_url": "http://127.0.0.1:9", "images": str(demo_dataset / "evaluation"),
            "out_dir": tmp_path / "out", "run_time": "5s", "users": 1, **kwargs}
    with pytest.raises(BadInput, match=message):
        loadtest_step(**args)
    assert not (tmp_path / "out").exists()  # nothing started


def _slo(path: Path, p95_ms: float, min_rps: float = 0.5) -> str:
    path.write_text(f"p95_ms: {p95_ms}\nmax_error_rate: 0.05\nmin_rps: {min_rps}\nmin_requests: 5\n")
    return str(path)


@pytest.fixture(scope="module")
def staging_stack(tmp_path_factory):
    """The real local staging stack (Triton + transformer + gateway) with an untrained bundle."""
    import torch

    from gourmetgram.config import ExportConfig
    from gourmetgram.data.demo import DEMO_CLASSES
    from gourmetgram.export import export_bundle
    from gourmetgram.model import ModelSpec, build_model
    from gourmetgram_app.local.ports import Ports
    from gourmetgram_app.local.stack import LocalStack

    torch.manual_seed(0)
    bundle = tmp_path_factory.mktemp("gate-models") / "demo-1"
    export_bundle(build_model(ModelSpec(class_names=DEMO_CLASSES, image_size=64, width_mult=0.5)).eval(),
                  bundle, ExportConfig(max_batch_size=8, preferred_batch_sizes=(4,)))
    with LocalStack(bundle, "staging", Ports.free(), logger_url="",
                    log_dir=tmp_path_factory.mktemp("gate-logs")) as stack:
        yield stack


@pytest.mark.slow
def test_loadtest_step_gates_a_real_staging_stack(demo_dataset, staging_stack, tmp_path_factory):
    """A lenient SLO passes with real figures, an impossible p95 fails with that reason."""
    from components.steps import loadtest_metrics, loadtest_step

    work = tmp_path_factory.mktemp("gate-loadtest")
    images = str(demo_dataset / "evaluation")
    stack = staging_stack
    ok = loadtest_step(stack.gateway_url, images, work / "lenient", _slo(work / "lenient.yaml", 30000),
                       users=2, run_time="6s", quiet=True)
    assert ok.passed, ok.reasons
    assert ok.requests >= 5 and ok.failures == 0 and 0 < ok.p95_ms < 30000
    assert ok.bad_request_failures == 0  # the API answered every deliberately bad request with 400
    for name in ("report.html", "locust_stats.csv", "summary.json"):
        assert (work / "lenient" / name).is_file(), name
    assert json.loads((work / "lenient" / "summary.json").read_text())["passed"] is True
    figures = loadtest_metrics(ok)
    assert figures["p95_ms"] == ok.p95_ms and figures["rps"] == ok.rps > 0

    bad = loadtest_step(stack.gateway_url, images, work / "strict", _slo(work / "strict.yaml", 1),
                        users=2, run_time="6s", quiet=True)
    assert not bad.passed
    assert any(r.startswith("p95 ") and r.endswith("> 1 ms") for r in bad.reasons), bad.reasons
    assert "SLO: FAIL" in bad.format()


@pytest.mark.slow
def test_the_compiled_staging_gate_runs_on_kfp_local_against_a_real_staging_stack(
        demo_dataset, staging_stack, registered, tmp_path):
    """pipelines/staging_gate_pipeline.yaml (what a KFP backend runs), loaded and run by kfp.local
    against the real staging stack after its warm-up requests: SLOs met -> the canary branch (alias
    moved, version tagged); an impossible p95 -> the block branch (tagged failed, alias untouched)."""
    from gourmetgram import registry
    from gourmetgram_app.local.cycle import warm_up
    from gourmetgram_app.pipeline_runs import run_staging_gate_local

    images = demo_dataset / "evaluation"
    assert warm_up(staging_stack.gateway_url, images, 10) == {"sent": 10, "ok": 10}
    registry.clear_stage("canary", MODEL_NAME_UNDER_TEST)
    common = dict(users=2, run_time="6s", canary_percent=10, registered_model_name=MODEL_NAME_UNDER_TEST,
                  package=COMMITTED, pipeline_root=tmp_path / "runs")
    ok = run_staging_gate_local(staging_stack.gateway_url, registered, images,
                                slo=_slo(tmp_path / "lenient.yaml", 30000), **common)
    assert ok.passed and "SLO: PASS" in ok.summary, ok.summary
    assert (ok.outcome.verdict, ok.outcome.version, ok.outcome.canary_percent) == ("canary", registered, 10)
    assert registry.version_for("canary", MODEL_NAME_UNDER_TEST) == registered
    assert registry.get_version(registered, MODEL_NAME_UNDER_TEST).tags["staging.loadtest"] == "passed"
    runs = sorted((tmp_path / "runs").glob("gourmetgram-staging-gate-*"))
    assert runs and (runs[-1] / "loadtest-staging").is_dir()  # kfp.local ran the compiled pipeline's steps

    registry.clear_stage("canary", MODEL_NAME_UNDER_TEST)
    blocked = run_staging_gate_local(staging_stack.gateway_url, registered, images,
                                     slo=_slo(tmp_path / "strict.yaml", 1), **common)
    assert not blocked.passed and blocked.outcome.verdict == "blocked"
    assert any(r.startswith("p95 ") for r in blocked.outcome.reasons), blocked.outcome.reasons
    assert registry.version_for("canary", MODEL_NAME_UNDER_TEST) is None
    assert registry.get_version(registered, MODEL_NAME_UNDER_TEST).tags["staging.loadtest"] == "failed"


# -- the branches: a real registry, the cluster at the wire --------------------------------

ISVC = {
    "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
    "metadata": {"name": "food11", "namespace": "gourmetgram-production"},
    "spec": {
        "predictor": {"model": {"storageUri": "s3://models/1"},
                      "containers": [{"name": "transformer-container", "image": "t:1",
                                      "args": ["--model_name", "food11", "--protocol", "v2"]}]},
    },
}


@pytest.fixture()
def api_server(kube_api):
    return kube_api(ISVC)


MODEL_NAME_UNDER_TEST = "gourmetgram-gate-test"


@pytest.fixture(scope="module")
def registered(session_home) -> int:
    """One registered version (a tiny logged model) whose bundle tag points at s3://models/7."""
    import torch

    from gourmetgram import registry
    from gourmetgram.tracking import configure_mlflow

    mlflow = configure_mlflow()
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(torch.nn.Linear(2, 2), name="model", serialization_format="pickle",
                                        pip_requirements=["torch"])
    tags = registry.version_tags(evaluation_passed=True, accuracy=0.5, dataset_fingerprint="t",
                                 bundle_uri="s3://models/7")
    return registry.register_model(info.model_uri, tags, alias=None, name=MODEL_NAME_UNDER_TEST)


def test_promote_patches_the_canary_then_moves_the_alias(registered, api_server):
    from components.steps import promote_step
    from gourmetgram import registry

    api_client, calls = api_server
    outcome = promote_step(registered, MODEL_NAME_UNDER_TEST, 25, "SLO: PASS", isvc_namespace="gourmetgram-production",
                           isvc_name="food11", api_client=api_client)
    assert outcome.verdict == "canary" and outcome.inferenceservice == "gourmetgram-production/food11"
    patches = [c for c in calls if c[0] == "PATCH"]
    assert len(patches) == 1
    assert patches[0][1].endswith("/namespaces/gourmetgram-production/inferenceservices/food11")
    spec = patches[0][3]["spec"]
    assert spec["predictor"]["canaryTrafficPercent"] == 25 and "transformer" not in spec
    assert spec["predictor"]["model"]["storageUri"] == "s3://models/7"
    assert registry.version_for("canary", MODEL_NAME_UNDER_TEST) == registered
    tags = registry.get_version(registered, MODEL_NAME_UNDER_TEST).tags
    assert tags["staging.loadtest"] == "passed" and tags["staging.loadtest.summary"] == "SLO: PASS"


def test_promote_without_a_cluster_only_moves_the_alias_and_checks_input(registered):
    from components.steps import promote_step
    from gourmetgram import registry

    registry.clear_stage("canary", MODEL_NAME_UNDER_TEST)
    outcome = promote_step(registered, MODEL_NAME_UNDER_TEST, 10)
    assert outcome.inferenceservice == ""
    assert registry.version_for("canary", MODEL_NAME_UNDER_TEST) == registered
    with pytest.raises(BadInput, match="canary_percent"):
        promote_step(registered, MODEL_NAME_UNDER_TEST, 0)
    with pytest.raises(BadInput, match="no version 999"):
        promote_step(999, MODEL_NAME_UNDER_TEST, 10)


def test_block_records_why_and_leaves_the_canary_alone(registered, capsys):
    from components.steps import CanaryOutcome, block_step
    from gourmetgram import registry

    registry.clear_stage("canary", MODEL_NAME_UNDER_TEST)
    outcome = block_step(registered, MODEL_NAME_UNDER_TEST, ["p95 900 ms > 500 ms", "error rate 5.00% > 1.00%", ""],
                         "SLO: FAIL")
    assert outcome.verdict == "blocked" and outcome.reasons == ["p95 900 ms > 500 ms", "error rate 5.00% > 1.00%"]
    assert CanaryOutcome.from_json(outcome.to_json()) == outcome  # what the KFP output carries
    assert "CANARY BLOCKED" in capsys.readouterr().out
    assert registry.version_for("canary", MODEL_NAME_UNDER_TEST) is None
    tags = registry.get_version(registered, MODEL_NAME_UNDER_TEST).tags
    assert tags["staging.loadtest"] == "failed"
    assert tags["staging.loadtest.reasons"] == "p95 900 ms > 500 ms; error rate 5.00% > 1.00%"

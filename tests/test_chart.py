"""The serving chart and the committed InferenceService manifests (contract 3).

Everything renders offline with the Helm Go SDK; every object is schema-checked: built-in
kinds with kubernetes-validate, the InferenceService field by field against KServe's
generated v1beta1 models (kubernetes-validate has no CRD schemas), the Knative Service's
pod template as a core PodSpec.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import helm_python
import kubernetes_validate
import pytest
import yaml

from gourmetgram import manifests
from gourmetgram.cli.main import main
from gourmetgram.constants import ISVC_NAMES, MODEL_NAME, PRODUCTION, STAGING
from gourmetgram.errors import UserError

K8S_VERSION = "1.30"
SCALE_METRICS = {"cpu", "memory", "concurrency", "rps"}
LOGGER_MODES = {"all", "request", "response"}


# --- an offline validator for KServe InferenceServices --------------------------------

def _model_class(type_name: str):
    import kserve.models as kserve_models
    import kubernetes.client.models as k8s_models

    for module in (kserve_models, k8s_models):
        if hasattr(module, type_name):
            return getattr(module, type_name)
    return None


_PRIMITIVES = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float), "object": (object,)}


def _check(value, type_name: str, path: str, errors: list[str]) -> None:
    """Walk ``value`` against a generated OpenAPI type name; collect every mismatch."""
    if type_name.startswith("list["):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(item, type_name[5:-1], f"{path}[{i}]", errors)
        return
    if type_name.startswith("dict("):
        inner = type_name[len("dict(str, "):-1]
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return
        for key, item in value.items():
            if inner in ("str", "ResourceQuantity") and path.endswith(("limits", "requests")):
                ok = isinstance(item, (str, int)) and not isinstance(item, bool)  # a quantity
                if not ok:
                    errors.append(f"{path}.{key}: not a quantity: {item!r}")
                continue
            _check(item, inner, f"{path}.{key}", errors)
        return
    if type_name in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[type_name])
        if type_name == "int" and isinstance(value, bool):
            ok = False
        if not ok:
            errors.append(f"{path}: expected {type_name}, got {value!r}")
        return
    cls = _model_class(type_name)
    if cls is None:
        errors.append(f"{path}: unknown type {type_name}")
        return
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object ({type_name}), got {value!r}")
        return
    json_to_attr = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    for key, item in value.items():
        attr = json_to_attr.get(key)
        if attr is None:
            errors.append(f"{path}.{key}: unknown field of {type_name}")
            continue
        _check(item, cls.openapi_types[attr], f"{path}.{key}", errors)


def inference_service_errors(isvc: dict) -> list[str]:
    """Every field known to V1beta1InferenceService's types, enums and ranges valid."""
    errors: list[str] = []
    if isvc.get("apiVersion") != manifests.ISVC_API_VERSION:
        errors.append(f"apiVersion {isvc.get('apiVersion')!r}")
    _check({k: v for k, v in isvc.items() if k != "kind"}, "V1beta1InferenceService", "isvc", errors)
    for component in ("predictor", "transformer"):
        spec = isvc.get("spec", {}).get(component)
        if spec is None:
            continue
        if "scaleMetric" in spec and spec["scaleMetric"] not in SCALE_METRICS:
            errors.append(f"{component}.scaleMetric {spec['scaleMetric']!r} not in {sorted(SCALE_METRICS)}")
        if "logger" in spec and spec["logger"].get("mode", "all") not in LOGGER_MODES:
            errors.append(f"{component}.logger.mode {spec['logger']['mode']!r}")
        if "canaryTrafficPercent" in spec and not 0 <= spec["canaryTrafficPercent"] <= 100:
            errors.append(f"{component}.canaryTrafficPercent {spec['canaryTrafficPercent']} outside 0..100")
    return errors


def knative_service_errors(ksvc: dict) -> list[str]:
    """Top-level shape of a serving.knative.dev/v1 Service; its pod template as a core PodSpec."""
    errors = []
    if ksvc.get("apiVersion") != "serving.knative.dev/v1":
        errors.append(f"apiVersion {ksvc.get('apiVersion')!r}")
    unknown = set(ksvc.get("spec", {})) - {"template", "traffic"}
    if unknown:
        errors.append(f"unknown spec fields {sorted(unknown)}")
    template = ksvc["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t", **template.get("metadata", {})},
           "spec": template["spec"]}
    try:
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        errors.append(f"pod template: {'.'.join(map(str, exc.path))}: {exc.message}")
    if len(template["spec"]["containers"]) != 1:
        errors.append("Knative allows exactly one serving container here")
    return errors


def object_errors(obj: dict) -> list[str]:
    kind = obj["kind"]
    if kind == "InferenceService":
        return inference_service_errors(obj)
    if kind == "Service" and obj["apiVersion"].startswith("serving.knative.dev"):
        return knative_service_errors(obj)
    if obj["apiVersion"].startswith("monitoring.coreos.com"):
        # prometheus-operator CRDs: checked structurally here, rules by promtool in test_monitoring.
        expected = {"PodMonitor": {"selector", "podMetricsEndpoints"}, "PrometheusRule": {"groups"}}[kind]
        missing = expected - set(obj.get("spec", {}))
        return [f"{kind} spec lacks {sorted(missing)}"] if missing else []
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{kind}: {'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


# --- fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {stage: manifests.render_objects(stage) for stage in manifests.RENDERED_STAGES}


def isvc_of(objects: list[dict]) -> dict:
    return manifests.find_inference_service(objects)


# --- tests ------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", manifests.RENDERED_STAGES)
def test_chart_lints_clean_for_every_stage(stage):
    values = manifests.stage_values(stage)
    report = helm_python.lint(str(manifests.CHART_DIR), values, strict=True)
    assert report["errors"] == []
    # info-level findings (e.g. "icon is recommended") are fine; warnings and errors are not
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_committed_manifests_match_a_fresh_render():
    stale = manifests.stale_manifests()
    assert stale == [], f"run `gourmetgram manifests render`: {stale}"
    for stage in manifests.RENDERED_STAGES:
        objects = manifests.load_manifest(manifests.manifest_path(stage))
        assert isvc_of(objects)["metadata"]["name"] == ISVC_NAMES[stage]


@pytest.mark.parametrize("stage", manifests.RENDERED_STAGES)
@pytest.mark.parametrize("canary", [None, 0, 25])
def test_every_object_passes_its_schema(stage, canary):
    overrides = {} if canary is None else {"canary": {"trafficPercent": canary}}
    objects = manifests.render_objects(stage, overrides)
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "InferenceService", "Service", "PodMonitor"} <= kinds
    for obj in objects:
        assert object_errors(obj) == [], obj["kind"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gourmetgram"


def test_the_isvc_validator_catches_typos_and_bad_enums(rendered):
    isvc = isvc_of(rendered[PRODUCTION])
    assert inference_service_errors(isvc) == []
    typo = yaml.safe_load(yaml.safe_dump(isvc))
    typo["spec"]["predictor"]["canaryTraficPercent"] = 10
    typo["spec"]["predictor"]["scaleMetric"] = "qps"  # the website's spelling the enum rejects
    typo["spec"]["transformer"]["logger"]["mode"] = "both"
    typo["spec"]["transformer"]["containers"][0]["imagePullPolicy"] = ["Always"]
    errors = "\n".join(inference_service_errors(typo))
    assert "canaryTraficPercent: unknown field" in errors
    assert "scaleMetric 'qps'" in errors
    assert "logger.mode 'both'" in errors
    assert "imagePullPolicy: expected str" in errors


def test_names_annotations_and_triton_predictor(rendered):
    for stage, objects in rendered.items():
        isvc = isvc_of(objects)
        meta = isvc["metadata"]
        assert meta["name"] == ISVC_NAMES[stage]
        assert meta["annotations"] == {
            "serving.kserve.io/deploymentMode": "Serverless",
            "serving.kserve.io/enable-tag-routing": "true",
            "serving.kserve.io/enable-prometheus-scraping": "true",
        }
        model = isvc["spec"]["predictor"]["model"]
        assert model["modelFormat"] == {"name": "triton"}
        assert model["protocolVersion"] == "v2"
        assert model["runtime"] == "kserve-tritonserver"
        assert re.fullmatch(r"s3://[a-z0-9.-]+/.+/triton", model["storageUri"])
        for component in ("predictor", "transformer"):
            spec = isvc["spec"][component]
            assert spec["scaleMetric"] == "concurrency"
            assert spec["scaleTarget"] >= 1 and spec["maxReplicas"] >= max(1, spec["minReplicas"])
            assert spec["serviceAccountName"]  # S3 credentials by reference only


def test_staging_scales_to_zero_and_production_stays_warm_on_a_gpu(rendered):
    staging, production = isvc_of(rendered[STAGING]), isvc_of(rendered[PRODUCTION])
    for component in ("predictor", "transformer"):
        assert staging["spec"][component]["minReplicas"] == 0
        assert production["spec"][component]["minReplicas"] >= 1
    prod_res = production["spec"]["predictor"]["model"]["resources"]
    assert int(prod_res["limits"]["nvidia.com/gpu"]) == 1
    assert production["spec"]["predictor"]["nodeSelector"]
    assert "nvidia.com/gpu" not in staging["spec"]["predictor"]["model"]["resources"].get("limits", {})


def test_transformer_speaks_v2_to_the_triton_model_it_names(rendered):
    for objects in rendered.values():
        isvc = isvc_of(objects)
        container = isvc["spec"]["transformer"]["containers"][0]
        assert container["name"] == "kserve-container"
        args = container["args"]
        assert args[args.index("--protocol") + 1] == "v2"  # the controller never injects it
        # Triton serves <storageUri>/<model>/; the transformer calls /v2/models/<model_name>/infer
        assert manifests.transformer_model_name(isvc) == MODEL_NAME
        spec_path = args[args.index("--model_spec") + 1]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert spec_path.startswith("/mnt/models/")
        assert env["STORAGE_URI"] + "/triton" == isvc["spec"]["predictor"]["model"]["storageUri"]


def test_transformer_logs_to_the_detector_rendered_beside_it(rendered):
    for objects in rendered.values():
        isvc = isvc_of(objects)
        logger = isvc["spec"]["transformer"]["logger"]
        assert logger["mode"] == "all"
        assert "logger" not in isvc["spec"]["predictor"]  # one event stream: the client's images
        ksvc = next(o for o in objects if o["kind"] == "Service")
        ns = isvc["metadata"]["namespace"]
        assert ksvc["metadata"]["namespace"] == ns
        assert logger["url"] == f"http://{ksvc['metadata']['name']}.{ns}.svc.cluster.local"
        annotations = ksvc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["autoscaling.knative.dev/min-scale"] == "1"
        assert annotations["prometheus.io/scrape"] == "true"


def test_canary_is_rendered_only_when_set_and_paired(rendered):
    for objects in rendered.values():
        spec = isvc_of(objects)["spec"]
        assert "canaryTrafficPercent" not in spec["predictor"]
        assert "canaryTrafficPercent" not in spec["transformer"]
    for percent in (0, 10, 100):
        isvc = isvc_of(manifests.render_objects(PRODUCTION, {"canary": {"trafficPercent": percent}}))
        # kserve#1669: the components split independently, so they must carry the same share
        assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == percent
        assert isvc["spec"]["transformer"]["canaryTrafficPercent"] == percent
        assert manifests.canary_percent(isvc) == percent
    with pytest.raises(UserError, match="0..100"):
        manifests.render_objects(PRODUCTION, {"canary": {"trafficPercent": 150}})
    with pytest.raises(UserError, match="scaleMetric"):
        manifests.render_objects(STAGING, {"predictor": {"scaleMetric": "qps"}})


def test_rollout_rerenders_from_values_and_stays_fresh(tmp_path):
    chart = tmp_path / "chart"
    shutil.copytree(manifests.CHART_DIR, chart, ignore=shutil.ignore_patterns("rollout"))
    out = tmp_path / "inference_services"
    manifests.write_manifests(out, chart_dir=chart)

    path = manifests.set_rollout(PRODUCTION, storage_uri="s3://gourmetgram-models/7/triton/",
                                 canary_percent=20, chart_dir=chart, out_dir=out)
    isvc = isvc_of(manifests.load_manifest(path))
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://gourmetgram-models/7/triton"
    assert isvc["spec"]["transformer"]["containers"][0]["env"][0]["value"] == "s3://gourmetgram-models/7"
    assert manifests.canary_percent(isvc) == 20
    for component in ("predictor", "transformer"):  # both roll a new revision together
        assert isvc["spec"][component]["annotations"]["gourmetgram.io/model-version"] == "7"
    assert manifests.stale_manifests(out, chart_dir=chart) == []  # the overlay is part of the source

    manifests.set_rollout(PRODUCTION, canary_percent=0, chart_dir=chart, out_dir=out)  # roll back
    assert manifests.canary_percent(isvc_of(manifests.load_manifest(path))) == 0
    manifests.set_rollout(PRODUCTION, promote=True, chart_dir=chart, out_dir=out)
    promoted = isvc_of(manifests.load_manifest(path))
    assert manifests.canary_percent(promoted) is None
    assert promoted["spec"]["predictor"]["model"]["storageUri"].endswith("/7/triton")
    assert manifests.stale_manifests(out, chart_dir=chart) == []
    # staging was not touched
    assert isvc_of(manifests.load_manifest(out / "staging.yaml"))["spec"]["predictor"]["model"][
        "storageUri"
    ] == isvc_of(manifests.render_objects(STAGING))["spec"]["predictor"]["model"]["storageUri"]


def test_bad_rollout_input_writes_nothing(tmp_path):
    chart = tmp_path / "chart"
    shutil.copytree(manifests.CHART_DIR, chart, ignore=shutil.ignore_patterns("rollout"))
    out = tmp_path / "out"
    for kwargs, message in (({"canary_percent": 101}, "0..100"), ({"canary_percent": 5, "promote": True}, "either"),
                            ({"storage_uri": " "}, "empty")):
        with pytest.raises(UserError, match=message):
            manifests.set_rollout(PRODUCTION, chart_dir=chart, out_dir=out, **kwargs)
    with pytest.raises(UserError, match="canary"):
        manifests.set_rollout("canary", canary_percent=5, chart_dir=chart, out_dir=out)
    assert not out.exists() and not (chart / "rollout").exists()


def test_cli_render_and_check(tmp_path, capsys):
    assert main(["manifests", "render", "--check"]) == 0
    assert main(["manifests", "render", "--output-dir", str(tmp_path)]) == 0
    assert "InferenceService gourmetgram-production/food11" in capsys.readouterr().out
    assert (tmp_path / "staging.yaml").read_text() == manifests.manifest_path(STAGING).read_text()
    (tmp_path / "production.yaml").write_text((tmp_path / "production.yaml").read_text().replace("minReplicas: 1", "minReplicas: 3"))
    assert main(["manifests", "render", "--check", "--output-dir", str(tmp_path)]) == 1
    assert "stale:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # argparse rejects a stage without an InferenceService
        main(["manifests", "render", "--stage", "canary"])
    assert exc.value.code == 2

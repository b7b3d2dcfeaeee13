"""The serving chart and the committed InferenceService manifests (contract 3).

Everything renders offline with the Helm Go SDK; every object is validated strictly
(unknown fields rejected): built-in kinds with kubernetes-validate, custom resources
against the real CRDs of the pinned KServe / Knative / prometheus-operator releases
vendored in tests/schemas/ (see k8s_schemas.py), the Knative Service's pod template also as
a core PodSpec whose feature-gated fields the install's config-features patch enables.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import helm_python
import k8s_schemas
import pytest
import yaml

from gourmetgram import manifests
from gourmetgram.config import read_yaml
from gourmetgram.constants import ISVC_NAMES, MODEL_NAME, PRODUCTION, REPO_ROOT, STAGING, TRANSFORMER_CONTAINER
from gourmetgram.errors import BadInput
from gourmetgram_app.cli.main import main

# config-features as the install leaves it: upstream 1.21 defaults + infra's merge patch
KNATIVE_FEATURES = k8s_schemas.effective_knative_features(
    read_yaml(REPO_ROOT / "infra" / "k8s" / "knative" / "config-features.yaml"))


# --- strict validation against the pinned upstream schemas (tests/schemas/, k8s_schemas.py) ---

def object_errors(obj: dict) -> list[str]:
    return k8s_schemas.object_errors(obj, KNATIVE_FEATURES)


def inference_service_errors(isvc: dict) -> list[str]:
    return k8s_schemas.object_errors(isvc)


# --- fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {stage: manifests.render_objects(stage) for stage in manifests.RENDERED_STAGES}


def isvc_of(objects: list[dict]) -> dict:
    return manifests.find_inference_service(objects)


def knative_service(objects: list[dict], name: str = "drift-detector") -> dict:
    return next(o for o in objects if o["kind"] == "Service" and o["apiVersion"] == "serving.knative.dev/v1"
                and o["metadata"]["name"] == name)


def one(objects: list[dict], kind: str, name: str) -> dict:
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


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
    assert {"ServingRuntime", "InferenceService", "Service", "PodMonitor"} <= kinds
    assert "Namespace" not in kinds  # install_platform.sh owns the namespaces (and their Secrets)
    if stage == PRODUCTION:
        assert {"Role", "RoleBinding", "PrometheusRule", "ConfigMap"} <= kinds
    for obj in objects:
        assert object_errors(obj) == [], obj["kind"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gourmetgram"


def test_the_validator_rejects_unknown_fields_and_bad_values(rendered):
    isvc = isvc_of(rendered[PRODUCTION])
    assert inference_service_errors(isvc) == []
    typo = yaml.safe_load(yaml.safe_dump(isvc))
    typo["spec"]["predictor"]["canaryTraficPercent"] = 10
    typo["spec"]["predictor"]["scaleMetric"] = "qps"  # the website's spelling the enum rejects
    typo["spec"]["predictor"]["logger"]["mode"] = "both"
    typo["spec"]["predictor"]["containers"][0]["imagePullPolicy"] = ["Always"]
    typo["spec"]["predictor"]["model"]["storageURI"] = "s3://x/y"
    typo["metadata"]["annotation"] = {}
    errors = "\n".join(inference_service_errors(typo))
    assert "'canaryTraficPercent' was unexpected" in errors
    assert "'qps' is not one of" in errors
    assert "'both' is not one of" in errors
    assert "containers.0.imagePullPolicy" in errors
    assert "'storageURI' was unexpected" in errors
    assert "annotation" in errors  # metadata is a strict ObjectMeta
    # the other custom resources are strict too
    by_kind: dict[str, dict] = {}
    for o in rendered[PRODUCTION]:  # the first of each kind, the detector's Knative Service for "Service"
        by_kind.setdefault(o["kind"], o)
    by_kind["Service"] = knative_service(rendered[PRODUCTION])
    for kind, path in (("PodMonitor", ("spec", "podMetricsEndpoints", 0)), ("ServingRuntime", ("spec",)),
                       ("PrometheusRule", ("spec", "groups", 0)), ("Service", ("spec", "template", "spec"))):
        bad = yaml.safe_load(yaml.safe_dump(by_kind[kind]))
        node = bad
        for key in path:
            node = node[key]
        node["scrapeIntervall"] = "15s"
        assert any("scrapeIntervall" in e for e in object_errors(bad)), kind
    role = yaml.safe_load(yaml.safe_dump(by_kind["Role"]))
    role["rules"][0]["verb"] = ["get"]
    assert object_errors(role)


def test_knative_service_needs_the_features_the_install_enables(rendered):
    ksvc = knative_service(rendered[STAGING])
    defaults = k8s_schemas.effective_knative_features(None)  # a Knative 1.21 without the patch
    errors = "\n".join(k8s_schemas.object_errors(ksvc, defaults))
    assert "kubernetes.podspec-init-containers" in errors
    assert k8s_schemas.object_errors(ksvc, KNATIVE_FEATURES) == []


def test_names_annotations_and_triton_predictor(rendered):
    for stage, objects in rendered.items():
        isvc = isvc_of(objects)
        meta = isvc["metadata"]
        assert meta["name"] == ISVC_NAMES[stage]
        assert meta["annotations"] == {
            "serving.kserve.io/deploymentMode": "Knative",
            "serving.kserve.io/enable-tag-routing": "true",
            # KServe's metric aggregation merges Triton's series into queue-proxy's; no
            # prometheus.io annotations: the PodMonitor scrapes each series once
            "serving.kserve.io/enable-metric-aggregation": "true",
            "serving.kserve.io/enable-prometheus-scraping": "false",
            manifests.HELM_RELEASE_NAME: ISVC_NAMES[stage],
            manifests.HELM_RELEASE_NAMESPACE: meta["namespace"],
        }
        assert "transformer" not in isvc["spec"]  # collocated (kserve#1669)
        predictor = isvc["spec"]["predictor"]
        model = predictor["model"]
        assert model["modelFormat"] == {"name": "triton"}
        assert model["protocolVersion"] == "v2"
        runtime = next(o for o in objects if o["kind"] == "ServingRuntime")
        assert model["runtime"] == runtime["metadata"]["name"]
        assert re.fullmatch(r"s3://[a-z0-9.-]+/food11/\d+", model["storageUri"])  # s3://<bucket>/<model>/<version>
        assert predictor["scaleMetric"] == "concurrency"
        assert predictor["scaleTarget"] >= 1 and predictor["maxReplicas"] >= max(1, predictor["minReplicas"])
        assert predictor["serviceAccountName"]  # S3 credentials by reference only


def test_staging_scales_to_zero_and_production_stays_warm_on_a_gpu(rendered):
    staging, production = isvc_of(rendered[STAGING]), isvc_of(rendered[PRODUCTION])
    assert staging["spec"]["predictor"]["minReplicas"] == 0
    assert production["spec"]["predictor"]["minReplicas"] >= 1
    prod_res = production["spec"]["predictor"]["model"]["resources"]
    assert int(prod_res["limits"]["nvidia.com/gpu"]) == 1
    assert production["spec"]["predictor"]["nodeSelector"]
    assert "nvidia.com/gpu" not in staging["spec"]["predictor"]["model"]["resources"].get("limits", {})


def test_transformer_is_collocated_and_calls_its_own_triton(rendered):
    for objects in rendered.values():
        isvc = isvc_of(objects)
        container = manifests.transformer_container(isvc)
        assert container["name"] == TRANSFORMER_CONTAINER == "transformer-container"
        args = container["args"]
        assert args[args.index("--protocol") + 1] == "v2"  # the controller never injects it
        runtime = next(o for o in objects if o["kind"] == "ServingRuntime")
        triton = runtime["spec"]["containers"][0]
        assert triton["name"] == "kserve-container"
        http_port = next(a.split("=")[1] for a in triton["args"] if a.startswith("--http-port="))
        # the transformer reaches the Triton of its own revision on localhost, off its own port
        assert args[args.index("--predictor_host") + 1] == f"localhost:{http_port}"
        assert container["ports"] == [{"containerPort": int(args[args.index("--http_port") + 1]), "protocol": "TCP"}]
        assert int(http_port) != container["ports"][0]["containerPort"]
        # Triton serves <bundle>/triton/<model>/; the transformer calls /v2/models/<model_name>/infer
        assert "--model-repository=/mnt/models/triton" in triton["args"]
        assert manifests.transformer_model_name(isvc) == MODEL_NAME
        assert args[args.index("--model_spec") + 1] == "/mnt/models/model_spec.json"
        # KServe rejects STORAGE_URI on a collocated transformer: storageUri feeds both containers
        assert "STORAGE_URI" not in {e["name"] for e in container.get("env", [])}


def test_logger_feeds_the_detector_which_downloads_from_the_object_store(rendered):
    for stage in rendered:
        # capture off: the logger posts straight to the detector
        objects = manifests.render_objects(stage, {"capture": {"enabled": False}})
        assert not {"Broker", "Trigger"} & {o["kind"] for o in objects}
        isvc = isvc_of(objects)
        logger = isvc["spec"]["predictor"]["logger"]
        assert logger["mode"] == "all"
        ksvc = knative_service(objects)
        ns = isvc["metadata"]["namespace"]
        assert ksvc["metadata"]["namespace"] == ns
        assert logger["url"] == f"http://{ksvc['metadata']['name']}.{ns}.svc.cluster.local"
        annotations = ksvc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["autoscaling.knative.dev/min-scale"] == "1"
        init = ksvc["spec"]["template"]["spec"]["initContainers"][0]
        assert init["image"].endswith(":v0.20.0")  # the pinned KServe's storage initializer
        env = {e["name"]: e for e in init["env"]}
        # KServe's storage initializer reads AWS_ENDPOINT_URL; it is required from the Secret
        ref = env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == init["envFrom"][0]["secretRef"]["name"] and not ref.get("optional")
        assert init["args"][0] == isvc["spec"]["predictor"]["model"]["storageUri"]


# KServe v0.20.0 pkg/constants/constants.go and pkg/webhook/admission/pod/metrics_aggregate_injector.go:
# with enable-metric-aggregation the pod webhook gives queue-proxy (the qpext image) port
# "aggr-metric" 9088, which serves queue-proxy's :9091 series plus kserve-container's
# metrics from the pod annotation prometheus.kserve.io/port (default 8080).
AGGREGATE_PORT_NAME, QPEXT_DEFAULT_APP_PORT = "aggr-metric", "8080"


def aggregated_app_port(isvc: dict, runtime: dict) -> str:
    """The port qpext scrapes in kserve-container: the pod's prometheus.kserve.io/port, which
    KServe unions from the ServingRuntime's, the InferenceService's and the predictor's
    annotations (predictor.go buildObjectMeta), else its default."""
    annotations = {**(runtime["spec"].get("annotations") or {}), **isvc["metadata"].get("annotations", {}),
                   **(isvc["spec"]["predictor"].get("annotations") or {})}
    return annotations.get("prometheus.kserve.io/port", QPEXT_DEFAULT_APP_PORT)


@pytest.mark.parametrize("stage", manifests.RENDERED_STAGES)
def test_pod_monitors_scrape_each_series_once_and_reach_triton(rendered, stage):
    objects = rendered[stage]
    monitors = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PodMonitor"}
    isvc_monitor = monitors[ISVC_NAMES[stage]]
    endpoints = isvc_monitor["spec"]["podMetricsEndpoints"]
    targets = [e.get("port") or e.get("portNumber") for e in endpoints]
    # queue-proxy + Triton merged on aggr-metric; the transformer on its own (declared) port
    assert targets == [AGGREGATE_PORT_NAME, "user-port"]
    assert "http-usermetric" not in targets  # queue-proxy's own port: its series are in aggr-metric
    assert isvc_monitor["spec"]["scrapeProtocols"] == ["PrometheusText0.0.4"]
    for endpoint in endpoints:
        relabeled = {r["targetLabel"] for r in endpoint["relabelings"]}
        assert {"kn_revision_name", "kn_configuration_name", "k8s_namespace_name"} <= relabeled
    isvc = isvc_of(objects)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-metric-aggregation"] == "true"
    runtime = next(o for o in objects if o["kind"] == "ServingRuntime")
    triton = runtime["spec"]["containers"][0]
    metrics_port = next(a.split("=")[1] for a in triton["args"] if a.startswith("--metrics-port="))
    # the aggregator scrapes Triton's metrics port, not the transformer's (scraped directly)
    assert aggregated_app_port(isvc, runtime) == metrics_port
    transformer_port = manifests.transformer_container(isvc)["ports"][0]["containerPort"]
    assert aggregated_app_port(isvc, runtime) != str(transformer_port)
    without = yaml.safe_load(yaml.safe_dump(runtime))
    del without["spec"]["annotations"]  # what the first review's chart had: 8080 counted twice
    assert aggregated_app_port(isvc, without) == str(transformer_port)
    for obj in objects:  # nothing else asks to be scraped (no annotation-based double counting)
        text = yaml.safe_dump(obj)
        assert "prometheus.io/scrape" not in text and "prometheus.io/port" not in text
    assert monitors["drift-detector"]["spec"]["podMetricsEndpoints"][0]["port"] == "user-port"


def test_the_install_runs_the_aggregating_queue_proxy_of_the_pinned_releases():
    """qpext is Knative's queue-proxy plus the aggregation server: the image must be KServe's
    build for the pinned KServe, whose go.mod pins the same Knative Serving (v0.48.1 =
    knative-v1.21.1), and request metrics must be on for queue-proxy to have any."""
    patch = read_yaml(REPO_ROOT / "infra" / "k8s" / "knative" / "config-deployment.yaml")
    versions = dict(line.split("=", 1) for line in (REPO_ROOT / "infra" / "versions.env").read_text().splitlines()
                    if line and not line.startswith("#"))
    assert patch["data"]["queue-sidecar-image"] == f"kserve/qpext:{versions['KSERVE_VERSION']}"
    observability = read_yaml(REPO_ROOT / "infra" / "k8s" / "knative" / "config-observability.yaml")
    assert observability["data"]["request-metrics-protocol"] == "prometheus"


def test_every_rendered_object_names_the_helm_release_that_owns_it(rendered):
    """The chart labels everything managed-by: Helm; without the release annotations a later
    `helm install` of the same release refuses the objects kubectl created."""
    for stage, objects in rendered.items():
        for obj in objects:
            meta = obj["metadata"]
            assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
            assert meta["annotations"][manifests.HELM_RELEASE_NAME] == ISVC_NAMES[stage], obj["kind"]
            assert meta["annotations"][manifests.HELM_RELEASE_NAMESPACE] == meta["namespace"], obj["kind"]


def test_transformer_readiness_waits_for_tritons_model(rendered):
    """Knative runs the serving container's readiness probe; kserve's model-ready route with
    --enable_predictor_health_check asks Triton's /v2/models/<name>/ready (tests/test_transformer.py
    runs that against a real predictor)."""
    for objects in rendered.values():
        isvc = isvc_of(objects)
        container = manifests.transformer_container(isvc)
        assert "--enable_predictor_health_check" in container["args"]
        probe = container["readinessProbe"]["httpGet"]
        assert probe == {"path": f"/v2/models/{manifests.transformer_model_name(isvc)}/ready",
                         "port": container["ports"][0]["containerPort"]}
        # Knative: a user-container probe port must be the container's own; periodSeconds 0
        # (unset) means queue-proxy's aggressive probing, which forbids these fields
        assert not {"periodSeconds", "timeoutSeconds", "failureThreshold"} & set(container["readinessProbe"])


def test_rollout_role_is_least_privilege(rendered):
    objects = rendered[PRODUCTION]
    role = next(o for o in objects if o["kind"] == "Role")
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    assert role["metadata"]["namespace"] == "gourmetgram-production"
    assert role["rules"] == [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                              "resourceNames": ["food11"], "verbs": ["get", "patch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]
    assert not any(o["kind"] in ("Role", "RoleBinding") for o in rendered[STAGING])


def test_canary_is_one_component_and_rendered_only_when_set(rendered):
    for objects in rendered.values():
        assert "canaryTrafficPercent" not in isvc_of(objects)["spec"]["predictor"]
    for percent in (0, 10, 100):
        isvc = isvc_of(manifests.render_objects(PRODUCTION, {"canary": {"trafficPercent": percent}}))
        assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == percent
        assert manifests.canary_percent(isvc) == percent
    with pytest.raises(BadInput, match="0..100"):
        manifests.render_objects(PRODUCTION, {"canary": {"trafficPercent": 150}})
    with pytest.raises(BadInput, match="scaleMetric"):
        manifests.render_objects(STAGING, {"predictor": {"scaleMetric": "qps"}})
    with pytest.raises(BadInput, match="local path"):
        manifests.render_objects(STAGING, {"model": {"bundleUri": "/home/me/.gourmetgram/bundles/7"}})
    with pytest.raises(BadInput, match="kserve#1669"):
        manifests.canary_percent({"spec": {"predictor": {}, "transformer": {"canaryTrafficPercent": 5}}})


def test_rollout_rerenders_from_values_and_stays_fresh(tmp_path):
    chart = tmp_path / "chart"
    shutil.copytree(manifests.CHART_DIR, chart, ignore=shutil.ignore_patterns("rollout"))
    out = tmp_path / "inference_services"
    manifests.write_manifests(out, chart_dir=chart)

    def detector_bundle(objects):
        ksvc = knative_service(objects)
        return ksvc["spec"]["template"]["spec"]["initContainers"][0]["args"][0]

    stable = isvc_of(manifests.load_manifest(out / "production.yaml"))["spec"]["predictor"]["model"]["storageUri"]
    path = manifests.set_rollout(PRODUCTION, storage_uri="s3://gourmetgram-models/food11/7/triton/",
                                 canary_percent=20, chart_dir=chart, out_dir=out)
    objects = manifests.load_manifest(path)
    isvc = isvc_of(objects)
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://gourmetgram-models/food11/7"
    assert manifests.canary_percent(isvc) == 20
    assert isvc["spec"]["predictor"]["annotations"]["gourmetgram.io/model-version"] == "7"
    assert detector_bundle(objects) == stable  # the canary is judged against the stable reference
    assert manifests.stale_manifests(out, chart_dir=chart) == []  # the overlay is part of the source

    manifests.set_rollout(PRODUCTION, canary_percent=0, chart_dir=chart, out_dir=out)  # roll back
    assert manifests.canary_percent(isvc_of(manifests.load_manifest(path))) == 0
    assert detector_bundle(manifests.load_manifest(path)) == stable
    manifests.set_rollout(PRODUCTION, promote=True, chart_dir=chart, out_dir=out)
    objects = manifests.load_manifest(path)
    promoted = isvc_of(objects)
    assert manifests.canary_percent(promoted) is None
    assert promoted["spec"]["predictor"]["model"]["storageUri"].endswith("/food11/7")
    assert detector_bundle(objects) == "s3://gourmetgram-models/food11/7"  # promote moves the reference
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
                            ({"storage_uri": " "}, "empty"), ({"storage_uri": "/tmp/bundles/7"}, "object-store URI")):
        with pytest.raises(BadInput, match=message):
            manifests.set_rollout(PRODUCTION, chart_dir=chart, out_dir=out, **kwargs)
    with pytest.raises(BadInput, match="canary"):
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


def test_one_bundle_loads_on_every_stage(rendered):
    """Staging has no GPU, production has one: the exported instance group must fit both."""
    from gourmetgram.config import load_config
    from gourmetgram.export import parse_triton_config, render_triton_config

    cfg = load_config("food11")
    assert cfg.export.instance_kind == "KIND_AUTO"
    # proto3 text omits the default kind (KIND_AUTO); Triton's schema reads it back
    assert parse_triton_config(render_triton_config(MODEL_NAME, 224, 11, cfg.export)).instance_kind == "KIND_AUTO"
    gpus = {stage: int(isvc_of(objects)["spec"]["predictor"]["model"]["resources"].get("limits", {})
                       .get("nvidia.com/gpu", 0)) for stage, objects in rendered.items()}
    assert gpus == {STAGING: 0, PRODUCTION: 1}  # same bundle, CPU in staging, GPU in production


# --- shadow deployment (issue 12): Istio mirror to a second InferenceService -----------------
SHADOW = {"shadow": {"enabled": True, "version": "7", "bundleUri": "s3://gourmetgram-models/food11/7",
                     "percent": 25, "host": "api.gourmetgram.example"}}


def test_shadow_is_a_mirror_to_a_second_inference_service_and_passes_its_schemas():
    objects = manifests.render_objects(PRODUCTION, SHADOW)
    for obj in objects:
        assert object_errors(obj) == [], obj["kind"]
    isvcs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "InferenceService"}
    assert set(isvcs) == {ISVC_NAMES[PRODUCTION], "food11-shadow"}
    shadow, production = isvcs["food11-shadow"], isvcs[ISVC_NAMES[PRODUCTION]]
    # Standard mode: the predictor Service routes by port, so Istio's "-shadow" Host suffix is harmless.
    assert shadow["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert shadow["spec"]["predictor"]["model"]["storageUri"] == "s3://gourmetgram-models/food11/7"
    assert shadow["spec"]["predictor"]["annotations"]["gourmetgram.io/model-version"] == "7"
    assert "canaryTrafficPercent" not in shadow["spec"]["predictor"]
    # Same predictor as production otherwise (one template), production untouched; the
    # transformer labels its label-free estimate with its own version and stage "shadow".
    def estimate_labels(isvc: dict) -> tuple[str, str]:
        args = isvc["spec"]["predictor"]["containers"][0]["args"]
        return args[args.index("--model_version") + 1], args[args.index("--stage") + 1]

    assert estimate_labels(shadow) == ("7", "shadow") and estimate_labels(production) == ("1", PRODUCTION)
    unlabelled = [dict(c, args=c["args"][:c["args"].index("--model_version")])
                  for isvc in (shadow, production) for c in isvc["spec"]["predictor"]["containers"]]
    assert unlabelled[0] == unlabelled[1]
    assert production == isvc_of(manifests.render_objects(PRODUCTION))
    vs = one(objects, "VirtualService", "food11-mirror")  # (production's API host has its own)
    assert vs["apiVersion"] == "networking.istio.io/v1"
    [route] = vs["spec"]["http"]
    assert route["mirror"] == {"host": "food11-shadow-predictor.gourmetgram-production.svc.cluster.local",
                               "port": {"number": 80}}
    assert route["mirrorPercentage"] == {"value": 25}
    assert route["rewrite"]["authority"] == "food11.gourmetgram-production.svc.cluster.local"
    assert vs["spec"]["hosts"] == ["api.gourmetgram.example"]
    # The strict schema catches a typo in Istio's fields.
    typo = yaml.safe_load(yaml.safe_dump(vs))
    typo["spec"]["http"][0]["mirrorPercent"] = {"value": 25}  # deprecated int field: wrong shape
    typo["spec"]["http"][0]["mirrorPercentage"]["val"] = 1
    assert object_errors(typo)


def test_shadow_is_off_by_default_and_refuses_bad_values():
    for stage in manifests.RENDERED_STAGES:
        assert not any(o["kind"] == "VirtualService" and o["metadata"]["name"].endswith("-mirror")
                       for o in manifests.render_objects(stage))
    bad = [
        ({**SHADOW["shadow"], "percent": 150}, "shadow.percent must be within 0..100"),
        ({**SHADOW["shadow"], "host": ""}, "shadow.host is required"),
        ({**SHADOW["shadow"], "bundleUri": "/home/me/bundle"}, "not an object-store URI"),
        ({**SHADOW["shadow"], "isvcName": "food11"}, "must differ"),
    ]
    for values, message in bad:
        with pytest.raises(BadInput, match=message):
            manifests.render_objects(PRODUCTION, {"shadow": values})
    with pytest.raises(BadInput, match="production stage only"):
        manifests.render_objects(STAGING, SHADOW)


def test_webapp_renders_once_with_its_route_and_read_only_access(rendered):
    assert not [o for o in rendered[STAGING] if o["metadata"]["name"].startswith("gourmetgram-web")]
    objects = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o
               for o in rendered[PRODUCTION] if o["metadata"]["name"].startswith("gourmetgram-web")}
    ns = "gourmetgram-production"
    deployment = objects[("Deployment", ns, "gourmetgram-web")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # a client of the production API host (predict + feedback, through Knative's local gateway),
    # never of Triton
    assert env["GOURMETGRAM_API_URL"] == f"http://{ISVC_NAMES[PRODUCTION]}-api.{ns}.svc.cluster.local"
    without_route = manifests.render_objects(PRODUCTION, {"capture": {"route": {"host": ""}}})
    web = one(without_route, "Deployment", "gourmetgram-web")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "GOURMETGRAM_API_URL", "value": f"http://{ISVC_NAMES[PRODUCTION]}.{ns}.svc.cluster.local"} \
        in web["env"]  # no API host: the InferenceService's own (predict only)
    assert env["GOURMETGRAM_MODEL_NAME"] == MODEL_NAME
    from gourmetgram_webapp.config import StageSource

    stages = [StageSource.parse(t) for t in env["GOURMETGRAM_WEBAPP_STAGES"].split()]
    assert [(s.stage, s.served) for s in stages] == [
        (STAGING, "kube:gourmetgram-staging/food11-staging"), (PRODUCTION, "kube:gourmetgram-production/food11")]
    assert stages[1].detector == "http://drift-detector.gourmetgram-production.svc.cluster.local"
    # accuracy + backlog: this release's capture sink's read-only summary, through its Service
    from gourmetgram.constants import LOOP_SUMMARY_PATH

    sink = one(rendered[PRODUCTION], "Service", "capture-sink")["metadata"]
    assert env["GOURMETGRAM_FEEDBACK_SUMMARY_URL"] == (
        f"http://{sink['name']}.{sink['namespace']}.svc.cluster.local{LOOP_SUMMARY_PATH}")
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"][0]["containerPort"] == int(env["WEBAPP_PORT"])
    service = objects[("Service", ns, "gourmetgram-web")]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    ingress = objects[("Ingress", ns, "gourmetgram-web")]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "gourmetgram-web", "port": {"name": "http"}}
    for stage_ns in ("gourmetgram-staging", ns):  # read-only on InferenceServices, in each stage
        role = objects[("Role", stage_ns, "gourmetgram-web-read-inferenceservices")]
        assert role["rules"] == [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                                  "verbs": ["get", "list", "watch"]}]
        binding = objects[("RoleBinding", stage_ns, "gourmetgram-web-read-inferenceservices")]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gourmetgram-web", "namespace": ns}]


# --- closing the loop on the cluster (issue 9): Broker, Triggers, capture sink, feedback route ---
BROKER_INGRESS = "http://broker-ingress.knative-eventing.svc.cluster.local"


def pod_labels(obj: dict) -> dict:
    return obj["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("stage", manifests.RENDERED_STAGES)
def test_logger_posts_to_the_broker_whose_triggers_reach_the_rendered_services(rendered, stage):
    objects = rendered[stage]
    ns = isvc_of(objects)["metadata"]["namespace"]
    [broker] = [o for o in objects if o["kind"] == "Broker"]
    assert broker["metadata"]["namespace"] == ns
    assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "MTChannelBasedBroker"
    assert broker["spec"]["delivery"]["retry"] >= 1  # each Trigger retries on its own
    # the logger's one URL is the broker's address (Knative's multi-tenant broker ingress)
    logger = isvc_of(objects)["spec"]["predictor"]["logger"]
    assert logger["url"] == f"{BROKER_INGRESS}/{ns}/{broker['metadata']['name']}"
    # KServe's agent copies the pod's version annotation into each event's `annotations`
    # extension; the capture sink reads the version from there
    from capture_sink.capture import Capture
    from gourmetgram.constants import MODEL_VERSION_ANNOTATION
    from gourmetgram.inference_events import InferenceEvent

    assert logger["metadataAnnotations"] == [MODEL_VERSION_ANNOTATION]
    version = isvc_of(objects)["spec"]["predictor"]["annotations"][MODEL_VERSION_ANNOTATION]
    event = InferenceEvent("id-1", "org.kubeflow.serving.inference.request", "pod",
                           {"annotations": json.dumps({MODEL_VERSION_ANNOTATION: version})})
    assert Capture.meta(event)["model_version"] == version
    triggers = [o for o in objects if o["kind"] == "Trigger"]
    assert len(triggers) == 2
    reached = set()
    for trigger in triggers:
        assert trigger["spec"]["broker"] == broker["metadata"]["name"]
        assert trigger["metadata"]["namespace"] == ns and "filter" not in trigger["spec"]  # every event
        ref = trigger["spec"]["subscriber"]["ref"]
        [target] = [o for o in objects if (o["apiVersion"], o["kind"], o["metadata"]["name"])
                    == (ref["apiVersion"], ref["kind"], ref["name"])]
        assert target["metadata"]["namespace"] == ns
        reached.add((target["apiVersion"], target["metadata"]["name"]))
    assert reached == {("serving.knative.dev/v1", "drift-detector"), ("v1", "capture-sink")}
    # Knative resolves a core Service to http://<name>.<ns>.svc.cluster.local/ (port 80): the
    # Service must listen there and lead to the sink's container port
    service = one(objects, "Service", "capture-sink")
    deployment = one(objects, "Deployment", "capture-sink")
    assert selects(service["spec"]["selector"], pod_labels(deployment))
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels(deployment))
    [port] = service["spec"]["ports"]
    assert port["port"] == 80
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["targetPort"] in named
    args = container["args"]
    assert int(args[args.index("--port") + 1]) == named[port["targetPort"]]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    # no other pod of the release is selected by the sink's Service
    for other in objects:
        if other["kind"] in ("Deployment",) and other is not deployment:
            assert not selects(service["spec"]["selector"], pod_labels(other))
    assert not selects(service["spec"]["selector"], pod_labels(knative_service(objects)))


def test_capture_off_renders_no_loop_objects_and_a_detector_only_policy():
    for stage in manifests.RENDERED_STAGES:
        objects = manifests.render_objects(stage, {"capture": {"enabled": False}})
        names = {(o["kind"], o["metadata"]["name"]) for o in objects}
        assert not {n for n in names if "capture" in n[1] or n[0] in ("Broker", "Trigger")}
        [policy] = [o for o in objects if o["kind"] == "NetworkPolicy"]
        allowed = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                   for p in policy["spec"]["ingress"][0]["from"] if "namespaceSelector" in p}
        assert "knative-eventing" not in allowed


@pytest.mark.parametrize("stage", manifests.RENDERED_STAGES)
def test_capture_sink_takes_its_secrets_by_reference_and_its_classes_from_the_stable_bundle(rendered, stage):
    objects = rendered[stage]
    deployment = one(objects, "Deployment", "capture-sink")
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    refs = {name: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for name, e in env.items() if "valueFrom" in e}
    assert refs == {"GOURMETGRAM_LOOP_DB": ("gourmetgram-loop-db", "url"),
                    "GOURMETGRAM_S3_ENDPOINT_URL": ("gourmetgram-s3", "AWS_ENDPOINT_URL"),
                    "AWS_ACCESS_KEY_ID": ("gourmetgram-s3", "AWS_ACCESS_KEY_ID"),
                    "AWS_SECRET_ACCESS_KEY": ("gourmetgram-s3", "AWS_SECRET_ACCESS_KEY")}
    for e in env.values():  # required keys: a missing one stops the pod, it never runs without
        assert "value" not in e or "valueFrom" not in e
        assert not e.get("valueFrom", {}).get("secretKeyRef", {}).get("optional")
    assert env["GOURMETGRAM_LOOP_OBJECTS"]["value"] == f"s3://gourmetgram-captures/{stage}"
    # the feedback API's client is the caller's address behind the gateways, not theirs
    assert env["FORWARDED_ALLOW_IPS"]["value"] == "127.0.0.0/8,10.42.0.0/16"
    assert "envFrom" not in container
    # the class names come from the stable bundle's model_spec.json, downloaded like the detector's
    detector_init = knative_service(objects)["spec"]["template"]["spec"]["initContainers"][0]
    [init] = spec["initContainers"]
    assert init == detector_init
    assert container["args"][container["args"].index("--bundle") + 1] == init["args"][1] == "/mnt/models"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"model-bundle": "/mnt/models"} and {"name": "model-bundle", "emptyDir": {}} in spec["volumes"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["securityContext"]["runAsNonRoot"] is True
    # scraped once, on its named port (production accuracy for GourmetGramProductionAccuracyLow)
    monitor = one(objects, "PodMonitor", "capture-sink")
    assert selects(monitor["spec"]["selector"]["matchLabels"], pod_labels(deployment))
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"


def test_capture_sink_image_serves_the_paths_the_chart_routes_and_probes():
    import types

    from capture_sink.server import create_app

    values = yaml.safe_load((manifests.CHART_DIR / "values.yaml").read_text())
    dockerfile = (REPO_ROOT / "capture" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "capture_sink"]' in dockerfile
    assert "COPY configs/loop.yaml /app/configs/loop.yaml" in dockerfile  # the per-stage sampling
    assert f"EXPOSE {values['capture']['port']}" in dockerfile
    app = create_app(types.SimpleNamespace(receive=lambda r: None, feedback=lambda r: None))  # type: ignore[arg-type]
    routes = {(r.path, m) for r in app.routes for m in (r.methods or ())}
    # events from the Trigger (POST /), the feedback route, the probes, the PodMonitor and the
    # web app's summary (the URL the chart gives it)
    from gourmetgram.constants import LOOP_SUMMARY_PATH

    assert {("/", "POST"), ("/v1/feedback", "POST"), ("/health", "GET"), ("/metrics", "GET"),
            (LOOP_SUMMARY_PATH, "GET")} <= routes


@pytest.mark.parametrize("stage", manifests.RENDERED_STAGES)
def test_sampling_is_configs_loop_for_the_stage_the_sink_reads_from_the_events(rendered, stage):
    from capture_sink.capture import stage_of
    from gourmetgram.constants import CANARY
    from gourmetgram.loop.settings import load_loop_settings

    isvc = isvc_of(rendered[stage])
    name = isvc["metadata"]["name"]
    # KServe's logger names the InferenceService and the endpoint in every event's extensions
    assert stage_of({"inferenceservicename": name, "endpoint": "default"}) == stage
    assert stage_of({"inferenceservicename": name, "endpoint": "canary"}) == CANARY
    sampling = load_loop_settings("loop").capture.sampling
    assert {stage, CANARY} <= set(sampling)  # each stage this release's events carry has its rate
    env = one(rendered[stage], "Deployment", "capture-sink")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "GOURMETGRAM_LOOP_CONFIG" not in {e["name"] for e in env}  # the image's configs/loop.yaml


def test_feedback_route_sits_next_to_predict_on_the_api_host(rendered):
    from gourmetgram_app.local.gateway import FEEDBACK_PATH
    from gourmetgram_webapp.api import FEEDBACK_PATH as WEBAPP_FEEDBACK

    objects = rendered[PRODUCTION]
    ns, isvc_name = "gourmetgram-production", ISVC_NAMES[PRODUCTION]
    vs = one(objects, "VirtualService", f"{isvc_name}-api")
    local_host = f"{isvc_name}-api.{ns}.svc.cluster.local"
    assert vs["spec"]["hosts"] == ["api.gourmetgram.example.org", local_host]
    assert vs["spec"]["gateways"] == ["knative-serving/knative-ingress-gateway", "knative-serving/knative-local-gateway"]
    routes = {r["name"]: r for r in vs["spec"]["http"]}
    assert FEEDBACK_PATH == WEBAPP_FEEDBACK == "/v1/feedback"
    assert routes["feedback"]["match"] == [{"uri": {"exact": FEEDBACK_PATH}}]
    [dest] = routes["feedback"]["route"]
    service = one(objects, "Service", "capture-sink")
    assert dest["destination"] == {"host": f"capture-sink.{ns}.svc.cluster.local",
                                   "port": {"number": service["spec"]["ports"][0]["port"]}}
    # predict as the InferenceService answers it (Knative's local gateway, Host rewritten)
    assert [m["uri"]["prefix"] for m in routes["predict"]["match"]] == ["/v1/models/", "/v2/models/"]
    assert routes["predict"]["rewrite"] == {"authority": f"{isvc_name}.{ns}.svc.cluster.local"}
    local_gateway = routes["predict"]["route"][0]["destination"]["host"]
    assert local_gateway == "knative-local-gateway.istio-system.svc.cluster.local"
    # the in-cluster name resolves to the local gateway, which routes it by this VirtualService
    alias = one(objects, "Service", f"{isvc_name}-api")
    assert alias["spec"] == {"type": "ExternalName", "externalName": local_gateway,
                             "ports": [{"name": "http", "port": 80}]}
    web = one(objects, "Deployment", "gourmetgram-web")["spec"]["template"]["spec"]["containers"][0]
    api_url = next(e["value"] for e in web["env"] if e["name"] == "GOURMETGRAM_API_URL")
    assert api_url == f"http://{local_host}"  # the web app's feedback takes this route
    # staging: no public API host, no route objects
    assert not [o for o in rendered[STAGING] if o["kind"] == "VirtualService" or o["metadata"]["name"].endswith("-api")]


@pytest.mark.parametrize("stage", manifests.RENDERED_STAGES)
def test_network_policies_select_their_pods_and_admit_the_broker(rendered, stage):
    objects = rendered[stage]
    policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
    assert set(policies) == {"drift-detector", "capture-sink"}
    sink_pods = pod_labels(one(objects, "Deployment", "capture-sink"))
    detector_pods = pod_labels(knative_service(objects))
    others = [pod_labels(o) for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] != "capture-sink"]
    sink, detector = policies["capture-sink"]["spec"], policies["drift-detector"]["spec"]
    assert selects(sink["podSelector"]["matchLabels"], sink_pods)
    assert not any(selects(sink["podSelector"]["matchLabels"], p) for p in [detector_pods, *others])
    assert selects(detector["podSelector"]["matchLabels"], detector_pods)
    assert not selects(detector["podSelector"]["matchLabels"], sink_pods)
    assert sink["policyTypes"] == ["Ingress"]
    [rule] = sink["ingress"]
    # only the sink's port, and only from: the broker's namespace, the gateway pods, Prometheus,
    # and (where the web app runs) this namespace's web app pods, for the operator page's summary
    container = one(objects, "Deployment", "capture-sink")["spec"]["template"]["spec"]["containers"][0]
    assert rule["ports"] == [{"port": container["ports"][0]["name"], "protocol": "TCP"}]
    peers = {(p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name"),
              tuple(sorted(p.get("podSelector", {}).get("matchLabels", {}).items()))) for p in rule["from"]}
    expected = {("knative-eventing", ()), ("monitoring", ())}
    if stage == PRODUCTION:  # the API host's feedback route comes through the Istio gateway pods
        expected.add(("istio-system", (("istio", "ingressgateway"),)))
        [web_peer] = [p["podSelector"]["matchLabels"] for p in rule["from"] if "namespaceSelector" not in p]
        expected.add((None, tuple(sorted(web_peer.items()))))
        assert selects(web_peer, pod_labels(one(objects, "Deployment", "gourmetgram-web")))
        assert not selects(web_peer, sink_pods)
    assert peers == expected
    assert all(set(p) <= {"namespaceSelector", "podSelector"} for p in rule["from"])
    # the broker delivers to the detector too: its policy admits knative-eventing
    allowed = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
               for p in detector["ingress"][0]["from"] if "namespaceSelector" in p}
    assert "knative-eventing" in allowed


def test_gateway_pod_labels_are_those_of_the_installed_istio_gateway():
    """The istio/gateway chart labels its pods istio=<release name without "istio-">."""
    install = (REPO_ROOT / "infra" / "scripts" / "install_platform.sh").read_text()
    release = re.search(r"helm upgrade --install (\S+) istio/gateway", install).group(1)
    values = yaml.safe_load((manifests.CHART_DIR / "values.yaml").read_text())
    assert values["capture"]["route"]["gatewayPodLabels"] == {"istio": release.removeprefix("istio-")}


def test_capture_refuses_bad_values():
    with pytest.raises(BadInput, match="logger.enabled"):
        manifests.render_objects(PRODUCTION, {"logger": {"enabled": False}})
    with pytest.raises(BadInput, match="s3:// URI"):
        manifests.render_objects(STAGING, {"capture": {"objectsUri": "/var/captures"}})
    with pytest.raises(BadInput, match="must differ"):
        manifests.render_objects(STAGING, {"capture": {"name": "drift-detector"}})


def test_the_validator_holds_knative_eventing_objects_to_the_webhook(rendered):
    broker = next(o for o in rendered[PRODUCTION] if o["kind"] == "Broker")
    trigger = next(o for o in rendered[PRODUCTION] if o["kind"] == "Trigger")
    assert object_errors(broker) == [] and object_errors(trigger) == []
    bad = yaml.safe_load(yaml.safe_dump(trigger))
    bad["spec"]["subscriber"]["refs"] = bad["spec"]["subscriber"].pop("ref")  # CRD: spec preserves unknowns
    assert any("'refs' was unexpected" in e for e in object_errors(bad))
    bad = yaml.safe_load(yaml.safe_dump(trigger))
    bad["spec"]["filter"] = {"attributes": {"type": "org.kubeflow.serving.inference.request"}}
    assert object_errors(bad) == []  # attribute filters are an open map
    bad["spec"]["filter"]["attribute"] = {}
    assert object_errors(bad)
    bad = yaml.safe_load(yaml.safe_dump(broker))
    bad["spec"]["delivery"]["retries"] = 3
    bad["spec"]["delivery"]["retry"] = "ten"
    errors = "\n".join(object_errors(bad))
    assert "'retries' was unexpected" in errors and "'ten' is not of type 'integer'" in errors


# --- the retrain trigger receiver on the cluster ------------------------------------------

RECEIVER_ON = {"retrainReceiver": {"enabled": True}, "monitoring": {"retrainReceiver": {"enabled": True}}}


def _receiver_objects() -> dict[tuple[str, str], dict]:
    objects = manifests.render_objects(PRODUCTION, RECEIVER_ON)
    return {(o["kind"], o["metadata"]["name"]): o for o in objects
            if "retrain" in o["metadata"]["name"] or o["kind"] == "AlertmanagerConfig"}


def test_retrain_receiver_is_a_deployment_alertmanager_reaches_with_a_token_from_a_secret():
    import urllib.parse

    from gourmetgram_app.local.retrain_cli import build_parser

    objects = _receiver_objects()
    assert {k for k, _ in objects} == {"ServiceAccount", "PersistentVolumeClaim", "Deployment", "Service",
                                       "NetworkPolicy", "PodMonitor", "AlertmanagerConfig"}
    for obj in objects.values():  # strictly valid, the AlertmanagerConfig against the operator's CRD
        assert object_errors(obj) == [], obj["kind"]
    ns = "gourmetgram-production"
    assert {o["metadata"]["namespace"] for o in objects.values()} == {ns}
    deployment = objects[("Deployment", "gourmetgram-retrain-receiver")]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    # the container's arguments are the receiver's own (its parser accepts them)
    args = build_parser().parse_args(["receiver", *container["args"]])
    assert args.host == "0.0.0.0" and args.kfp_host.startswith("http://ml-pipeline.kubeflow.svc")
    assert args.state_dir.startswith(next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "state"))
    # credentials only from Secrets: no literal value in the environment
    env = {e["name"]: e for e in container["env"]}
    assert set(env) == {"GOURMETGRAM_RETRAIN_TOKEN", "GOURMETGRAM_LOOP_DB", "KFP_TOKEN"}
    assert all("value" not in e and "secretKeyRef" in e["valueFrom"] for e in env.values())
    values = yaml.safe_load((manifests.CHART_DIR / "values.yaml").read_text())
    assert env["GOURMETGRAM_LOOP_DB"]["valueFrom"]["secretKeyRef"] == values["capture"]["databaseSecret"]  # the sink's
    # Alertmanager's webhook: the Service's in-cluster name and port, the receiver's route, the same token
    amc = objects[("AlertmanagerConfig", "gourmetgram-retrain")]
    (hook,) = amc["spec"]["receivers"][0]["webhookConfigs"]
    url = urllib.parse.urlparse(hook["url"])
    service = objects[("Service", "gourmetgram-retrain-receiver")]
    assert url.hostname == f"{service['metadata']['name']}.{ns}.svc.cluster.local" and url.path == "/alerts"
    (port,) = service["spec"]["ports"]
    assert url.port == port["port"] == args.port and port["targetPort"] == container["ports"][0]["name"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    token = env["GOURMETGRAM_RETRAIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert hook["httpConfig"]["authorization"]["credentials"] == {"name": token["name"], "key": token["key"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    # one receiver at a time on its lock volume
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "state")
    assert volume["persistentVolumeClaim"]["claimName"] == "gourmetgram-retrain-receiver-state"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] and not pod["spec"]["automountServiceAccountToken"]
    # scraped: the degradation rule reads its loop_feedback_answers_total
    monitor = objects[("PodMonitor", "gourmetgram-retrain-receiver")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == container["ports"][0]["name"]


def test_only_alertmanagers_namespace_reaches_the_receiver():
    objects = _receiver_objects()
    policy = objects[("NetworkPolicy", "gourmetgram-retrain-receiver")]["spec"]
    pod_labels = objects[("Deployment", "gourmetgram-retrain-receiver")]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    # Alertmanager's namespace, and the web app's pods (the operator page reads GET /runs): nothing else
    webapp = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gourmetgram",
                                              "app.kubernetes.io/component": "webapp"}}}
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
                            webapp]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8073}]
    objects_all = manifests.render_objects(PRODUCTION, RECEIVER_ON)
    (deployment,) = [o for o in objects_all if o["kind"] == "Deployment" and o["metadata"]["name"] == "gourmetgram-web"]
    assert webapp["podSelector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GOURMETGRAM_RETRAIN_URL"] == "http://gourmetgram-retrain-receiver.gourmetgram-production.svc.cluster.local:8073"
    alone = manifests.render_objects(PRODUCTION, {**RECEIVER_ON, "webapp": {"enabled": False}})
    (policy_alone,) = [o for o in alone if o["kind"] == "NetworkPolicy" and "retrain" in o["metadata"]["name"]]
    assert len(policy_alone["spec"]["ingress"][0]["from"]) == 1  # no web app, no peer for it
    # the namespace kube-prometheus-stack (Alertmanager) is installed into
    install = (REPO_ROOT / "infra" / "scripts" / "install_platform.sh").read_text()
    assert re.search(r"helm upgrade --install kube-prometheus-stack .*\n.*-n monitoring", install)
    custom = manifests.render_objects(PRODUCTION, {**RECEIVER_ON, "retrainReceiver": {
        "enabled": True, "networkPolicy": {"alertmanagerNamespace": "observability"}}})
    (policy,) = [o for o in custom if o["kind"] == "NetworkPolicy" and "retrain" in o["metadata"]["name"]]
    assert policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "observability"}


def test_retrain_receiver_is_opt_in():
    for stage in manifests.RENDERED_STAGES:
        assert not [o for o in manifests.render_objects(stage) if "retrain-receiver" in o["metadata"]["name"]]


def _image_packages(dockerfile: str) -> set[str]:
    """What an image's ``RUN pip install`` line installs, with every dependency (as installed in
    this venv): the only third-party code the image can import."""
    import shlex
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    line = dockerfile.split("RUN pip install", 1)[1].split("\n\n")[0].replace("\\\n", " ")
    todo = [canonicalize_name(Requirement(token).name) for token in shlex.split(line) if not token.startswith("-")]
    closure: set[str] = set()
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue  # a package not installed in this venv
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return closure


# Run in a process where only an image's packages (and the code it copies) can be imported;
# optional imports (urllib3's brotli, ...) fall back there as they would in the image.
IMAGE_PROBE = """
import json, sys, tempfile
from importlib.metadata import packages_distributions
from packaging.utils import canonicalize_name
allowed = set(json.loads(sys.argv[1]))
ours = set(json.loads(sys.argv[2]))
dists = packages_distributions()
class NotInTheImage:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        owners = {canonicalize_name(d) for d in dists.get(top, [])}
        if top not in sys.stdlib_module_names and top not in ours and owners and not owners & allowed:
            raise ModuleNotFoundError(f"{name} ({', '.join(sorted(owners))}) is not in the image", name=name)
sys.meta_path.insert(0, NotInTheImage())
try:
    import torch  # noqa: F401
    raise SystemExit("the import blocker does not work")
except ModuleNotFoundError:
    pass
"""

RECEIVER_STARTS = """
from gourmetgram_app.local.retrain_cli import build_parser
from gourmetgram_app.local.retrain import build_trigger, create_app
from gourmetgram.retrain.settings import load_retrain_settings
import gourmetgram_app.pipeline_runs, kfp, kfp.client, uvicorn, starlette.testclient
build_parser().parse_args(["receiver", "--kfp-host", "http://127.0.0.1:9"])
t, s = build_trigger(load_retrain_settings(), "sqlite:///" + tempfile.mkdtemp() + "/l.db",
                     kfp_host="http://127.0.0.1:9", state_dir=tempfile.mkdtemp())
client = starlette.testclient.TestClient(create_app(t, feedback_counts=s.feedback_counts))
assert client.get("/metrics").status_code == 200 and client.get("/healthz").json() == {"ok": True}
print("started")
"""

CAPTURE_STARTS = """
import capture_sink.__main__, uvicorn, starlette.testclient
from capture_sink.server import CaptureService, create_app
from gourmetgram.loop.settings import load_loop_settings
from gourmetgram.loop.store import Store
from gourmetgram.objectstore import ObjectStore
tmp = tempfile.mkdtemp()
service = CaptureService(Store("sqlite:///" + tmp + "/l.db"), ObjectStore("file://" + tmp + "/objects"),
                         load_loop_settings(), ["a", "b"])
client = starlette.testclient.TestClient(create_app(service))
assert client.get("/health").status_code == 200 and client.get("/metrics").status_code == 200
print("started")
"""

WEBAPP_STARTS = """
import gourmetgram_webapp.__main__, uvicorn, starlette.testclient
from gourmetgram_webapp.app import create_app
from gourmetgram_webapp.config import WebConfig
client = starlette.testclient.TestClient(create_app(WebConfig(api_url="http://127.0.0.1:9", registry=False)))
assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200
print("started")
"""


@pytest.mark.parametrize("dockerfile, ours, starts", [
    ("gourmetgram/retrain/Dockerfile", ("gourmetgram", "gourmetgram_app"), RECEIVER_STARTS),
    ("capture/Dockerfile", ("gourmetgram", "capture_sink"), CAPTURE_STARTS),
    ("webapp/Dockerfile", ("gourmetgram", "gourmetgram_webapp"), WEBAPP_STARTS),
], ids=["retrain-receiver", "capture-sink", "webapp"])
def test_an_image_installs_what_its_service_imports(dockerfile, ours, starts):
    """The images without the ML stack (no torch): the service starts (parser, app over a real
    SQLite store, its endpoints answer) in a process where only the packages the image's pip
    line installs, their dependencies and the code it copies can be imported, as in the image."""
    import subprocess
    import sys

    text = (REPO_ROOT / dockerfile).read_text()
    for package in ours:
        assert f"/app/{package}/" in text  # the code it runs is copied in
    # (starlette's TestClient needs httpx, which an image may not need: allowed for the probe only)
    allowed = sorted(_image_packages(text) | {"httpx", "httpcore", "h11", "packaging"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT), str(REPO_ROOT / "capture"), str(REPO_ROOT / "webapp")])}
    out = subprocess.run([sys.executable, "-c", IMAGE_PROBE + starts, json.dumps(allowed), json.dumps(ours)],
                         capture_output=True, text=True, timeout=180, env=env, cwd=REPO_ROOT)
    assert out.returncode == 0 and "started" in out.stdout, out.stdout + out.stderr


def test_the_receivers_image_runs_the_receiver_with_the_pipeline_it_submits():
    dockerfile = (REPO_ROOT / "gourmetgram" / "retrain" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "gourmetgram_app.local.retrain_cli", "receiver"]' in dockerfile
    assert "COPY pipelines/training_pipeline.yaml" in dockerfile  # what the KFP launcher submits
    assert {"kfp", "psycopg2-binary"} <= _image_packages(dockerfile)

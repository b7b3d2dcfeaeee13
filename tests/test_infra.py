"""infra/: the Chameleon GPU nodes as code, checked offline (nothing here can be applied).

Parses every Terraform file with python-hcl2 and checks the structure a GPU deployment
on Chameleon needs, that credentials stay out of the code, and that the scripts parse.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest

from gourmetgram.constants import REPO_ROOT

INFRA = REPO_ROOT / "infra"
TERRAFORM = INFRA / "terraform"
SECRET_PATTERNS = (
    re.compile(r"(?i)(password|secret|token|api[_-]?key)\s*=\s*\"[^\"$]{6,}\""),
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)application_credential_secret"),
)


def _unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _clean(node):
    """python-hcl2 keeps quotes and adds __is_block__/__comments__; strip both."""
    if isinstance(node, dict):
        return {_unquote(k): _clean(v) for k, v in node.items() if not str(k).startswith("__")}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return _unquote(node)


def _parse_terraform() -> dict:
    merged: dict = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open() as handle:
            for block, items in _clean(hcl2.load(handle)).items():
                merged.setdefault(block, []).extend(items)
    return merged


def _blocks(parsed: dict, block: str, kind: str) -> dict:
    return {name: body for item in parsed.get(block, []) for k, named in item.items()
            if k == kind for name, body in named.items()}


@pytest.fixture(scope="module")
def tf() -> dict:
    return _parse_terraform()


def test_gpu_instances_launch_on_the_blazar_reservation(tf):
    instances = _blocks(tf, "resource", "openstack_compute_instance_v2")
    assert instances, "no openstack_compute_instance_v2"
    variables = {k: v for item in tf["variable"] for k, v in item.items()}
    for body in instances.values():
        assert "var.gpu_flavor" in str(body["flavor_name"])
        hints = body["scheduler_hints"][0]["additional_properties"]
        assert "var.gpu_reservation_id" in str(hints["reservation"])
        assert "templatefile" in str(body["user_data"])  # k3s via cloud-init
    assert variables["gpu_flavor"]["default"] == "baremetal"
    assert "CUDA" in variables["image_name"]["default"]  # driver preinstalled for the GPU operator
    assert "gpu_reservation_id" in variables and "default" not in variables["gpu_reservation_id"]
    assert variables["gpu_reservation_id"]["validation"]  # a UUID, checked at plan time


def test_network_security_group_and_floating_ip(tf):
    assert _blocks(tf, "resource", "openstack_networking_secgroup_v2")
    rules = _blocks(tf, "resource", "openstack_networking_secgroup_rule_v2")
    ports = {str(r.get("port_range_min")) for r in rules.values()}
    assert {"22", "6443"} <= ports
    assert _blocks(tf, "resource", "openstack_networking_floatingip_v2")
    assert _blocks(tf, "resource", "openstack_networking_floatingip_associate_v2")
    assert _blocks(tf, "data", "openstack_networking_network_v2")


def test_providers_are_pinned_and_carry_no_credentials(tf):
    required = tf["terraform"][0]["required_providers"][0]
    assert required["openstack"]["source"] == "terraform-provider-openstack/openstack"
    assert re.match(r"~> ?\d", required["openstack"]["version"])
    provider = tf["provider"][0]["openstack"]
    assert not set(provider) & {"password", "user_name", "application_credential_secret", "token", "auth_url"}


def test_no_secrets_anywhere_in_infra():
    for path in INFRA.rglob("*"):
        if path.is_file() and path.suffix in {".tf", ".tftpl", ".sh", ".yaml", ".yml", ".env", ".md"}:
            text = path.read_text()
            for pattern in SECRET_PATTERNS:
                assert not pattern.search(text), f"{path}: looks like a secret ({pattern.pattern})"
    ignored = (INFRA / ".gitignore").read_text()
    for needed in ("*.tfstate", "*.auto.tfvars.json", "clouds.yaml"):
        assert needed in ignored


def test_versions_are_pinned_and_used():
    versions = dict(
        line.split("=", 1) for line in (INFRA / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name in ("K3S_VERSION", "KSERVE_VERSION", "KNATIVE_SERVING_VERSION", "CERT_MANAGER_VERSION",
                 "GPU_OPERATOR_VERSION", "KUBE_PROMETHEUS_STACK_VERSION", "ISTIO_VERSION"):
        assert re.search(r"\d+\.\d+\.\d+", versions[name]), name
    # one version set: the schemas the tests validate against are those of the pinned releases
    schemas = REPO_ROOT / "tests" / "schemas"
    assert (schemas / f"kserve-{versions['KSERVE_VERSION']}").is_dir()
    assert (schemas / f"knative-serving-{versions['KNATIVE_SERVING_VERSION'].removeprefix('knative-')}").is_dir()
    eventing = schemas / f"knative-eventing-{versions['KNATIVE_EVENTING_VERSION'].removeprefix('knative-')}"
    assert {p.name for p in eventing.glob("*.yaml")} == {"broker.yaml", "trigger.yaml"}
    # Eventing and Serving from one Knative release line
    assert versions["KNATIVE_EVENTING_VERSION"].rsplit(".", 1)[0] == versions["KNATIVE_SERVING_VERSION"].rsplit(".", 1)[0]
    assert "kube-prometheus-stack " + versions["KUBE_PROMETHEUS_STACK_VERSION"] in (schemas / "README.md").read_text()
    assert versions["K3S_VERSION"].startswith("v1.33.")  # Knative 1.21 needs Kubernetes >= 1.33
    values = (REPO_ROOT / "charts" / "gourmetgram" / "values.yaml").read_text()
    assert f"tag: {versions['TRITON_IMAGE_TAG']}" in values
    assert f"storage-initializer:{versions['KSERVE_VERSION']}" in values
    install = (INFRA / "scripts" / "install_platform.sh").read_text()
    for name in versions:
        if name not in ("K3S_VERSION", "HELM_VERSION", "TRITON_IMAGE_TAG", "NVIDIA_CONTAINER_TOOLKIT_VERSION"):
            assert f"${name}" in install or f"${{{name}}}" in install, f"{name} unused by install_platform.sh"
    variables = {k: v for item in _parse_terraform()["variable"] for k, v in item.items()}
    assert variables["k3s_version"]["default"] == versions["K3S_VERSION"]
    # the nodes' driver branch and toolkit (node-prep.sh) are the pinned ones
    assert int(variables["nvidia_driver_branch"]["default"]) == int(versions["MIN_NVIDIA_DRIVER"])
    assert variables["nvidia_container_toolkit_version"]["default"] == versions["NVIDIA_CONTAINER_TOOLKIT_VERSION"]
    cloud_init = (INFRA / "cloud-init" / "k3s-node.yaml.tftpl").read_text()
    assert "K3S_VERSION='${k3s_version}'" in cloud_init and "node-prep" in cloud_init
    assert 'INSTALL_K3S_VERSION="$K3S_VERSION"' in (INFRA / "cloud-init" / "node-prep.sh").read_text()


def test_lease_script_reserves_gpu_hosts():
    script = (INFRA / "scripts" / "create_gpu_lease.sh").read_text()
    assert "openstack reservation lease create" in script
    assert "resource_type=physical:host" in script and "$node_type" in script
    assert re.search(r"NODE_TYPE=\$\{NODE_TYPE:-gpu_", script)
    assert "gpu_lease.auto.tfvars.json" in script


def _shell_scripts() -> list[Path]:
    return sorted({*INFRA.glob("scripts/*.sh"), *INFRA.glob("cloud-init/*.sh"), *REPO_ROOT.glob("scripts/*.sh"),
                   REPO_ROOT / ".ci" / "run"})


def test_shell_scripts_parse_and_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is required (Debian package `shellcheck`, installed by scripts/setup.sh)"
    scripts = _shell_scripts()
    assert INFRA / "scripts" / "smoke_cluster.sh" in scripts and INFRA / "cloud-init" / "node-prep.sh" in scripts
    for script in scripts:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"
    result = subprocess.run([shellcheck, "-x", *map(str, scripts)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


# --- install_platform.sh against recording stand-ins for kubectl / helm / nvidia-smi --------

RECORDER = """#!/usr/bin/env bash
# stand-in: record the call (and any manifest piped in), answer like the real tool
# one write per line: both ends of a pipe run at once, and three appends would interleave
line="$(basename "$0")$(printf ' %q' "$@")"
printf '%s\\n' "$line" >> "$CALLS"
case "$(basename "$0") $*" in
  "kubectl create"*"--dry-run=client -o yaml"*) printf 'apiVersion: v1\\nkind: Stub\\n' ;;
  "kubectl apply -f -") sed 's/^/  | /' >> "$CALLS" ;;
  nvidia-smi*) printf '%s\\n' "${DRIVER_VERSIONS:-580.65.06}" | tr ',' '\\n' ;;
  "kubectl get nodes -l nvidia.com/gpu.present=true"*) printf '%s\\n' "${GPU_NODES-gpu-0 4 580}" | tr ',' '\\n' ;;
  *"get pods -l app.kubernetes.io/name=image-prepull"*) printf '%s\\n' "${PULL_STATES:-}" | tr ',' '\\n' ;;
esac
exit 0
"""


def _run_install(tmp_path: Path, **env_overrides: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    keep_kubectl = env_overrides.pop("_keep_kubectl", None)
    script_override = env_overrides.pop("_script", None)
    for tool in ("kubectl", "helm", "nvidia-smi"):
        if tool == "kubectl" and keep_kubectl:
            continue  # a test's own kubectl stand-in
        (bin_dir / tool).write_text(RECORDER)
        (bin_dir / tool).chmod(0o755)
    calls = tmp_path / "calls.log"
    calls.write_text("")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "HOME": str(tmp_path),
           "AWS_ACCESS_KEY_ID": "test-key-id", "AWS_SECRET_ACCESS_KEY": "test-key",
           "AWS_ENDPOINT_URL": "http://minio.gourmetgram-platform.svc.cluster.local:9000",
           "NODE_IP": "192.5.87.10", "NVIDIA_SMI": "nvidia-smi", "POLL_SECONDS": "0", **env_overrides}
    env = {k: v for k, v in env.items() if v is not None}
    script = script_override or str(INFRA / "scripts" / "install_platform.sh")
    result = subprocess.run(["bash", script], env=env,
                            capture_output=True, text=True, timeout=60)
    return result, calls.read_text().splitlines()


def _piped_text(calls: list[str], at: int) -> str:
    """The manifest piped into the `kubectl apply -f -` at ``commands`` index ``at``."""
    commands = [i for i, c in enumerate(calls) if not c.startswith("  | ")]
    start = commands[at] + 1
    lines = []
    for call in calls[start:]:
        if not call.startswith("  | "):
            break
        lines.append(call[4:])
    return "\n".join(lines)


def _piped_apply(calls: list[str], needle: str) -> int:
    """Index (among commands) of the first `kubectl apply -f -` whose piped manifest holds ``needle``."""
    commands = [c for c in calls if not c.startswith("  | ")]
    for i, command in enumerate(commands):
        if command == "kubectl apply -f -" and needle in _piped_text(calls, i):
            return i
    raise AssertionError(f"no manifest with {needle!r} was applied")


def _index(calls: list[str], *needles: str) -> int:
    for i, call in enumerate(calls):
        if all(n in call for n in needles):
            return i
    raise AssertionError(f"no call with {needles}:\n" + "\n".join(calls))


def test_install_orders_waits_and_merge_patches_knative_config(tmp_path):
    result, calls = _run_install(tmp_path)
    assert result.returncode == 0, result.stderr
    commands = [c for c in calls if not c.startswith("  | ")]
    at = functools.partial(_index, commands)
    # the driver check comes before anything is installed
    assert at("nvidia-smi", "driver_version") == 0
    # each dependency is waited for before what needs it
    assert at("cert-manager.yaml") < at("rollout status deploy/cert-manager-webhook") < at("gpu-operator")
    assert at("helm upgrade --install gpu-operator", "--wait") < at("istio/base")
    assert at("istio/gateway", "--wait") < at("serving-crds.yaml")
    assert at("serving-crds.yaml") < at("wait", "Established", "services.serving.knative.dev") < at("serving-core.yaml")
    webhook = at("knative-serving rollout status deploy/webhook")
    knative_patches = [i for i, c in enumerate(commands) if "knative-serving patch configmap" in c]
    assert {commands[i].split()[5] for i in knative_patches} == {
        "config-features", "config-deployment", "config-autoscaler", "config-observability", "config-domain"}
    assert all(i > webhook for i in knative_patches)
    assert all("--type merge" in commands[i] for i in knative_patches)
    assert '{"data":{"192.5.87.10.sslip.io":""}}' in commands[at("patch configmap config-domain")].replace("\\", "")
    # no whole-ConfigMap apply of Knative's config: only release manifests and our own objects
    for call in calls:
        if call.startswith("kubectl apply -f ") and not call.endswith(" -"):
            target = call.split()[-1]
            assert target.startswith("https://github.com/") or target.endswith("model-serviceaccount.yaml"), call
    piped = "\n".join(c for c in calls if c.startswith("  | "))
    assert "knative-serving" not in piped
    # KServe after Knative is configured; its controller is waited for; Prometheus after it
    kserve = at("helm upgrade --install kserve ", "kserve-resources", "--version v0.20.0")
    assert max(knative_patches) < at("kserve-crd") < kserve < at("rollout status deploy/kserve-controller-manager")
    assert "kserve.controller.gateway.domain=192.5.87.10.sslip.io" in commands[kserve]
    # Prometheus (its ServiceMonitor CRD) before the GPU operator's DCGM ServiceMonitor
    prometheus = at("helm upgrade --install kube-prometheus-stack", "--version 67.8.0")
    assert prometheus < at("wait", "Established", "crd/servicemonitors.monitoring.coreos.com") < at(
        "helm upgrade --install gpu-operator")
    # namespaces and Secrets last, with the endpoint KServe's storage initializer reads
    for ns in ("gourmetgram-staging", "gourmetgram-production"):
        assert at("kube-prometheus-stack") < at("create namespace", ns)
        secret = commands[at("create secret generic gourmetgram-s3", ns)]
        assert "AWS_ENDPOINT_URL=http://minio.gourmetgram-platform.svc.cluster.local:9000" in secret
        assert "S3_ENDPOINT=minio.gourmetgram-platform.svc.cluster.local:9000" in secret and "S3_USE_HTTPS=0" in secret
    assert "test-key" not in result.stdout  # credentials are never echoed


def test_knative_config_patches_name_only_keys_knative_1_21_knows():
    import k8s_schemas
    import yaml

    patches = sorted((INFRA / "k8s" / "knative").glob("config-*.yaml"))
    assert patches
    for path in patches:
        patch = yaml.safe_load(path.read_text())
        assert patch["metadata"]["name"] == path.stem  # the script patches the ConfigMap named by the file
        assert k8s_schemas.knative_patch_errors(patch) == [], path
    wrong = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "config-features", "namespace": "knative-serving"},
             "data": {"kubernetes.podspec-emptydir": "enabled"}}  # the pre-1.x spelling
    assert k8s_schemas.knative_patch_errors(wrong) == ["config-features: unknown key 'kubernetes.podspec-emptydir' "
                                                       "for Knative 1.21"]


@pytest.mark.parametrize(("env", "code", "message"), [
    ({"DRIVER_VERSIONS": "580.65.06,570.86.15"}, 1, "NVIDIA driver 570.86.15 is older than 580"),
    ({"AWS_ENDPOINT_URL": "minio:9000"}, 2, "http[s]://host[:port]"),
    ({"NODE_IP": None}, 2, "set NODE_IP"),
    ({"NVIDIA_SMI": "false"}, 3, "cannot run 'false'"),
])
def test_install_fails_fast_with_a_clear_message(tmp_path, env, code, message):
    result, calls = _run_install(tmp_path, **env)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stderr
    assert not [c for c in calls if c.startswith(("kubectl", "helm"))]  # nothing was installed


# --- the training platform: MinIO, MLflow on PostgreSQL, Kubeflow Pipelines --------------------

def _versions() -> dict[str, str]:
    return dict(line.split("=", 1) for line in (INFRA / "versions.env").read_text().splitlines()
                if line and not line.startswith("#"))


def _secret_literals(command: str) -> dict[str, str]:
    return dict(m.split("=", 1) for m in re.findall(r"--from-literal=(\S+)", command.replace("\\", "")))


def test_install_brings_up_minio_mlflow_and_kfp_in_order(tmp_path):
    result, calls = _run_install(tmp_path)
    assert result.returncode == 0, result.stderr
    commands = [c for c in calls if not c.startswith("  | ")]
    at = functools.partial(_index, commands)
    v = _versions()
    # after monitoring: MinIO (its root Secret first), waited for
    minio_secret = at("create secret generic minio-root")
    minio = at("helm upgrade --install minio minio/minio", f"--version {v['MINIO_CHART_VERSION']}", "--wait")
    assert at("kube-prometheus-stack") < at("create namespace gourmetgram-platform") < minio_secret < minio
    assert "platform/minio-values.yaml" in commands[minio]
    assert minio < at("rollout status deploy/minio")
    # MLflow after MinIO (its artifact store), PostgreSQL waited for before MLflow is
    pg_secret = at("create secret generic mlflow-postgres")
    mlflow = _piped_apply(calls, "name: mlflow")
    assert at("rollout status deploy/minio") < pg_secret < mlflow
    assert mlflow < at("rollout status statefulset/postgres") < at("rollout status deploy/mlflow")
    # the server image under the one image reference's registry
    assert f"image: ghcr.io/gourmetgram/mlflow-server:{v['MLFLOW_VERSION']}" in _piped_text(calls, mlflow)
    # KFP standalone, pinned: cluster-scoped resources, the CRD established, then the env
    scoped = at("apply -k", "cluster-scoped-resources", f"ref={v['KFP_VERSION']}")
    env = at("apply -k", "env/platform-agnostic", f"ref={v['KFP_VERSION']}")
    assert at("rollout status deploy/mlflow") < scoped < at("wait", "Established", "applications.app.k8s.io") < env
    assert env < at("kubeflow rollout status deploy/ml-pipeline")
    # the pipeline steps' Secrets, in KFP's namespace, once it exists
    tracking = at("kubeflow create secret generic mlflow-credentials")
    store = at("kubeflow create secret generic object-store-credentials")
    assert at("kubeflow rollout status deploy/ml-pipeline") < min(tracking, store)
    assert _secret_literals(commands[tracking]) == {
        "MLFLOW_TRACKING_URI": "http://mlflow.gourmetgram-platform.svc.cluster.local:5000"}
    from components.base import MLFLOW_SECRET_ENV, OBJECT_STORE_SECRET_ENV

    # every key the pipeline's required Secrets map is there (a missing key stops the pod)
    assert set(MLFLOW_SECRET_ENV) <= set(_secret_literals(commands[tracking]))
    assert set(OBJECT_STORE_SECRET_ENV) == set(_secret_literals(commands[store]))
    assert _secret_literals(commands[store])["GOURMETGRAM_MODELS_BUCKET"] == "gourmetgram-models"
    # the serving namespaces come last
    assert max(tracking, store) < at("create namespace gourmetgram-staging")


def test_install_generates_credentials_once_and_never_prints_them(tmp_path):
    result, calls = _run_install(tmp_path, AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None,
                                 AWS_ENDPOINT_URL=None)
    assert result.returncode == 0, result.stderr
    commands = [c for c in calls if not c.startswith("  | ")]
    root = _secret_literals(commands[_index(commands, "create secret generic minio-root")])
    assert re.fullmatch(r"[0-9a-f]{40}", root["rootPassword"]) and root["rootUser"].startswith("gourmetgram-")
    pg = _secret_literals(commands[_index(commands, "create secret generic mlflow-postgres")])
    assert re.fullmatch(r"[0-9a-f]{40}", pg["POSTGRES_PASSWORD"]) and pg["POSTGRES_PASSWORD"] != root["rootPassword"]
    # one set of keys: MinIO's root, the pipelines' and KServe's storage initializer's
    store = _secret_literals(commands[_index(commands, "kubeflow create secret generic object-store-credentials")])
    serving = _secret_literals(commands[_index(commands, "gourmetgram-production create secret generic gourmetgram-s3")])
    for secret in (store, serving):
        assert (secret["AWS_ACCESS_KEY_ID"], secret["AWS_SECRET_ACCESS_KEY"]) == (root["rootUser"], root["rootPassword"])
        assert secret["AWS_ENDPOINT_URL"] == "http://minio.gourmetgram-platform.svc.cluster.local:9000"
    assert root["rootPassword"] not in result.stdout + result.stderr
    assert pg["POSTGRES_PASSWORD"] not in result.stdout + result.stderr
    # generated, not a constant of the script: another install draws other values
    _, again = _run_install(tmp_path / "again", AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None)
    other = _secret_literals(next(c for c in again if "create secret generic minio-root" in c))
    assert other["rootPassword"] != root["rootPassword"]


def test_install_keeps_the_credentials_a_previous_run_stored(tmp_path):
    """A re-run must not rotate the keys the running MinIO/PostgreSQL were started with."""
    import base64

    stored = base64.b64encode(b"previous-secret-value").decode()
    answer = f'  "kubectl -n gourmetgram-platform get secret"*) printf {stored} ;;\n'
    recorder = RECORDER.replace("  nvidia-smi*)", answer + "  nvidia-smi*)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(recorder)
    (bin_dir / "kubectl").chmod(0o755)
    result, calls = _run_install(tmp_path, AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None, _keep_kubectl="1")
    assert result.returncode == 0, result.stderr
    root = _secret_literals(next(c for c in calls if "create secret generic minio-root" in c))
    assert root == {"rootUser": "previous-secret-value", "rootPassword": "previous-secret-value"}


def test_platform_manifests_are_valid_pinned_and_hold_no_secrets():
    import k8s_schemas
    import yaml

    v = _versions()
    docs = [d for d in yaml.safe_load_all((INFRA / "k8s" / "platform" / "mlflow.yaml").read_text()) if d]
    assert {d["kind"] for d in docs} == {"Service", "StatefulSet", "Deployment"}
    assert k8s_schemas.iter_errors(docs) == []
    images = {c["name"]: c["image"] for d in docs if d["kind"] != "Service"
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {"postgres": f"docker.io/library/postgres:{v['POSTGRES_IMAGE_TAG']}",
                      "mlflow": "${IMAGE_REGISTRY}/mlflow-server:" + v["MLFLOW_VERSION"]}  # the install substitutes
    assert f"ARG MLFLOW_VERSION={v['MLFLOW_VERSION']}" in (INFRA / "docker" / "mlflow" / "Dockerfile").read_text()
    mlflow = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert all("value" not in e for e in mlflow["env"] if "PASSWORD" in e["name"] or "SECRET" in e["name"])
    # the driver the image installs (SQLAlchemy 2.1's postgresql:// means psycopg 3)
    assert any(a.startswith("--backend-store-uri=postgresql+psycopg2://") for a in mlflow["args"])
    assert "psycopg2-binary==" in (INFRA / "docker" / "mlflow" / "Dockerfile").read_text()
    # MinIO: root credentials from the install's Secret, no chart default user, the models bucket
    minio = yaml.safe_load((INFRA / "k8s" / "platform" / "minio-values.yaml").read_text())
    assert minio["existingSecret"] == "minio-root" and minio["users"] == []
    assert {"rootUser", "rootPassword"}.isdisjoint(minio)
    values = yaml.safe_load((REPO_ROOT / "charts" / "gourmetgram" / "values.yaml").read_text())
    bucket = values["model"]["bundleUri"].split("/")[2]
    assert bucket in {b["name"] for b in minio["buckets"]}


# --- closing the loop: Knative Eventing (the logger's Broker) and the loop database --------------

def test_install_brings_up_knative_eventing_before_anything_uses_a_broker(tmp_path):
    result, calls = _run_install(tmp_path)
    assert result.returncode == 0, result.stderr
    commands = [c for c in calls if not c.startswith("  | ")]
    at = functools.partial(_index, commands)
    base = f"https://github.com/knative/eventing/releases/download/{_versions()['KNATIVE_EVENTING_VERSION']}"
    crds = at("apply -f", f"{base}/eventing-crds.yaml")
    established = at("wait", "Established", "crd/brokers.eventing.knative.dev", "crd/triggers.eventing.knative.dev")
    core = at("apply -f", f"{base}/eventing-core.yaml")
    webhook = at("knative-eventing rollout status deploy/eventing-webhook")
    channel, broker = at("apply -f", f"{base}/in-memory-channel.yaml"), at("apply -f", f"{base}/mt-channel-broker.yaml")
    # Serving first (the Triggers' detector is a Knative Service), CRDs established before the
    # core, its webhook ready before the channel and broker objects it validates
    assert at("rollout status deploy/net-istio-controller") < crds < established < core < webhook < min(channel, broker)
    # the broker's data plane is waited for before the InferenceServices can log to it
    for deploy in ("imc-dispatcher", "mt-broker-controller", "mt-broker-ingress", "mt-broker-filter"):
        assert broker < at(f"knative-eventing rollout status deploy/{deploy}") < at("create namespace gourmetgram-staging")
    # the chart's Broker class is the one installed
    values = yaml_load(REPO_ROOT / "charts" / "gourmetgram" / "values.yaml")
    assert values["capture"]["broker"]["class"] == "MTChannelBasedBroker"


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_install_creates_the_loop_database_and_the_secrets_the_capture_sink_reads(tmp_path):
    from gourmetgram import manifests

    result, calls = _run_install(tmp_path, MLFLOW_DB_PASSWORD="pg-pass-1234")
    assert result.returncode == 0, result.stderr
    commands = [c for c in calls if not c.startswith("  | ")]
    at = functools.partial(_index, commands)
    # the database on the platform's PostgreSQL, once it is up, created only when missing
    check = at("exec statefulset/postgres", "psql", "pg_database")
    assert at("rollout status statefulset/postgres") < check < at("exec statefulset/postgres", "createdb", "gourmetgram_loop")
    # every Secret key the rendered capture sink references exists in its namespace
    for stage in manifests.RENDERED_STAGES:
        objects = manifests.render_objects(stage)
        ns = manifests.find_inference_service(objects)["metadata"]["namespace"]
        sink = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "capture-sink")
        refs = [e["valueFrom"]["secretKeyRef"] for e in sink["spec"]["template"]["spec"]["containers"][0]["env"]
                if "valueFrom" in e]
        assert refs
        for ref in refs:
            secret = _secret_literals(commands[at(f"{ns} create secret generic {ref['name']}")])
            assert ref["key"] in secret, (ns, ref)
        db = _secret_literals(commands[at(f"{ns} create secret generic gourmetgram-loop-db")])["url"]
        assert db == ("postgresql+psycopg2://mlflow:pg-pass-1234@postgres.gourmetgram-platform.svc.cluster.local:5432/"
                      "gourmetgram_loop")
        # the captures bucket the chart writes to is one MinIO creates
        objects_uri = next(e["value"] for e in sink["spec"]["template"]["spec"]["containers"][0]["env"]
                           if e["name"] == "GOURMETGRAM_LOOP_OBJECTS")
        minio = yaml_load(INFRA / "k8s" / "platform" / "minio-values.yaml")
        assert objects_uri.split("/")[2] in {b["name"] for b in minio["buckets"]}
    assert "pg-pass-1234" not in result.stdout + result.stderr


def test_install_refuses_a_database_password_that_breaks_its_url(tmp_path):
    result, calls = _run_install(tmp_path, MLFLOW_DB_PASSWORD="p@ss/word")
    assert result.returncode == 2
    assert "MLFLOW_DB_PASSWORD may hold only" in result.stderr
    assert not [c for c in calls if c.startswith(("kubectl", "helm"))]  # nothing was installed


# --- issue 24: GPU capacity, images, the GPU operator on k3s 1.33 ------------------------------

def _capacity() -> dict[str, str]:
    return dict(line.split("=", 1) for line in (INFRA / "capacity.env").read_text().splitlines()
                if line and not line.startswith("#"))


def test_install_time_slices_the_gpu_and_checks_slots_and_every_nodes_driver(tmp_path):
    import yaml

    result, calls = _run_install(tmp_path)
    assert result.returncode == 0, result.stderr
    commands = [c for c in calls if not c.startswith("  | ")]
    at = functools.partial(_index, commands)
    capacity = _capacity()
    values = yaml_load(INFRA / "k8s" / "gpu-operator-values.yaml")
    # the device plugin's ConfigMap exists before the operator, named as its values name it
    config = at("-n gpu-operator create configmap", values["devicePlugin"]["config"]["name"])
    assert at("create namespace gpu-operator") < config < at("helm upgrade --install gpu-operator")
    literal = commands[config].split("--from-literal=", 1)[1].split(" --dry-run")[0]
    key, _, body = literal.replace("\\n", "\n").replace("\\ ", " ").replace("$'", "").rstrip("'").partition("=")
    assert key == values["devicePlugin"]["config"]["default"]
    plugin = yaml.safe_load(body)
    [resource] = plugin["sharing"]["timeSlicing"]["resources"]
    assert resource == {"name": "nvidia.com/gpu", "replicas": int(capacity["GPU_SHARES"])}
    # slots and drivers judged after the operator, before any image is pulled or Istio installed
    check = at("get nodes -l nvidia.com/gpu.present=true")
    assert at("helm upgrade --install gpu-operator") < check < at("gourmetgram-image-prepull") < at("istio/base")
    assert "node gpu-0: driver 580, 4 nvidia.com/gpu slot(s)" in result.stdout
    # three slots are what the first run holds at once: production, a canary, training
    assert int(capacity["GPU_SLOTS_REQUIRED"]) == 3


def test_gpu_slots_required_is_what_the_chart_and_the_pipeline_hold_at_once():
    from gourmetgram import manifests

    isvc = manifests.find_inference_service(manifests.render_objects("production"))
    predictor = isvc["spec"]["predictor"]
    per_pod = int(predictor["model"]["resources"]["limits"]["nvidia.com/gpu"])
    compiled = next(iter(__import__("yaml").safe_load_all((REPO_ROOT / "pipelines" / "training_pipeline.yaml").read_text())))
    training = [e["container"]["resources"]["accelerator"] for e in compiled["deploymentSpec"]["executors"].values()
                if "accelerator" in e["container"].get("resources", {})]
    assert len(training) == 1
    train_gpus = int(training[0].get("resourceCount") or training[0].get("count"))
    staging = manifests.find_inference_service(manifests.render_objects("staging"))
    assert "nvidia.com/gpu" not in staging["spec"]["predictor"]["model"]["resources"].get("limits", {})
    # stable revision at its minimum + a canary revision (min-scale 1) + the training step
    needed = predictor["minReplicas"] * per_pod + 1 * per_pod + train_gpus
    capacity = _capacity()
    assert int(capacity["GPU_SLOTS_REQUIRED"]) == needed
    # on one GPU the shares hold that plus production's autoscaling headroom
    assert int(capacity["GPU_SHARES"]) >= predictor["maxReplicas"] * per_pod + per_pod + train_gpus


@pytest.mark.parametrize(("env", "message"), [
    ({"GPU_NODES": "gpu-0 1 580"}, "only 1 allocatable nvidia.com/gpu slot(s)"),
    ({"GPU_NODES": "gpu-0 4 580,gpu-1 4 560"}, "node gpu-1 runs NVIDIA driver 560, older than 580"),
    ({"GPU_NODES": ""}, "no node is labelled nvidia.com/gpu.present=true"),
])
def test_install_stops_before_pulling_anything_without_gpu_slots_or_with_an_old_driver(tmp_path, env, message):
    result, calls = _run_install(tmp_path, **env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stderr
    assert not [c for c in calls if "image-prepull" in c or "istio" in c or "kserve" in c]


def test_no_sharing_when_gpu_shares_is_one(tmp_path):
    capacity = (INFRA / "capacity.env").read_text()
    infra = tmp_path / "repo" / "infra"
    shutil.copytree(INFRA, infra)
    shutil.copytree(REPO_ROOT / "charts" / "gourmetgram", tmp_path / "repo" / "charts" / "gourmetgram")
    (infra / "capacity.env").write_text(capacity.replace("GPU_SHARES=4", "GPU_SHARES=1"))
    result, calls = _run_install(tmp_path, _script=str(infra / "scripts" / "install_platform.sh"))
    assert result.returncode == 0, result.stderr
    config = next(c for c in calls if "create configmap gourmetgram-time-slicing" in c)
    assert "sharing" not in config and "migStrategy" in config


def test_gpu_operator_leaves_k3s_containerd_config_alone():
    """k3s 1.33 runs containerd 2: a template at config-v3.toml.tmpl (or config.toml.tmpl)
    replaces the whole generated config, so nothing may write one; k3s adds the `nvidia`
    runtime itself when nvidia-container-runtime is installed (node-prep.sh)."""
    values = yaml_load(INFRA / "k8s" / "gpu-operator-values.yaml")
    assert values["toolkit"] == {"enabled": False} and values["driver"] == {"enabled": False}
    assert "toml.tmpl" not in json.dumps(values)
    assert values["operator"]["runtimeClass"] == "nvidia"
    assert values["dcgmExporter"]["serviceMonitor"]["enabled"] is True
    prep = (INFRA / "cloud-init" / "node-prep.sh").read_text()
    assert "default-runtime: nvidia" in prep and "nvidia-container-toolkit" in prep
    assert "toml.tmpl" not in prep


def test_install_pulls_every_image_on_every_node_before_anything_uses_it(tmp_path):
    import k8s_schemas
    import yaml

    result, calls = _run_install(tmp_path)
    assert result.returncode == 0, result.stderr
    commands = [c for c in calls if not c.startswith("  | ")]
    at = functools.partial(_index, commands)
    prepull = _piped_apply(calls, "name: gourmetgram-image-prepull")
    daemonset = yaml.safe_load(_piped_text(calls, prepull))
    assert k8s_schemas.iter_errors([daemonset]) == []
    env = dict(line.split("=", 1) for line in (REPO_ROOT / "charts" / "gourmetgram" / "images.env").read_text()
               .splitlines() if line and not line.startswith("#"))
    v = _versions()
    pulled = {c["image"] for c in daemonset["spec"]["template"]["spec"]["initContainers"]}
    ours = {f"{env['IMAGE_REGISTRY']}/{n}:{v['MLFLOW_VERSION'] if n == 'mlflow-server' else env['IMAGE_TAG']}"
            for n in env["IMAGES"].strip('"').split()}
    assert pulled == ours | {f"nvcr.io/nvidia/tritonserver:{v['TRITON_IMAGE_TAG']}", f"kserve/qpext:{v['KSERVE_VERSION']}",
                             f"kserve/storage-initializer:{v['KSERVE_VERSION']}"}
    # what the chart pulls is among them
    from gourmetgram import manifests

    for stage in manifests.RENDERED_STAGES:
        text = yaml.safe_dump_all(manifests.render_objects(stage))
        assert set(re.findall(r"image: (\S+)", text)) <= pulled
    # pulled (rollout waited for) before MLflow, KFP or any serving namespace pulls one
    done = at("rollout status ds/gourmetgram-image-prepull --timeout=60s")
    assert prepull < done < _piped_apply(calls, "name: mlflow") < at("apply -k") < at("create namespace gourmetgram-staging")


def test_install_names_the_image_it_cannot_pull_and_stops(tmp_path):
    result, calls = _run_install(tmp_path, PULL_STATES="ghcr.io/gourmetgram/food-transformer:0.1.0 ImagePullBackOff,"
                                 "nvcr.io/nvidia/tritonserver:24.08-py3 ")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "cannot pull ghcr.io/gourmetgram/food-transformer:0.1.0 " in result.stderr
    assert "tritonserver" not in result.stderr.split("cannot pull")[1].split("from the nodes")[0]
    assert not [c for c in calls if "platform/mlflow" in c or "istio" in c or c.startswith("kubectl apply -k")]
    assert "name: mlflow" not in "\n".join(calls)  # MLflow's manifest was never applied


def test_install_attaches_a_pull_secret_only_when_given_credentials(tmp_path):
    result, calls = _run_install(tmp_path, REGISTRY_USERNAME="robot", REGISTRY_PASSWORD="pull-token-123")
    assert result.returncode == 0, result.stderr
    commands = [c for c in calls if not c.startswith("  | ")]
    for ns, accounts in (("gourmetgram-platform", ["default"]), ("kubeflow", ["default", "pipeline-runner"]),
                         ("gourmetgram-production", ["default", "gourmetgram-models"])):
        secret = _index(commands, f"-n {ns} create secret docker-registry gourmetgram-registry", "--docker-server=ghcr.io")
        for account in accounts:
            assert secret < _index(commands, f"-n {ns} patch serviceaccount {account}", "gourmetgram-registry")
    daemonset = _piped_text(calls, _piped_apply(calls, "name: gourmetgram-image-prepull"))
    assert "imagePullSecrets: [{name: gourmetgram-registry}]" in daemonset
    assert "pull-token-123" not in result.stdout + result.stderr
    _, without = _run_install(tmp_path / "none")
    assert not [c for c in without if "docker-registry" in c or "imagePullSecrets" in c]
    bad, calls = _run_install(tmp_path / "half", REGISTRY_USERNAME="robot")
    assert bad.returncode == 2 and "REGISTRY_PASSWORD" in bad.stderr and not calls


def test_install_needs_git_for_kubeflows_remote_kustomization(tmp_path):
    result, calls = _run_install(tmp_path, GIT="no-such-git")
    assert result.returncode == 2 and "git not found" in result.stderr
    assert not calls


# --- node-prep.sh (cloud-init) against recording stand-ins ------------------------------------

PREP_RECORDER = """#!/usr/bin/env bash
# one write per line: both ends of a pipe run at once, and three appends would interleave
line="$(basename "$0")$(printf ' %q' "$@")"
printf '%s\\n' "$line" >> "$CALLS"
etc="$PREP_ROOT/var/lib/rancher/k3s/agent/etc/containerd"
case "$(basename "$0") $*" in
  "systemctl is-active"*) [[ -n "${FIREWALLD_ACTIVE:-}" ]] || exit 3 ;;
  nvidia-smi*) printf '%s\\n' "${DRIVER:-560.35.03}" ;;
  "curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list")
    echo 'deb https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /' ;;
  "curl -sfL https://get.k3s.io")  # the installer: k3s writes its containerd config naming the runtime
    echo "mkdir -p '$etc'; echo 'default_runtime_name = \\"nvidia\\"' > '$etc/config.toml'" ;;
  "apt-get install"*nvidia-container-toolkit=*)
    touch "$(dirname "$0")/nvidia-container-runtime"; chmod +x "$(dirname "$0")/nvidia-container-runtime" ;;
esac
exit 0
"""


def _run_prep(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    for d in ("etc/rancher/k3s", "etc/gourmetgram", "etc/apt/sources.list.d", "usr/share/keyrings"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/rancher/k3s/config.yaml").write_text('token: "t"\n')
    (root / "etc/gourmetgram/node.env").write_text(
        "K3S_VERSION='v1.33.5+k3s1'\nK3S_ROLE='server'\nNODE_IPS='10.140.81.10 10.140.81.11'\n"
        "NVIDIA_DRIVER_BRANCH='580'\nNVIDIA_CONTAINER_TOOLKIT_VERSION='1.17.8-1'\n")
    bin_dir.mkdir(exist_ok=True)
    for tool in ("nvidia-smi", "apt-get", "curl", "gpg", "firewall-cmd", "firewall-offline-cmd", "systemctl",
                 "shutdown"):
        (bin_dir / tool).write_text(PREP_RECORDER)
        (bin_dir / tool).chmod(0o755)
    calls = tmp_path / "calls.log"
    calls.write_text("")
    full = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "PREP_ROOT": str(root), "POLL_SECONDS": "0", **env}
    result = subprocess.run(["bash", str(INFRA / "cloud-init" / "node-prep.sh")], env=full, capture_output=True,
                            text=True, timeout=60)
    return result, calls.read_text().splitlines()


def test_node_prep_opens_firewalld_installs_the_toolkit_before_k3s_and_upgrades_an_old_driver(tmp_path):
    result, calls = _run_prep(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    at = functools.partial(_index, calls)
    # firewalld (not running here: the offline client), k3s's documented trusted sources
    for source in ("10.42.0.0/16", "10.43.0.0/16", "10.140.81.10", "10.140.81.11"):
        at("firewall-offline-cmd --zone=trusted", f"--add-source={source}")
    for port in ("80/tcp", "443/tcp"):
        at("firewall-offline-cmd --zone=public", f"--add-port={port}")
    assert not [c for c in calls if "6443" in c]  # the API is reached through the SSH tunnel
    # the CC image's 560 driver is older than the branch: upgraded, then a reboot
    assert at("apt-get install", "cuda-drivers-580") < at("shutdown -r")
    # the pinned toolkit before k3s, and k3s's containerd config names the nvidia runtime
    toolkit = at("apt-get install", "nvidia-container-toolkit=1.17.8-1", "libnvidia-container1=1.17.8-1")
    assert toolkit < at("curl -sfL https://get.k3s.io")
    root = tmp_path / "root"
    assert "default-runtime: nvidia" in (root / "etc/rancher/k3s/config.yaml").read_text()
    assert "signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg" in (
        root / "etc/apt/sources.list.d/nvidia-container-toolkit.list").read_text()
    assert not list(root.rglob("*.toml.tmpl"))  # no containerd template for k3s to replace its config with


def test_node_prep_keeps_a_new_driver_and_uses_the_running_firewalld(tmp_path):
    result, calls = _run_prep(tmp_path, DRIVER="580.65.06", FIREWALLD_ACTIVE="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [c for c in calls if "cuda-drivers" in c or c.startswith("shutdown")]
    _index(calls, "firewall-cmd --permanent --zone=trusted --add-source=10.42.0.0/16")
    _index(calls, "firewall-cmd --reload")
    assert not [c for c in calls if c.startswith("firewall-offline-cmd")]


# --- first_run.sh: the first run's order against stand-ins (MinIO is moto's S3 server) ----------

FIRST_RUN_KUBECTL = """#!/usr/bin/env bash
line="kubectl$(printf ' %q' "$@")"; printf '%s\\n' "$line" >> "$CALLS"
case "$*" in
  *"get secret minio-root"*rootUser*) printf 'test-key-id' | base64 ;;
  *"get secret minio-root"*rootPassword*) printf 'test-key' | base64 ;;
  *"port-forward svc/minio "*)  # MinIO behind the forward: moto's S3 server on the local port
    exec "$PYTHON" -m moto.server -H 127.0.0.1 -p "${5%%:*}" >/dev/null 2>&1 ;;
  *"port-forward "*)  # the KFP API: something that accepts connections
    exec "$PYTHON" -c 'import socket,sys,time; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(); time.sleep(120)' "${5%%:*}" ;;
esac
exit 0
"""

# `gourmetgram`: records; a training run it is asked to wait for registers version N, i.e. its
# bundle appears in the models bucket (what the pipeline's register step does on the cluster),
# except the run named in $NO_BUNDLE_FOR.
FIRST_RUN_GOURMETGRAM = """#!/usr/bin/env bash
line="gourmetgram$(printf ' %q' "$@")"; printf '%s\\n' "$line" >> "$CALLS"
if [[ "$1 $2" == "pipeline submit" ]]; then
  all="$*"; run=${all##*--run-name gourmetgram-first-}; run=${run%% *}
  [[ "$run" == "${NO_BUNDLE_FOR:-}" ]] && exit 0
  exec "$PYTHON" -c '
import sys, boto3
s3 = boto3.client("s3")
if "gourmetgram-models" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
    s3.create_bucket(Bucket="gourmetgram-models")
s3.put_object(Bucket="gourmetgram-models", Key=f"food11/{sys.argv[1]}/model_spec.json", Body=b"{}")
' "$run"
fi
exit 0
"""


def _run_first_run(tmp_path: Path, *args: str, **env_overrides: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """infra/scripts/first_run.sh, copied with the rendered manifests into a scratch repository
    whose smoke test only records its call; kubectl and gourmetgram are stand-ins."""
    import sys

    root = tmp_path / "repo"
    (root / "infra" / "scripts").mkdir(parents=True)
    shutil.copy(INFRA / "scripts" / "first_run.sh", root / "infra" / "scripts")
    shutil.copytree(REPO_ROOT / "inference_services", root / "inference_services")
    smoke = root / "infra" / "scripts" / "smoke_cluster.sh"
    smoke.write_text("#!/usr/bin/env bash\n{ printf 'smoke_cluster.sh'; printf ' %q' \"$@\"; printf '\\n'; } >> \"$CALLS\"\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("kubectl", FIRST_RUN_KUBECTL), ("gourmetgram", FIRST_RUN_GOURMETGRAM)):
        (bin_dir / name).write_text(text)
    for path in (*bin_dir.iterdir(), smoke):
        path.chmod(0o755)
    (tmp_path / "data" / "training").mkdir(parents=True)
    calls = tmp_path / "calls.log"
    calls.write_text("")
    python_bin = str(Path(sys.executable).parent)  # python3 with this project's packages, as on an operator's machine
    env = {"PATH": f"{bin_dir}:{python_bin}:/usr/bin:/bin", "CALLS": str(calls), "HOME": str(tmp_path),
           "PYTHON": sys.executable, "DOMAIN": "192.5.87.10.sslip.io", **env_overrides}
    env = {k: v for k, v in env.items() if v is not None}
    result = subprocess.run(["bash", str(root / "infra" / "scripts" / "first_run.sh"),
                             *(args or (str(tmp_path / "data"),))],
                            env=env, capture_output=True, text=True, timeout=300)
    return result, calls.read_text().splitlines()


@pytest.mark.slow
def test_first_run_uploads_trains_twice_checks_the_bundles_then_applies_and_smokes(tmp_path):
    result, calls = _run_first_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    at = functools.partial(_index, calls)
    upload, run1, run2 = (at("gourmetgram data upload"), at("pipeline submit", "gourmetgram-first-1", "--wait"),
                          at("pipeline submit", "gourmetgram-first-2", "--no-cache", "--wait"))
    apply_staging, wait_staging = at("kubectl apply -f", "inference_services/staging.yaml"), at("kubectl", "wait", "food11-staging")
    smoke = at("smoke_cluster.sh")
    assert upload < run1 < run2 < apply_staging < wait_staging < smoke
    assert "s3://gourmetgram-datasets/food11" in calls[upload] and "dataset_uri=s3://gourmetgram-datasets/food11" in calls[run1]
    # both bundles were looked for in the bucket behind the MinIO port-forward before anything was applied
    assert "bundle s3://gourmetgram-models/food11/1: present" in result.stdout
    assert "bundle s3://gourmetgram-models/food11/2: present" in result.stdout
    assert "test-key" not in result.stdout + result.stderr  # the MinIO keys are never printed


@pytest.mark.slow
def test_first_run_stops_before_applying_when_a_run_registered_no_bundle(tmp_path):
    result, calls = _run_first_run(tmp_path, NO_BUNDLE_FOR="2")
    assert result.returncode == 1
    assert "s3://gourmetgram-models/food11/2/model_spec.json is not in the object store" in result.stderr
    assert not [c for c in calls if c.startswith("kubectl apply") or c.startswith("smoke_cluster.sh")]


@pytest.mark.parametrize("args, env, code, message", [
    ((), {"DOMAIN": None}, 2, "set DOMAIN"),
    (("/nonexistent/dataset",), {}, 2, "usage: first_run.sh DATASET_FOLDER"),
])
def test_first_run_refuses_bad_input_before_touching_the_cluster(tmp_path, args, env, code, message):
    result, calls = _run_first_run(tmp_path, *args, **env)
    assert result.returncode == code and message in result.stderr
    assert not [c for c in calls if "port-forward" in c or c.startswith("gourmetgram")]

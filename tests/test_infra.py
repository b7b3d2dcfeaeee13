"""infra/: the Chameleon GPU nodes as code, checked offline (nothing here can be applied).

Parses every Terraform file with python-hcl2 and checks the structure a GPU deployment
on Chameleon needs, that credentials stay out of the code, and that the scripts parse.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gourmetgram.constants import REPO_ROOT

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 not installed")

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
    install = (INFRA / "scripts" / "install_platform.sh").read_text()
    for name in versions:
        if name not in ("K3S_VERSION", "HELM_VERSION"):
            assert f"${name}" in install or f"${{{name}}}" in install, f"{name} unused by install_platform.sh"
    variables = {k: v for item in _parse_terraform()["variable"] for k, v in item.items()}
    assert variables["k3s_version"]["default"] == versions["K3S_VERSION"]
    assert "INSTALL_K3S_VERSION='${k3s_version}'" in (INFRA / "cloud-init" / "k3s-node.yaml.tftpl").read_text()


def test_lease_script_reserves_gpu_hosts():
    script = (INFRA / "scripts" / "create_gpu_lease.sh").read_text()
    assert "openstack reservation lease create" in script
    assert "resource_type=physical:host" in script and "$node_type" in script
    assert re.search(r"NODE_TYPE=\$\{NODE_TYPE:-gpu_", script)
    assert "gpu_lease.auto.tfvars.json" in script


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_shell_scripts_parse():
    for script in sorted((INFRA / "scripts").glob("*.sh")):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"

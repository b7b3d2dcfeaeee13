"""`make images` (scripts/build_images.sh) against a recording `docker` stand-in, and the hosted
CI workflow that runs it (.github/workflows/images.yml), linted as YAML and for its structure.

Neither can build here (no docker daemon, no buildx): the stand-in proves what the script
asks docker to do (every Dockerfile, tags from git, push or load), a hosted runner proves the
builds themselves.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from gourmetgram.constants import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "build_images.sh"
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "images.yml"

DOCKER = """#!/usr/bin/env bash
{ printf 'docker'; printf ' %q' "$@"; printf '\\n'; } >> "$CALLS"
[[ "$1 $2" == "buildx version" && -n "${NO_BUILDX:-}" ]] && exit 1
exit 0
"""


def _dockerfiles() -> set[str]:
    tracked = subprocess.run(["git", "ls-files", "*Dockerfile", "**/Dockerfile"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    untracked = {p.relative_to(REPO_ROOT).as_posix() for p in REPO_ROOT.glob("**/Dockerfile")
                 if ".venv" not in p.parts and "node_modules" not in p.parts}
    return set(tracked) | untracked


def _run(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "docker").write_text(DOCKER)
    (bin_dir / "docker").chmod(0o755)
    calls = tmp_path / "calls.log"
    calls.write_text("")
    full = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "HOME": str(tmp_path), **env}
    result = subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=60)
    return result, calls.read_text().splitlines()


def _builds(calls: list[str]) -> dict[str, str]:
    """``{Dockerfile: the build command}``."""
    return {re.search(r"--file (\S+)", c).group(1): c for c in calls if c.startswith("docker buildx build")}


def _images_env() -> dict[str, str]:
    from gourmetgram.images import read_images_env

    return read_images_env()


def test_every_dockerfile_is_built_and_tagged_with_the_one_image_reference(tmp_path):
    result, calls = _run(tmp_path)
    assert result.returncode == 0, result.stderr
    describe = subprocess.run(["git", "describe", "--tags", "--always", "--dirty"], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    env = _images_env()
    builds = _builds(calls)
    assert set(builds) == _dockerfiles()  # a new Dockerfile must be added to the script
    names = {}
    for dockerfile, command in builds.items():
        tags = re.findall(r"--tag (\S+)", command)
        name = tags[0].rsplit(":", 1)[0]
        assert name.startswith(env["IMAGE_REGISTRY"] + "/"), command
        assert tags[1] == f"{name}:{describe}", command  # the immutable build tag, always
        names[dockerfile] = name
        assert "--load" in command and "--push" not in command
        assert "--platform linux/amd64" in command and command.endswith(" .")
    assert sorted(n.rsplit("/", 1)[1] for n in names.values()) == sorted(env["IMAGES"].split())
    # the tag the cluster pulls: IMAGE_TAG (the MLflow server: its MLflow version)
    from gourmetgram.images import image

    mlflow_tag = re.findall(r"--tag (\S+)", builds["infra/docker/mlflow/Dockerfile"])[0]
    for dockerfile, command in builds.items():
        if dockerfile != "infra/docker/mlflow/Dockerfile":
            assert re.findall(r"--tag (\S+)", command)[0] == image(names[dockerfile].rsplit("/", 1)[1])
    # what the chart renders, the pipelines compile and the MLflow manifest names are exactly these
    from components.base import DEFAULT_PIPELINE_IMAGE
    from gourmetgram import manifests

    assert re.findall(r"--tag (\S+)", builds["components/Dockerfile"])[0] == DEFAULT_PIPELINE_IMAGE
    rendered = set()
    for stage in manifests.RENDERED_STAGES:
        rendered |= set(re.findall(r"image: (\S+)", yaml.safe_dump_all(manifests.render_objects(stage))))
    ours = {i for i in rendered if i.startswith(env["IMAGE_REGISTRY"] + "/")}
    assert ours == {image(names[d].rsplit("/", 1)[1]) for d in ("transformers/Dockerfile", "detectors/Dockerfile",
                                                               "capture/Dockerfile", "webapp/Dockerfile")}
    receiver = manifests.render_objects("production", {"retrainReceiver": {"enabled": True}})
    assert image(names["gourmetgram/retrain/Dockerfile"].rsplit("/", 1)[1]) in yaml.safe_dump_all(receiver)
    for compiled in ("training_pipeline.yaml", "staging_gate_pipeline.yaml"):
        assert set(re.findall(r"image: (\S+)", (REPO_ROOT / "pipelines" / compiled).read_text())) == {
            DEFAULT_PIPELINE_IMAGE}
    mlflow = (REPO_ROOT / "infra" / "k8s" / "platform" / "mlflow.yaml").read_text()
    assert "image: " + mlflow_tag.replace(env["IMAGE_REGISTRY"], "${IMAGE_REGISTRY}") in mlflow


def test_one_change_of_images_env_moves_the_chart_and_the_pipeline_image(tmp_path):
    """The registry/tag live in one file: the chart and the Python side both follow it."""
    import shutil

    from gourmetgram import manifests
    from gourmetgram.images import image

    chart = tmp_path / "chart"
    shutil.copytree(manifests.CHART_DIR, chart, ignore=shutil.ignore_patterns("rollout"))
    env = chart / "images.env"
    env.write_text(env.read_text().replace("IMAGE_REGISTRY=ghcr.io/gourmetgram", "IMAGE_REGISTRY=registry.example.org/gg")
                   .replace("IMAGE_TAG=0.1.0", "IMAGE_TAG=2026.11.1"))
    text = yaml.safe_dump_all(manifests.render_objects("production", chart_dir=chart))
    assert "image: registry.example.org/gg/food-transformer:2026.11.1" in text
    assert "ghcr.io/gourmetgram" not in text
    assert image("pipeline-python3.11", env) == "registry.example.org/gg/pipeline-python3.11:2026.11.1"
    # one release may point elsewhere through the values
    text = yaml.safe_dump_all(manifests.render_objects("production", {"images": {"tag": "dev"}}, chart_dir=chart))
    assert "image: registry.example.org/gg/drift-detector:dev" in text
    from gourmetgram.errors import BadInput

    with pytest.raises(BadInput, match="name only"):
        manifests.render_objects("production", {"transformer": {"image": "ghcr.io/x/food-transformer:1"}})


def test_push_registry_and_tag_overrides(tmp_path):
    result, calls = _run(tmp_path, PUSH="1", REGISTRY="registry.example.org/food", IMAGE_TAG="v9.9.9",
                         PLATFORMS="linux/amd64,linux/arm64")
    assert result.returncode == 0, result.stderr
    for dockerfile, command in _builds(calls).items():
        assert "--push" in command and "--load" not in command
        assert re.search(r"--tag registry\.example\.org/food/[a-z0-9.-]+:", command)
        assert ":v9.9.9 " in command or dockerfile == "infra/docker/mlflow/Dockerfile"  # MLflow: its version
        assert "--platform linux/amd64\\,linux/arm64" in command or "--platform linux/amd64,linux/arm64" in command


@pytest.mark.parametrize(("env", "code", "message"), [
    ({"NO_BUILDX": "1"}, 3, "docker buildx is not available"),
    ({"IMAGE_TAG": "bad tag!"}, 2, "not a valid docker tag"),
    ({"REGISTRY": "GHCR.io/Upper"}, 2, "not a registry path"),
    ({"PLATFORMS": "linux/amd64,linux/arm64"}, 2, "cannot be loaded locally"),
])
def test_bad_input_or_no_buildx_fails_before_building(tmp_path, env, code, message):
    result, calls = _run(tmp_path, **env)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stderr
    assert not _builds(calls)


def test_make_images_runs_the_script():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^images:\n\t\./scripts/build_images\.sh$", makefile, re.M)


def test_workflow_yaml_builds_and_pushes_with_the_script():
    text = WORKFLOW.read_text()
    doc = yaml.safe_load(text)  # a YAML error fails here
    assert "\t" not in text
    triggers = doc.get("on", doc.get(True))  # PyYAML reads the bare key `on` as True
    assert triggers["push"]["branches"] == ["main"] and "v*" in triggers["push"]["tags"]
    assert doc["permissions"] == {"contents": "read", "packages": "write"}
    steps = doc["jobs"]["build"]["steps"]
    uses = [s["uses"] for s in steps if "uses" in s]
    assert all(re.fullmatch(r"[\w-]+/[\w-]+@v\d+", u) for u in uses), uses  # pinned majors
    assert {u.split("@")[0] for u in uses} >= {"actions/checkout", "docker/setup-buildx-action",
                                                "docker/login-action"}
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0  # git describe needs history and tags
    build = next(s for s in steps if "build_images.sh" in s.get("run", ""))
    assert build["run"].strip() == "./scripts/build_images.sh" and "PUSH" in build["env"]
    assert "REGISTRY" not in build["run"] and "REGISTRY" not in build.get("env", {})  # images.env's registry
    guard = next(s for s in steps if "images.env" in s.get("run", "") and "IMAGE_REGISTRY" in s["run"])
    assert "github.repository_owner" in guard["env"]["OWNER"]
    login = next(s for s in steps if s.get("uses", "").startswith("docker/login-action"))
    assert login["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"  # no stored credentials
    # every path the pull-request trigger watches exists
    for path in triggers["pull_request"]["paths"]:
        assert list(REPO_ROOT.glob(path)), path


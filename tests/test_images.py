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

from gourmetgram import __version__
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


def test_every_dockerfile_is_built_and_tagged_from_git(tmp_path):
    result, calls = _run(tmp_path)
    assert result.returncode == 0, result.stderr
    describe = subprocess.run(["git", "describe", "--tags", "--always", "--dirty"], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    builds = _builds(calls)
    assert set(builds) == _dockerfiles()  # a new Dockerfile must be added to the script
    names = {}
    for dockerfile, command in builds.items():
        tags = re.findall(r"--tag (\S+)", command)
        assert tags[0].startswith("ghcr.io/gourmetgram/") and tags[0].endswith(f":{describe}"), command
        names[dockerfile] = tags[0].rsplit(":", 1)[0]
        assert "--load" in command and "--push" not in command
        assert "--platform linux/amd64" in command and command.endswith(" .")
    # the names the chart and the pipeline reference
    values = (REPO_ROOT / "charts" / "gourmetgram" / "values.yaml").read_text()
    assert f"image: {names['transformers/Dockerfile']}:{__version__}" in values
    assert f"image: {names['detectors/Dockerfile']}:{__version__}" in values
    assert f"image: {names['webapp/Dockerfile']}:{__version__}" in values
    assert f"image: {names['capture/Dockerfile']}:{__version__}" in values  # the chart's capture sink
    assert f"image: {names['gourmetgram/retrain/Dockerfile']}:{__version__}" in values
    from components.base import DEFAULT_PIPELINE_IMAGE

    assert f"{names['components/Dockerfile']}:{__version__}" == DEFAULT_PIPELINE_IMAGE
    mlflow = (REPO_ROOT / "infra" / "k8s" / "platform" / "mlflow.yaml").read_text()
    mlflow_tags = re.findall(r"--tag (\S+)", builds["infra/docker/mlflow/Dockerfile"])
    assert any(f"image: {t}" in mlflow for t in mlflow_tags)


def test_push_registry_and_tag_overrides(tmp_path):
    result, calls = _run(tmp_path, PUSH="1", REGISTRY="registry.example.org/food", IMAGE_TAG="v9.9.9",
                         PLATFORMS="linux/amd64,linux/arm64")
    assert result.returncode == 0, result.stderr
    for command in _builds(calls).values():
        assert "--push" in command and "--load" not in command
        assert re.search(r"--tag registry\.example\.org/food/[a-z0-9.-]+:v9\.9\.9", command)
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
    build = next(s for s in steps if "run" in s)
    assert "./scripts/build_images.sh" in build["run"] and "PUSH" in build["env"]
    login = next(s for s in steps if s.get("uses", "").startswith("docker/login-action"))
    assert login["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"  # no stored credentials
    # every path the pull-request trigger watches exists
    for path in triggers["pull_request"]["paths"]:
        assert list(REPO_ROOT.glob(path)), path


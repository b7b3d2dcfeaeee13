"""A fresh machine installs exactly what CI tested: requirements.lock pins the whole set.

requirements.txt names what the project depends on; `make lock` (pip-compile) resolves it into
requirements.lock, which scripts/setup.sh installs. A requirement added or changed without
re-locking fails here.
"""

from __future__ import annotations

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gourmetgram.constants import REPO_ROOT


def _lines(name: str) -> list[str]:
    lines = (REPO_ROOT / name).read_text().splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


def _locked() -> dict[str, str]:
    pins = {}
    for line in _lines("requirements.lock"):
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"requirements.lock: {line!r} is not an exact pin"
        pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def test_the_lock_pins_every_requirement_within_its_range():
    locked = _locked()
    for line in _lines("requirements.txt"):
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is in requirements.txt but not locked: run `make lock`"
        assert req.specifier.contains(locked[name], prereleases=True), \
            f"requirements.lock has {req.name}=={locked[name]}, outside {req.specifier}: run `make lock`"


def test_setup_installs_from_the_locks():
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    assert "-r requirements.lock" in setup and "-r requirements.txt" not in setup
    assert "-r requirements-labelstudio.lock" in setup
    pins = _lines("requirements-labelstudio.lock")
    assert "label-studio==1.23.2" in pins and all("==" in p for p in pins)

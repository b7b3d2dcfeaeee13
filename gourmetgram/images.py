"""The one image reference of the repository's own images: ``charts/gourmetgram/images.env``.

The chart (its ``gourmetgram.image`` helper), ``scripts/build_images.sh`` and the cluster install
read the same file; this module gives Python (the pipelines' compiled image) the same answer.
Inside the pipeline image the chart is not there: a step never compiles a pipeline, so the
fallback (this package's version under the default registry) is only a label there.
"""

from __future__ import annotations

import re
from pathlib import Path

from gourmetgram import __version__
from gourmetgram.constants import REPO_ROOT
from gourmetgram.errors import BadInput

IMAGES_ENV = REPO_ROOT / "charts" / "gourmetgram" / "images.env"
_FALLBACK = {"IMAGE_REGISTRY": "ghcr.io/gourmetgram", "IMAGE_TAG": __version__}
_LINE = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def read_images_env(path: Path = IMAGES_ENV) -> dict[str, str]:
    """``KEY=VALUE`` lines (quotes stripped, comments and blank lines skipped)."""
    if not path.is_file():
        return dict(_FALLBACK)
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise BadInput(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        values[match.group(1)] = match.group(2).strip().strip('"')
    missing = {"IMAGE_REGISTRY", "IMAGE_TAG"} - set(values)
    if missing:
        raise BadInput(f"{path} does not set {', '.join(sorted(missing))}")
    return values


def image(name: str, path: Path = IMAGES_ENV) -> str:
    """``<IMAGE_REGISTRY>/<name>:<IMAGE_TAG>``, what build_images.sh pushes and the chart pulls."""
    if not _NAME.match(name):
        raise BadInput(f"image name {name!r}: a lower-case name such as food-transformer")
    env = read_images_env(path)
    return f"{env['IMAGE_REGISTRY'].rstrip('/')}/{name}:{env['IMAGE_TAG']}"

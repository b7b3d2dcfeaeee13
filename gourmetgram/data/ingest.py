"""Bring a dataset to a local folder in the Food-11 layout.

Accepts a folder, a local archive (.zip, .tar, .tar.gz, .tgz) or an http(s) URL of one.
The public Food-11 archive keeps images flat as ``<split>/<class>_<n>.jpg``; those are
sorted into ``class_XX`` folders, as the course's data setup does.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from gourmetgram.constants import SPLITS
from gourmetgram.errors import DatasetError

FLAT_NAME = re.compile(r"^(\d+)_\d+\.(jpe?g|png)$", re.IGNORECASE)
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def _is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def _download(url: str, dest_dir: Path) -> Path:
    name = Path(urllib.parse.urlparse(url).path).name or "dataset.zip"
    target = dest_dir / name
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        raise DatasetError(f"could not download dataset from {url}: {exc}") from exc
    return target


def _extract(archive: Path, dest: Path) -> None:
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(dest)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise DatasetError(f"{archive} is not a readable archive: {exc}") from exc


def _find_root(base: Path) -> Path:
    """The folder that holds the split folders (an archive may wrap it in one more)."""
    candidates = [base] + sorted(p for p in base.rglob("*") if p.is_dir())
    for candidate in candidates:
        if all((candidate / s).is_dir() for s in SPLITS):
            return candidate
    raise DatasetError(
        f"no folder under {base} holds the split folders {', '.join(SPLITS)}"
    )


def organize_flat_splits(root: Path) -> bool:
    """Move flat ``<split>/<class>_<n>.jpg`` files into ``class_XX`` folders. True if moved."""
    moved = False
    for split in SPLITS:
        split_dir = root / split
        for path in sorted(split_dir.iterdir()):
            match = FLAT_NAME.match(path.name) if path.is_file() else None
            if match:
                class_dir = split_dir / f"class_{int(match.group(1)):02d}"
                class_dir.mkdir(exist_ok=True)
                path.rename(class_dir / path.name)
                moved = True
    return moved


def ingest(uri: str, workdir: str | Path) -> Path:
    """Return a local folder in the Food-11 layout for ``uri``."""
    workdir = Path(workdir)
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        workdir.mkdir(parents=True, exist_ok=True)
        archive = _download(uri, workdir)
        if not _is_archive(archive.name):
            raise DatasetError(f"{uri} is not an archive ({', '.join(ARCHIVE_SUFFIXES)})")
        _extract(archive, workdir / "extracted")
        root = _find_root(workdir / "extracted")
    elif parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else uri).expanduser()
        if not path.exists():
            raise DatasetError(f"dataset {path} does not exist")
        if path.is_file():
            if not _is_archive(path.name):
                raise DatasetError(f"{path} is a file but not an archive ({', '.join(ARCHIVE_SUFFIXES)})")
            _extract(path, workdir / "extracted")
            root = _find_root(workdir / "extracted")
        else:
            root = path
    else:
        raise DatasetError(
            f"unsupported dataset URI scheme {parsed.scheme!r} in {uri}; use a folder, an archive or http(s)"
        )
    if any(FLAT_NAME.match(p.name) for s in SPLITS if (root / s).is_dir() for p in (root / s).iterdir()):
        if not str(root).startswith(str(workdir)):
            # Never rearrange a user's folder in place: copy it first.
            copy = workdir / "organized"
            shutil.copytree(root, copy, dirs_exist_ok=True)
            root = copy
        organize_flat_splits(root)
    return root

"""Bring a dataset to a local folder in the Food-11 layout.

Accepts a folder, a local archive (.zip, .tar, .tar.gz, .tgz), an http(s) URL of one, or an
``s3://bucket/prefix`` (a dataset folder or one archive object in the object store, read with
gourmetgram.objectstore: MinIO on the cluster).
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


def _from_object_store(uri: str, workdir: Path) -> Path:
    """Download an ``s3://`` dataset (a prefix in the Food-11 layout, or one archive object)."""
    from gourmetgram import objectstore
    from gourmetgram.errors import BadInput

    workdir.mkdir(parents=True, exist_ok=True)
    try:
        _, key = objectstore.split_uri(uri)
        if _is_archive(key):
            archive = workdir / Path(key).name
            try:  # endpoint/credential errors: a dependency (exit 3), raised by the store
                objectstore.download_file(uri, archive)
            except FileNotFoundError:
                raise DatasetError(f"dataset archive {uri} does not exist") from None
            _extract(archive, workdir / "extracted")
            return _find_root(workdir / "extracted")
        objectstore.download_tree(uri, workdir / "downloaded")
    except BadInput as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"dataset {uri}: {exc}") from None
    return _find_root(workdir / "downloaded")


def source_version(uri: str) -> str:
    """A cheap identity of what ``uri`` holds now, without reading the data: the pipeline's
    cache key for ingest (same identity -> ingest, and so train, are cache hits).

    s3: key, size and ETag of every object; a local folder or archive: relative path, size and
    mtime of every file; http(s): the server's ETag/Last-Modified/Content-Length. A source
    that says nothing about its version gets a fresh value (never a false cache hit).
    """
    import hashlib
    import uuid

    parsed = urllib.parse.urlparse(uri)
    digest = hashlib.sha256()
    if parsed.scheme == "s3":
        from gourmetgram import objectstore
        from gourmetgram.errors import BadInput

        try:
            return "s3:" + objectstore.tree_fingerprint(uri)
        except DatasetError:
            raise
        except BadInput as exc:  # bad input (no such prefix, no endpoint): say which dataset
            raise DatasetError(f"dataset {uri}: {exc}") from None
    if parsed.scheme in ("http", "https"):
        request = urllib.request.Request(uri, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                marks = [response.headers.get(h, "") for h in ("ETag", "Last-Modified", "Content-Length")]
        except OSError as exc:
            raise DatasetError(f"could not reach dataset {uri}: {exc}") from exc
        if not any(marks[:2]):
            return f"unversioned:{uuid.uuid4().hex}"
        digest.update("\0".join(marks).encode())
        return "http:" + digest.hexdigest()
    path = Path(parsed.path if parsed.scheme == "file" else uri).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset {path} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "file:" + digest.hexdigest()


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
    elif parsed.scheme == "s3":
        root = _from_object_store(uri, workdir)
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
            f"unsupported dataset URI scheme {parsed.scheme!r} in {uri}; use a folder, an archive, "
            "http(s) or s3://bucket/prefix"
        )
    if any(FLAT_NAME.match(p.name) for s in SPLITS if (root / s).is_dir() for p in (root / s).iterdir()):
        if not str(root).startswith(str(workdir)):
            # Never rearrange a user's folder in place: copy it first.
            copy = workdir / "organized"
            shutil.copytree(root, copy, dirs_exist_ok=True)
            root = copy
        organize_flat_splits(root)
    return root

"""The object store: one fsspec client for every bucket the project reads or writes.

Two kinds of caller share it:

- **prefix copies** (the pipeline): the register step copies the served bundle to the models
  bucket (``s3://<bucket>/<model>/<version>``, the InferenceService's storageUri), ingest reads
  ``dataset_uri=s3://...``, and :func:`tree_fingerprint` names what a prefix holds without
  reading it (the pipeline's cache key). These need an S3 endpoint: there is no AWS default on
  purpose, so a missing endpoint is an error, not a silent upload to Amazon.
- **keyed objects** (closing the loop): :class:`ObjectStore` puts and gets captured images under
  one root URL, ``file:///dir`` (the local default) or ``s3://bucket/prefix`` (MinIO, AWS).

Credentials come from the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, from a
Kubernetes Secret on the cluster); the endpoint from the first of :data:`ENDPOINT_ENV` that is
set: the loop's own ``GOURMETGRAM_S3_ENDPOINT_URL``, ``AWS_ENDPOINT_URL`` (what KServe's storage
initializer reads) or ``MLFLOW_S3_ENDPOINT_URL``. Store failures become one actionable message:
:class:`~gourmetgram.errors.BadInput` for a refused credential or a bad URI,
:class:`~gourmetgram.errors.DependencyUnavailable` (exit 3) for a store that does not answer.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gourmetgram.environment import environment
from gourmetgram.errors import BadInput, DependencyUnavailable
from gourmetgram.loop.settings import ENV_S3_ENDPOINT, objects_url

ENDPOINT_ENV = (ENV_S3_ENDPOINT, "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
# The models bucket the register step writes and storageUri reads (chart: values.yaml bundleUri).
MODELS_BUCKET_ENV = "GOURMETGRAM_MODELS_BUCKET"
DEFAULT_MODELS_BUCKET = "gourmetgram-models"

T = TypeVar("T")


# --- URIs and the endpoint ----------------------------------------------------------------

def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; a URI without a bucket is bad input."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise BadInput(f"{uri!r} is not an s3://BUCKET/KEY URI")
    return parts.netloc, parts.path.strip("/")


def models_uri(model_name: str, version: int | str, bucket: str | None = None) -> str:
    """Where a registered version's bundle lives: ``s3://<bucket>/<model>/<version>``."""
    bucket = bucket or environment().models_bucket or DEFAULT_MODELS_BUCKET
    return f"s3://{bucket}/{model_name}/{int(version)}"


def endpoint_url(explicit: str | None = None, required: bool = True) -> str | None:
    """The S3 endpoint: ``explicit``, else the first of :data:`ENDPOINT_ENV` set. Without one,
    ``required`` makes it bad input; otherwise ``None`` (boto's own default: AWS)."""
    endpoint = explicit or environment().s3_endpoint_url() or ""
    if not endpoint:
        if not required:
            return None
        raise BadInput(f"no S3 endpoint: set AWS_ENDPOINT_URL (or {ENV_S3_ENDPOINT} / MLFLOW_S3_ENDPOINT_URL; "
                        "the MinIO URL, e.g. http://minio.gourmetgram-platform:9000); on the cluster it comes "
                        "from the object-store Secret")
    if not endpoint.startswith(("http://", "https://")):
        raise BadInput(f"S3 endpoint {endpoint!r} must be http[s]://host[:port]")
    return endpoint


def filesystem(endpoint: str | None = None, required: bool = True) -> Any:
    """An ``s3fs.S3FileSystem`` on the configured endpoint (no caching of listings: objects
    written by another pod must be seen; a few retries for a store that blinks)."""
    import s3fs

    options: dict[str, Any] = {}
    url = endpoint_url(endpoint, required)
    if url:
        options["endpoint_url"] = url
    return s3fs.S3FileSystem(use_listings_cache=False,
                             config_kwargs={"retries": {"max_attempts": 3, "mode": "standard"}}, **options)


def _reachable(what: str, call: Callable[..., T], *args: Any, where: str | None = None, **kwargs: Any) -> T:
    """``call(*args, **kwargs)`` on the store; its failures become one actionable message.
    A missing object stays a ``FileNotFoundError`` (the caller knows what that means)."""
    try:
        return call(*args, **kwargs)
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise BadInput(f"{what}: access denied by the object store ({exc}); check AWS_ACCESS_KEY_ID/"
                        "AWS_SECRET_ACCESS_KEY") from None
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError and botocore's own endpoint errors
        where = where or endpoint_url(required=False) or "the default AWS endpoint"
        raise DependencyUnavailable(f"{what}: object store at {where} unreachable or refused the request "
                                    f"({type(exc).__name__}: {exc}); check that MinIO is up and the "
                                    "endpoint") from None


# --- prefix copies (bundles, datasets) ----------------------------------------------------

def upload_tree(local_dir: str | Path, uri: str, endpoint: str | None = None) -> list[str]:
    """Copy every file under ``local_dir`` to ``uri`` (a prefix), replacing what was there.

    Returns the keys written (relative to ``uri``). Each file is checked by size after the
    copy, so a half-written bundle is an error here, not a Triton load failure later.
    """
    src = Path(local_dir)
    if not src.is_dir():
        raise BadInput(f"bundle {src} is not a folder")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise BadInput(f"bundle {src} is empty")
    bucket, prefix = split_uri(uri)
    fs = filesystem(endpoint)
    target = f"{bucket}/{prefix}".rstrip("/")
    if not _reachable(f"bucket {bucket}", fs.exists, bucket):
        _reachable(f"create bucket {bucket}", fs.mkdir, bucket)
    if _reachable(f"list {uri}", fs.exists, target):
        _reachable(f"clear {uri}", fs.rm, target, recursive=True)
    written = []
    for path in files:
        rel = path.relative_to(src).as_posix()
        _reachable(f"upload {rel} to {uri}", fs.put_file, str(path), f"{target}/{rel}")
        written.append(rel)
    sizes = {name[len(target) + 1:]: int(info.get("size") or 0) for name, info in _listing(fs, uri).items()}
    for path in files:
        rel = path.relative_to(src).as_posix()
        if sizes.get(rel) != path.stat().st_size:
            raise BadInput(f"upload of {rel} to {uri} is incomplete ({sizes.get(rel)} of "
                            f"{path.stat().st_size} bytes)")
    return written


def _listing(fs: Any, uri: str) -> dict[str, dict]:
    """Every object under the prefix ``uri``, with its details; nothing there is bad input."""
    bucket, prefix = split_uri(uri)
    try:
        listed = _reachable(f"list {uri}", fs.find, f"{bucket}/{prefix}".rstrip("/"), detail=True)
    except FileNotFoundError:
        listed = {}
    if not listed:
        raise BadInput(f"nothing under {uri} (check the bucket and prefix)")
    return listed


def download_tree(uri: str, local_dir: str | Path, endpoint: str | None = None) -> Path:
    """Copy every object under the prefix ``uri`` into ``local_dir`` (keys become paths)."""
    bucket, prefix = split_uri(uri)
    fs = filesystem(endpoint)
    source = f"{bucket}/{prefix}".rstrip("/")
    out = Path(local_dir)
    for name in _listing(fs, uri):
        rel = name[len(source):].lstrip("/") or Path(name).name
        if ".." in Path(rel).parts:
            raise BadInput(f"object key {name!r} escapes the target folder")
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        _reachable(f"download {name}", fs.get_file, name, str(dest))
    return out


def exists(uri: str, endpoint: str | None = None) -> bool:
    """True when ``uri`` names an object or a prefix with objects under it."""
    bucket, key = split_uri(uri)
    return bool(_reachable(f"look up {uri}", filesystem(endpoint).exists, f"{bucket}/{key}".rstrip("/")))


def download_file(uri: str, dest: str | Path, endpoint: str | None = None) -> Path:
    """Copy the one object ``uri`` to ``dest`` (``FileNotFoundError`` when it does not exist)."""
    bucket, key = split_uri(uri)
    _reachable(f"download {uri}", filesystem(endpoint).get_file, f"{bucket}/{key}", str(dest))
    return Path(dest)


def tree_fingerprint(uri: str, endpoint: str | None = None) -> str:
    """sha256 over every object's key, size and ETag under ``uri``: changes when the data
    does, without reading it (S3's ETag is the content's MD5 for single-part uploads)."""
    listed = _listing(filesystem(endpoint), uri)
    digest = hashlib.sha256()
    for name in sorted(listed):
        info = listed[name]
        digest.update(f"{name}\0{info.get('size')}\0{info.get('ETag', '')}\n".encode())
    return digest.hexdigest()


# --- keyed objects (captured images) ------------------------------------------------------

EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif"}


def sniff_type(data: bytes) -> str:
    """The image type from its magic bytes (the logger's JSON payload carries no content type)."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return "application/octet-stream"


def content_key(data: bytes, content_type: str | None = None) -> tuple[str, str]:
    """``(key, sha256)`` for an image's bytes: ``images/<sha256[:2]>/<sha256>.<ext>``, so a
    redelivered image writes the same object again and the same photo sent twice is stored once."""
    sha = hashlib.sha256(data).hexdigest()
    ext = EXTENSIONS.get(content_type or sniff_type(data), "bin")
    return f"images/{sha[:2]}/{sha}.{ext}", sha


class ObjectStore:
    """``put``/``get``/``exists`` on keys under one root URL (``file:///dir`` or ``s3://bucket/prefix``).

    A local write goes to a temporary file that is fsync'd and renamed, so an object either
    exists whole or not at all (what a PUT gives on S3), before the database row that points
    at it commits. The S3 endpoint is optional here (AWS itself is a valid store for captures).
    """

    def __init__(self, url: str | None = None, endpoint: str | None = None) -> None:
        import fsspec

        self.url = objects_url(url).rstrip("/")
        parts = urlsplit(self.url)
        self.protocol = parts.scheme or "file"
        if self.protocol == "s3":
            if not parts.netloc:
                raise BadInput(f"object store URL {url!r} names no bucket (s3://BUCKET/prefix)")
            self.root = f"{parts.netloc}{parts.path}".rstrip("/")
            self.where = endpoint_url(endpoint, required=False) or "the default AWS endpoint"
            self.fs = filesystem(endpoint, required=False)
            bucket = parts.netloc
            if not self._call(f"bucket {bucket}", self.fs.exists, bucket):
                self._call(f"create bucket {bucket}", self.fs.mkdir, bucket)
        elif self.protocol == "file":
            self.root = parts.path if parts.scheme else self.url
            Path(self.root).mkdir(parents=True, exist_ok=True)
            self.where = self.root
            self.fs = fsspec.filesystem("file")
        else:
            raise BadInput(f"object store URL {url!r}: use file:///dir or s3://bucket/prefix")

    def _call(self, what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return _reachable(f"{what} in {self.url}", call, *args, where=self.where, **kwargs)

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def local_path(self, key: str) -> Path | None:
        """The file on this machine (local stores only)."""
        return Path(self.path(key)) if self.protocol == "file" else None

    def put(self, key: str, data: bytes) -> None:
        if self.protocol == "file":
            target = Path(self.path(key))
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return
        self._call(f"write {key}", self.fs.pipe_file, self.path(key), data)

    def put_image(self, data: bytes, content_type: str | None = None) -> tuple[str, str]:
        """Store an image under its content key unless it is there; ``(key, sha256)``."""
        key, sha = content_key(data, content_type)
        if not self.exists(key):
            self.put(key, data)
        return key, sha

    def get(self, key: str) -> bytes:
        return self._call(f"read {key}", self.fs.cat_file, self.path(key))

    def exists(self, key: str) -> bool:
        return self._call(f"look up {key}", self.fs.exists, self.path(key))

    def size(self, prefix: str = "images") -> tuple[int, int]:
        """``(objects, bytes)`` under ``prefix`` (storage cost)."""
        try:
            found = self._call(f"list {prefix}", self.fs.find, self.path(prefix), detail=True)
        except FileNotFoundError:
            return 0, 0
        files = [v for v in found.values() if v.get("type") == "file" and "/.tmp-" not in v["name"]]
        return len(files), sum(int(v.get("size") or 0) for v in files)

    def presigned_url(self, key: str, expires_s: int = 7 * 24 * 3600) -> str:
        """An HTTP URL Label Studio can load the image from (S3 stores)."""
        return self.fs.url(self.path(key), expires=expires_s)

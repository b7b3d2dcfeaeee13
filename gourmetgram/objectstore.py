"""The S3 object store (MinIO on the cluster) for model bundles and datasets, through s3fs.

One client for the pipeline's object-store work: the register step copies the served bundle
to the models bucket (``s3://<bucket>/<model>/<version>``, the InferenceService's storageUri),
ingest reads ``dataset_uri=s3://...``, and :func:`tree_fingerprint` names what a prefix holds
without reading it (the pipeline's cache key). Credentials come from the environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, from a Kubernetes Secret on the cluster);
the endpoint from ``AWS_ENDPOINT_URL`` (what KServe's storage initializer reads) or
``MLFLOW_S3_ENDPOINT_URL``. There is no AWS default on purpose: a missing endpoint is an error,
not a silent upload to Amazon.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlsplit

from gourmetgram.errors import DependencyUnavailable, UserError

ENDPOINT_ENV = ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
# The models bucket the register step writes and storageUri reads (chart: values.yaml bundleUri).
MODELS_BUCKET_ENV = "GOURMETGRAM_MODELS_BUCKET"
DEFAULT_MODELS_BUCKET = "gourmetgram-models"


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; a URI without a bucket is bad input."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise UserError(f"{uri!r} is not an s3://BUCKET/KEY URI")
    return parts.netloc, parts.path.strip("/")


def endpoint_url(explicit: str | None = None) -> str:
    endpoint = explicit or next((os.environ[k] for k in ENDPOINT_ENV if os.environ.get(k)), "")
    if not endpoint:
        raise UserError(f"no S3 endpoint: set {' or '.join(ENDPOINT_ENV)} (the MinIO URL, e.g. "
                        "http://minio.gourmetgram-platform:9000); on the cluster it comes from the "
                        "object-store Secret")
    if not endpoint.startswith(("http://", "https://")):
        raise UserError(f"S3 endpoint {endpoint!r} must be http[s]://host[:port]")
    return endpoint


def filesystem(endpoint: str | None = None):
    """An ``s3fs.S3FileSystem`` on the configured endpoint (no caching of listings: objects
    written by another pod must be seen)."""
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint_url(endpoint), use_listings_cache=False,
                             config_kwargs={"retries": {"max_attempts": 3, "mode": "standard"}})


def _reachable(what: str, call, *args, **kwargs):
    """``call(*args, **kwargs)`` on the store; its failures become one actionable message."""
    try:
        return call(*args, **kwargs)
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise UserError(f"{what}: access denied by the object store ({exc}); check AWS_ACCESS_KEY_ID/"
                        "AWS_SECRET_ACCESS_KEY") from None
    except (OSError, ValueError) as exc:
        raise DependencyUnavailable(f"{what}: object store at {endpoint_url()} unreachable or refused the "
                                    f"request ({exc}); check that MinIO is up and the endpoint") from None
    except Exception as exc:  # noqa: BLE001 - botocore's endpoint/credential errors are not OSErrors
        raise DependencyUnavailable(f"{what}: object store error {type(exc).__name__}: {exc}") from None


def models_uri(model_name: str, version: int | str, bucket: str | None = None) -> str:
    """Where a registered version's bundle lives: ``s3://<bucket>/<model>/<version>``."""
    bucket = bucket or os.environ.get(MODELS_BUCKET_ENV) or DEFAULT_MODELS_BUCKET
    return f"s3://{bucket}/{model_name}/{int(version)}"


def upload_tree(local_dir: str | Path, uri: str, endpoint: str | None = None) -> list[str]:
    """Copy every file under ``local_dir`` to ``uri`` (a prefix), replacing what was there.

    Returns the keys written (relative to ``uri``). Each file is checked by size after the
    copy, so a half-written bundle is an error here, not a Triton load failure later.
    """
    src = Path(local_dir)
    if not src.is_dir():
        raise UserError(f"bundle {src} is not a folder")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise UserError(f"bundle {src} is empty")
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
    listed = _reachable(f"list {uri}", fs.find, target, detail=True)
    sizes = {name[len(target) + 1:]: int(info.get("size") or 0) for name, info in listed.items()}
    for path in files:
        rel = path.relative_to(src).as_posix()
        if sizes.get(rel) != path.stat().st_size:
            raise UserError(f"upload of {rel} to {uri} is incomplete ({sizes.get(rel)} of "
                            f"{path.stat().st_size} bytes)")
    return written


def download_tree(uri: str, local_dir: str | Path, endpoint: str | None = None) -> Path:
    """Copy every object under the prefix ``uri`` into ``local_dir`` (keys become paths)."""
    bucket, prefix = split_uri(uri)
    fs = filesystem(endpoint)
    source = f"{bucket}/{prefix}".rstrip("/")
    try:
        listed = _reachable(f"list {uri}", fs.find, source)
    except FileNotFoundError:
        listed = []
    if not listed:
        raise UserError(f"nothing under {uri} (check the bucket and prefix)")
    out = Path(local_dir)
    for name in listed:
        rel = name[len(source):].lstrip("/") or Path(name).name
        if ".." in Path(rel).parts:
            raise UserError(f"object key {name!r} escapes the target folder")
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        _reachable(f"download {name}", fs.get_file, name, str(dest))
    return out


def tree_fingerprint(uri: str, endpoint: str | None = None) -> str:
    """sha256 over every object's key, size and ETag under ``uri``: changes when the data
    does, without reading it (S3's ETag is the content's MD5 for single-part uploads)."""
    bucket, prefix = split_uri(uri)
    fs = filesystem(endpoint)
    source = f"{bucket}/{prefix}".rstrip("/")
    try:
        listed = _reachable(f"list {uri}", fs.find, source, detail=True)
    except FileNotFoundError:
        listed = {}
    if not listed:
        raise UserError(f"nothing under {uri} (check the bucket and prefix)")
    digest = hashlib.sha256()
    for name in sorted(listed):
        info = listed[name]
        digest.update(f"{name}\0{info.get('size')}\0{info.get('ETag', '')}\n".encode())
    return digest.hexdigest()

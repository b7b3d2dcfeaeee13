"""The image store: one interface (fsspec) over a local folder or an S3 bucket (MinIO, AWS).

Keys are content-addressed (``images/<sha256[:2]>/<sha256>.<ext>``): a redelivered image
writes the same object again, and the same photo sent twice is stored once. A local write
goes to a temporary file that is fsync'd and renamed, so an object either exists whole or
not at all (what a PUT gives on S3), before the database row that points at it commits.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from gourmetgram.errors import UserError
from gourmetgram.loop.settings import ENV_S3_ENDPOINT, objects_url

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
    """``(key, sha256)`` for an image's bytes."""
    sha = hashlib.sha256(data).hexdigest()
    ext = EXTENSIONS.get(content_type or sniff_type(data), "bin")
    return f"images/{sha[:2]}/{sha}.{ext}", sha


class ObjectStore:
    """``put``/``get``/``exists`` on keys under one root URL (``file:///dir`` or ``s3://bucket/prefix``)."""

    def __init__(self, url: str | None = None, endpoint_url: str | None = None,
                 storage_options: dict | None = None) -> None:
        import fsspec

        self.url = objects_url(url).rstrip("/")
        parts = urlsplit(self.url)
        self.protocol = parts.scheme or "file"
        options = dict(storage_options or {})
        if self.protocol == "s3":
            endpoint = endpoint_url or os.environ.get(ENV_S3_ENDPOINT)
            if endpoint:
                options.setdefault("client_kwargs", {})["endpoint_url"] = endpoint
            self.root = f"{parts.netloc}{parts.path}".rstrip("/")
            if not parts.netloc:
                raise UserError(f"object store URL {url!r} names no bucket (s3://BUCKET/prefix)")
        elif self.protocol == "file":
            self.root = parts.path if parts.scheme else self.url
            Path(self.root).mkdir(parents=True, exist_ok=True)
        else:
            raise UserError(f"object store URL {url!r}: use file:///dir or s3://bucket/prefix")
        try:
            self.fs = fsspec.filesystem(self.protocol, **options)
        except (ImportError, ValueError) as exc:
            raise UserError(f"cannot open object store {self.url}: {exc}") from exc
        if self.protocol == "s3":
            bucket = parts.netloc
            try:
                if not self.fs.exists(bucket):
                    self.fs.mkdir(bucket)
            except Exception as exc:  # noqa: BLE001 - endpoint down, bad credentials...
                raise UserError(f"object store {self.url} is not reachable: {exc}") from exc

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
        self.fs.pipe_file(self.path(key), data)

    def put_image(self, data: bytes, content_type: str | None = None) -> tuple[str, str]:
        """Store an image under its content key unless it is there; ``(key, sha256)``."""
        key, sha = content_key(data, content_type)
        if not self.exists(key):
            self.put(key, data)
        return key, sha

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def size(self, prefix: str = "images") -> tuple[int, int]:
        """``(objects, bytes)`` under ``prefix`` (storage cost)."""
        try:
            found = self.fs.find(self.path(prefix), detail=True)
        except FileNotFoundError:
            return 0, 0
        files = [v for v in found.values() if v.get("type") == "file" and "/.tmp-" not in v["name"]]
        return len(files), sum(int(v.get("size") or 0) for v in files)

    def presigned_url(self, key: str, expires_s: int = 7 * 24 * 3600) -> str:
        """An HTTP URL Label Studio can load the image from (S3 stores)."""
        return self.fs.url(self.path(key), expires=expires_s)

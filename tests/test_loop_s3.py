"""The object store's S3 path against a real S3-protocol HTTP server (moto's server mode, its
own process, started here), and capture through it: object first, then the row."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from loop_helpers import CLASSES, ce_headers, image, new_id, request_body, response_body
from starlette.testclient import TestClient

from capture_sink.server import CaptureService, create_app
from gourmetgram.local.stack import Ports
from gourmetgram.loop.objects import ObjectStore, content_key
from gourmetgram.loop.settings import FeedbackSettings, LoopSettings
from gourmetgram.loop.store import Store


@pytest.fixture(scope="module")
def s3_server():
    port = Ports.free().gateway
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto's S3 server did not come up in 60 s")
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield url, proc
    proc.terminate()
    proc.wait(10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_s3_object_store_round_trip(s3_server):
    url, _ = s3_server
    store = ObjectStore("s3://captures/prod", endpoint_url=url)
    blob = image(5)
    key, sha = store.put_image(blob)
    assert (key, sha) == content_key(blob) and key.endswith(".png")
    assert store.exists(key) and store.get(key) == blob
    assert store.put_image(blob) == (key, sha)  # content-addressed: stored once
    assert store.size() == (1, len(blob))
    # Label Studio loads S3 images through a presigned URL: it really serves the bytes
    assert httpx.get(store.presigned_url(key), timeout=10).content == blob
    # the objects are in the bucket, under the prefix, as any S3 client sees them
    import boto3

    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="captures")["Contents"]]
    assert listed == [f"prod/{key}"]


def test_capture_to_s3_writes_the_object_before_the_row(s3_server, tmp_path):
    url, proc = s3_server
    store = Store(f"sqlite:///{tmp_path / 'loop.db'}")
    objects = ObjectStore("s3://captures/run2", endpoint_url=url)
    service = CaptureService(store, objects, LoopSettings(feedback=FeedbackSettings(wait_for_capture_s=0)), CLASSES)
    client = TestClient(create_app(service))
    ce_id = new_id()
    for kind, body in (("request", request_body(image(7))), ("response", response_body("one", 0.7))):
        assert client.post("/", content=body, headers=ce_headers(ce_id, kind)).status_code == 200
    sample = store.get_sample(ce_id)
    assert sample.complete and objects.get(sample.object_key) == image(7)
    # an object store that fails: the event is refused (503, the broker retries) and no row exists
    broken = ObjectStore.__new__(ObjectStore)
    broken.__dict__.update(objects.__dict__)

    class Down:
        def exists(self, *_):
            raise ConnectionError("S3 endpoint unreachable")

        pipe_file = exists

    broken.fs = Down()
    service.capture.objects = broken
    lost = new_id()
    r = client.post("/", content=request_body(image(8)), headers=ce_headers(lost, "request"))
    assert r.status_code == 503 and store.get_sample(lost) is None
    assert "capture_store_errors_total 1.0" in client.get("/metrics").text
    store.dispose()

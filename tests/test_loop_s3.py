"""The object store's S3 path against a real S3-protocol HTTP server (moto's server mode, its
own process, started here), and capture through it: object first, then the row."""

from __future__ import annotations

import httpx
import pytest
from helpers import S3_CREDENTIALS, free_port, moto_s3
from loop_helpers import CLASSES, ce_headers, image, new_id, request_body, response_body
from starlette.testclient import TestClient

from capture_sink.server import CaptureService, create_app
from gourmetgram.errors import DependencyUnavailable
from gourmetgram.loop.settings import ENV_S3_ENDPOINT, FeedbackSettings, LoopSettings
from gourmetgram.loop.store import Store
from gourmetgram.objectstore import ObjectStore, content_key


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server; the stores below name its endpoint explicitly, credentials from AWS_*."""
    with moto_s3(tmp_path_factory.mktemp("moto") / "moto.log") as url, pytest.MonkeyPatch.context() as mp:
        for key, value in S3_CREDENTIALS.items():
            mp.setenv(key, value)
        yield url


def test_s3_object_store_round_trip(s3_server):
    url = s3_server
    store = ObjectStore("s3://captures/prod", endpoint=url)
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
    url = s3_server
    store = Store(f"sqlite:///{tmp_path / 'loop.db'}")
    objects = ObjectStore("s3://captures/run2", endpoint=url)
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


def test_the_endpoint_comes_from_the_environment_like_the_pipelines(s3_server, monkeypatch):
    """One client: the capture store takes the same endpoint variables as the models bucket,
    the loop's own first."""
    url = s3_server
    monkeypatch.delenv(ENV_S3_ENDPOINT, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    store = ObjectStore("s3://captures/env")
    key, _ = store.put_image(image(9))
    assert ObjectStore("s3://captures/env", endpoint=url).get(key) == image(9)
    monkeypatch.setenv(ENV_S3_ENDPOINT, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(DependencyUnavailable, match=r"bucket captures in s3://captures/env: object store"):
        ObjectStore("s3://captures/env")


def test_capture_sink_with_its_store_down_exits_3(s3_server, tmp_path, monkeypatch, capsys):
    from capture_sink.__main__ import main

    monkeypatch.setenv(ENV_S3_ENDPOINT, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code = main(["--db", f"sqlite:///{tmp_path / 'loop.db'}", "--objects", "s3://captures/down",
                 "--class-names", ",".join(CLASSES)])
    err = capsys.readouterr().err
    assert code == 3 and "s3://captures/down: object store at http://127.0.0.1:" in err

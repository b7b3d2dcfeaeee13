"""The object store path of the cluster, against a real S3-protocol server process (moto's
server mode, started here on an ephemeral port): bundle upload to the models bucket by the
register step, the registry tag ``rollout canary --version N`` resolves, ``s3://`` datasets for
ingest, and the dataset version that keys the pipeline's cache."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import S3_CREDENTIALS, free_port, moto_s3

from gourmetgram import objectstore
from gourmetgram.errors import BadInput, DatasetError, DependencyUnavailable
from gourmetgram.loop.settings import ENV_S3_ENDPOINT

BUCKET = "gourmetgram-models"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server in its own process; AWS_* and the endpoint set for this module."""
    with moto_s3(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        mp = pytest.MonkeyPatch()
        for key, value in {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": url}.items():
            mp.setenv(key, value)
        for key in (ENV_S3_ENDPOINT, "MLFLOW_S3_ENDPOINT_URL", objectstore.MODELS_BUCKET_ENV):
            mp.delenv(key, raising=False)
        yield url
        mp.undo()


def _boto(url: str):
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _keys(url: str, bucket: str, prefix: str = "") -> dict[str, int]:
    pages = _boto(url).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def _fake_bundle(root: Path, marker: bytes = b"onnx") -> Path:
    (root / "triton" / "food11" / "1").mkdir(parents=True)
    (root / "triton" / "food11" / "config.pbtxt").write_text('name: "food11"\n')
    (root / "triton" / "food11" / "1" / "model.onnx").write_bytes(marker * 1000)
    (root / "model_spec.json").write_text('{"class_names": ["a", "b"]}')
    return root


# --- the client ---------------------------------------------------------------------------

def test_upload_download_round_trip(s3, tmp_path):
    bundle = _fake_bundle(tmp_path / "bundle")
    uri = objectstore.models_uri("food11", 7)
    assert uri == f"s3://{BUCKET}/food11/7"
    written = objectstore.upload_tree(bundle, uri)
    assert sorted(written) == ["model_spec.json", "triton/food11/1/model.onnx", "triton/food11/config.pbtxt"]
    # what any S3 client (KServe's storage initializer is one) sees in the bucket
    assert _keys(s3, BUCKET, "food11/7/") == {
        "food11/7/model_spec.json": 27, "food11/7/triton/food11/1/model.onnx": 4000,
        "food11/7/triton/food11/config.pbtxt": 15}
    back = objectstore.download_tree(uri, tmp_path / "back")
    assert (back / "triton" / "food11" / "1" / "model.onnx").read_bytes() == b"onnx" * 1000
    # a second upload to the same version replaces, never mixes, the old files
    (bundle / "model_spec.json").unlink()
    objectstore.upload_tree(bundle, uri)
    assert "food11/7/model_spec.json" not in _keys(s3, BUCKET, "food11/7/")


def test_models_bucket_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(objectstore.MODELS_BUCKET_ENV, "other-bucket")
    assert objectstore.models_uri("food11", "3") == "s3://other-bucket/food11/3"


def test_no_endpoint_and_a_dead_endpoint_are_clear_errors(tmp_path, monkeypatch):
    bundle = _fake_bundle(tmp_path / "b")
    for key in objectstore.ENDPOINT_ENV:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(BadInput, match="no S3 endpoint: set AWS_ENDPOINT_URL"):
        objectstore.upload_tree(bundle, "s3://b/x/1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(DependencyUnavailable, match="bucket b: object store"):
        objectstore.upload_tree(bundle, "s3://b/x/1")  # exit 3: a dependency, not bad input
    with pytest.raises(BadInput, match="not an s3://BUCKET/KEY"):
        objectstore.split_uri("s3:///no-bucket")


# --- register on the cluster path -----------------------------------------------------------

@pytest.fixture()
def logged_run(tmp_path, monkeypatch):
    """A training run with a logged model, in a private sqlite MLflow."""
    import torch

    from gourmetgram.model import Classifier, ModelSpec
    from gourmetgram.tracking import configure_mlflow

    monkeypatch.setenv("GOURMETGRAM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = ModelSpec(tuple(f"dish_{i}" for i in range(3)), image_size=32, width_mult=0.25)
    mlflow = configure_mlflow()
    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(Classifier(spec).eval(), name="model", serialization_format="pickle",
                                 pip_requirements=["torch"],
                                 input_example=np.zeros((1, 3, 32, 32), np.float32))
    del torch
    return run.info.run_id


KFP_ARTIFACT = "minio://mlpipeline/v2/artifacts/gourmetgram-training/run-1/build-drift-detector/served_bundle"


def test_register_copies_the_bundle_to_the_models_bucket(s3, logged_run, tmp_path, capsys):
    from components.steps import register_step
    from gourmetgram import registry
    from gourmetgram.constants import PRODUCTION, STAGING
    from gourmetgram.manifests import find_inference_service, load_manifest, manifest_path
    from gourmetgram.rollout.kube import canary_patch

    bundle = _fake_bundle(tmp_path / "served", marker=b"v1")
    outcome = register_step(logged_run, KFP_ARTIFACT, bundle, {"size_bytes": 4000}, STAGING,
                            "gourmetgram-food11", "food11", 0.9, "fp123")
    version = outcome.version
    uri = f"s3://{BUCKET}/food11/{version}"
    assert outcome.bundle_uri == uri and outcome.triton_repo == f"{uri}/triton"
    assert outcome.pipeline_artifact == KFP_ARTIFACT  # recorded, never served from
    assert f"food11/{version}/triton/food11/1/model.onnx" in _keys(s3, BUCKET)
    # the registry points the stage at the version, whose tag is the models-bucket URI
    assert registry.version_for(STAGING) == version
    info = registry.get_version(version)
    assert info.tags[registry.TAG_BUNDLE] == uri and info.tags["triton.repo"] == f"{uri}/triton"
    assert "minio://" not in " ".join(info.tags.values())
    # `rollout canary --version N` resolves the version to that URI, which the cluster patch takes
    assert registry.bundle_for(version) == uri
    isvc = find_inference_service(load_manifest(manifest_path(PRODUCTION)))
    patch = canary_patch(isvc, registry.bundle_for(version), 10, str(version))
    assert patch["spec"]["predictor"]["model"]["storageUri"] == uri
    assert f"copied 3 files of the served bundle to {uri}" in capsys.readouterr().out


def test_register_with_the_store_down_moves_no_alias(logged_run, tmp_path, monkeypatch):
    from components.steps import register_step
    from gourmetgram import registry
    from gourmetgram.constants import STAGING

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(DependencyUnavailable, match="object store"):
        register_step(logged_run, KFP_ARTIFACT, _fake_bundle(tmp_path / "b"), {}, STAGING,
                      "gourmetgram-food11", "food11", 0.9, "fp")
    assert registry.version_for(STAGING) is None  # never an alias on a version without its bundle


def test_mlflow_is_required_in_a_pipeline_pod(monkeypatch, tmp_path):
    from gourmetgram.tracking import KFP_POD_ENV, tracking_uri

    monkeypatch.setenv("GOURMETGRAM_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(KFP_POD_ENV, raising=False)
    assert tracking_uri().startswith("sqlite:///")  # locally sqlite stays the default
    monkeypatch.setenv(KFP_POD_ENV, "gourmetgram-training-abc-123")
    with pytest.raises(BadInput, match="Secret 'mlflow-credentials'"):
        tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.gourmetgram-platform:5000")
    assert tracking_uri() == "http://mlflow.gourmetgram-platform:5000"


# --- s3:// datasets and the dataset version -------------------------------------------------

def _upload_dataset(url: str, bucket: str, prefix: str, root: Path) -> None:
    client = _boto(url)
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")


def test_ingest_reads_an_s3_dataset_and_its_version_keys_the_cache(s3, demo_dataset, tmp_path):
    from components.steps import ingest_step
    from gourmetgram.data.ingest import source_version

    _upload_dataset(s3, "datasets", "food11-demo", demo_dataset)
    uri = "s3://datasets/food11-demo"
    local = ingest_step(str(demo_dataset), tmp_path / "local")
    remote = ingest_step(uri, tmp_path / "remote")
    assert remote.fingerprint == local.fingerprint  # the same bytes, image by image
    assert remote.images == local.images and remote.source == uri
    # the version: stable while nothing changes, new when one object does
    v1 = source_version(uri)
    assert v1.startswith("s3:") and source_version(uri) == v1
    first = sorted(_keys(s3, "datasets", "food11-demo/"))[0]
    _boto(s3).put_object(Bucket="datasets", Key=first, Body=b"changed")
    assert source_version(uri) != v1


def test_ingest_reads_an_s3_archive(s3, demo_dataset, tmp_path):
    from components.steps import ingest_step

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(p for p in demo_dataset.rglob("*") if p.is_file()):
            zf.write(path, f"food11/{path.relative_to(demo_dataset).as_posix()}")
    client = _boto(s3)
    client.create_bucket(Bucket="archives")
    client.put_object(Bucket="archives", Key="food11.zip", Body=buf.getvalue())
    info = ingest_step("s3://archives/food11.zip", tmp_path / "from-zip")
    assert info.fingerprint == ingest_step(str(demo_dataset), tmp_path / "local").fingerprint


def test_bad_s3_datasets_are_dataset_errors(s3, tmp_path):
    from components.steps import ingest_step
    from gourmetgram.data.ingest import source_version

    for uri in ("s3://no-such-bucket/x", "s3://archives-missing/food11.zip"):
        with pytest.raises(DatasetError, match="no-such-bucket|archives-missing"):
            ingest_step(uri, tmp_path / "x")
    with pytest.raises(DatasetError, match="nothing under"):
        source_version("s3://no-such-bucket/x")


def test_local_dataset_version_follows_the_files(tmp_path):
    from gourmetgram.data.ingest import source_version

    (tmp_path / "d" / "train").mkdir(parents=True)
    (tmp_path / "d" / "train" / "a.jpg").write_bytes(b"1")
    v1 = source_version(str(tmp_path / "d"))
    assert v1 == source_version(str(tmp_path / "d"))
    (tmp_path / "d" / "train" / "b.jpg").write_bytes(b"2")
    assert source_version(str(tmp_path / "d")) != v1
    with pytest.raises(DatasetError, match="does not exist"):
        source_version(str(tmp_path / "missing"))


def test_register_on_a_local_run_publishes_the_bundle_locally(logged_run, tmp_path, monkeypatch):
    """kfp.local (the artifact is a path): no object store involved, the tag is the local copy."""
    from components.steps import register_step
    from gourmetgram import registry
    from gourmetgram.constants import STAGING

    for key in objectstore.ENDPOINT_ENV:
        monkeypatch.delenv(key, raising=False)  # proves the store is not needed
    bundle = _fake_bundle(tmp_path / "served")
    outcome = register_step(logged_run, str(bundle), bundle, {}, STAGING, "gourmetgram-food11", "food11", 0.9, "fp")
    local = tmp_path / "home" / "models" / logged_run
    assert outcome.bundle_uri == str(local) and (local / "triton" / "food11" / "1" / "model.onnx").is_file()
    assert registry.version_for(STAGING) == outcome.version
    assert registry.bundle_for(STAGING) == str(local)


# --- the staging gate's load-test images (issue 24): the registered dataset's evaluation split --

def test_staging_gate_takes_the_registered_datasets_evaluation_split(s3, demo_dataset, tmp_path):
    from components.steps.staging import resolve_images

    _upload_dataset(s3, "gate-datasets", "food11", demo_dataset)
    # the dataset root the training run ingested -> only its evaluation split
    folder = resolve_images("s3://gate-datasets/food11", tmp_path / "root")
    got = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    want = sorted(p.relative_to(demo_dataset / "evaluation").as_posix()
                  for p in (demo_dataset / "evaluation").rglob("*") if p.is_file())
    assert got == want and got
    # a prefix of images (no splits) -> everything under it
    folder = resolve_images("s3://gate-datasets/food11/validation/", tmp_path / "prefix")
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == sorted(
        p.name for p in (demo_dataset / "validation").rglob("*") if p.is_file())
    # a local folder stays a local folder (kfp.local runs, issue 20)
    assert resolve_images(str(demo_dataset / "evaluation"), tmp_path / "local") == demo_dataset / "evaluation"


def test_staging_gate_refuses_an_empty_prefix_before_any_load(s3, tmp_path):
    from components.steps import loadtest_step

    with pytest.raises(BadInput, match="nothing under s3://gate-datasets/nope"):
        loadtest_step("http://127.0.0.1:9", "s3://gate-datasets/nope", tmp_path / "out", run_time="5s", users=1)
    assert not (tmp_path / "out").exists()  # no load test started


def test_data_upload_puts_a_dataset_where_the_pipeline_ingests_it(s3, demo_dataset, tmp_path, capsys):
    """`gourmetgram data upload` (first_run.sh's first step): layout checked, every file copied."""
    from gourmetgram_app.cli.main import main

    assert main(["data", "upload", str(demo_dataset), "s3://upload-datasets/food11"]) == 0
    files = [p for p in demo_dataset.rglob("*") if p.is_file()]
    assert len(_keys(s3, "upload-datasets", "food11/")) == len(files)
    assert f"uploaded {len(files)} files" in capsys.readouterr().out
    assert main(["data", "upload", str(demo_dataset), "/tmp/not-s3"]) == 2
    (tmp_path / "flat").mkdir()
    assert main(["data", "upload", str(tmp_path / "flat"), "s3://upload-datasets/bad"]) == 2
    assert not _keys(s3, "upload-datasets", "bad/")

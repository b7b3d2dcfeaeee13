"""The cluster's MLflow, run locally: ``mlflow server`` with its backend store on PostgreSQL (a
throwaway server) and its artifacts in S3 (moto's S3 server, standing in for MinIO), proxied by
the server as on the cluster (``--artifacts-destination s3://... --serve-artifacts``,
infra/k8s/platform/mlflow.yaml). The training pipeline (kfp.local, the demo config cut to one
epoch on a third of the demo data, its gates opened: what is under test is the registry, not
the model) logs and
registers through it with ``MLFLOW_TRACKING_URI=http://...``, the registered version's model
lands in the bucket, and the registry module reads and moves its stages over REST."""

from __future__ import annotations

import os
import sys

import pytest
import yaml
from helpers import S3_CREDENTIALS, free_port, moto_s3, spawn, stop, wait_http

from gourmetgram.constants import PRODUCTION, REGISTERED_MODEL_NAME, REPO_ROOT, STAGING

pytestmark = pytest.mark.slow
BUCKET = "mlflow-artifacts"


def _cluster_args() -> tuple[str, list[str]]:
    """The backend store URI's scheme and the artifact arguments of the cluster's MLflow Deployment."""
    docs = [d for d in yaml.safe_load_all((REPO_ROOT / "infra" / "k8s" / "platform" / "mlflow.yaml").read_text()) if d]
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    backend = next(a for a in args if a.startswith("--backend-store-uri="))
    artifacts = [a for a in args if a.startswith(("--artifacts-destination=", "--serve-artifacts"))]
    assert artifacts == [f"--artifacts-destination=s3://{BUCKET}", "--serve-artifacts"], artifacts
    return backend.split("=", 1)[1].split("://", 1)[0], artifacts


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """``mlflow server`` on PostgreSQL + S3 with the cluster's arguments; yields its URL and
    moto's, with MLFLOW_TRACKING_URI, the S3 credentials and a private GOURMETGRAM_HOME set for
    the module."""
    import boto3

    root = tmp_path_factory.mktemp("mlflow-server")
    scheme, artifacts = _cluster_args()
    database = postgres.create_database(driver=scheme)  # the URL form the cluster's server takes
    with moto_s3(root / "moto.log") as s3_url, pytest.MonkeyPatch.context() as mp:
        for key, value in S3_CREDENTIALS.items():
            mp.setenv(key, value)
        boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = root / "mlflow.log"
        env = dict(os.environ, MLFLOW_S3_ENDPOINT_URL=s3_url)
        proc = spawn([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                      "--workers", "1", "--backend-store-uri", database, *artifacts], log, env=env)
        try:
            wait_http(f"{url}/health", proc, log, timeout_s=300)
            mp.setenv("MLFLOW_TRACKING_URI", url)
            mp.setenv("GOURMETGRAM_HOME", str(root / "home"))
            mp.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)  # clients need no S3 access: the server proxies
            yield {"url": url, "s3": s3_url, "database": database, "root": root}
        finally:
            stop(proc)
            postgres.drop_database(database)


def _one_epoch_config(root) -> str:
    doc = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())
    doc["train"].update(epochs=1, patience=1)
    doc["evaluation"] = {"min_overall_accuracy": 0.0, "min_per_class_accuracy": 0.0, "batch_size": 64,
                         "differential": {"stage": PRODUCTION, "margin": 1.0,
                                          "gated_sets": ["original", "production"], "min_images": 1}}
    path = root / "one-epoch.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_the_pipeline_registers_through_an_mlflow_server_on_postgresql_with_s3_artifacts(
        mlflow_server, small_demo_dataset, capsys):
    import boto3
    import psycopg2
    from mlflow import MlflowClient

    from gourmetgram import registry
    from gourmetgram_app.cli.main import main

    code = main(["pipeline", "run", "--dataset", str(small_demo_dataset), "--config",
                 _one_epoch_config(mlflow_server["root"])])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "exported and registered" in out
    # the registry module over REST: the new version has the staging alias and its tags
    version = registry.version_for(STAGING)
    assert version is not None and registry.stages()[STAGING] == version
    info = registry.get_version(version)
    assert info.tags[registry.TAG_EVALUATION_PASSED] == "true" and info.run_id
    registry.set_stage(PRODUCTION, version)
    assert registry.bundle_for(PRODUCTION) == info.tags[registry.TAG_BUNDLE]
    assert [v.version for v in registry.list_versions()] == [version]
    # the run, the model version and its alias are rows in PostgreSQL
    dsn = mlflow_server["database"].replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT version FROM model_versions WHERE name = %s", (REGISTERED_MODEL_NAME,))
        assert cur.fetchall() == [(version,)]
        cur.execute("SELECT alias FROM registered_model_aliases WHERE name = %s ORDER BY alias",
                    (REGISTERED_MODEL_NAME,))
        assert cur.fetchall() == [(PRODUCTION,), (STAGING,)]
    # the registered version's model files are objects in the bucket, under its artifact path
    source = MlflowClient().get_model_version(REGISTERED_MODEL_NAME, str(version)).source
    model_id = source.split("/")[-1] if source.startswith("models:/") else None
    logged = MlflowClient().get_logged_model(model_id) if model_id else None
    location = logged.artifact_location if logged else source
    assert location.startswith("mlflow-artifacts:/"), location  # served by the server, not a local path
    prefix = location.split("mlflow-artifacts:/", 1)[1].strip("/")
    s3 = boto3.client("s3", endpoint_url=mlflow_server["s3"], region_name="us-east-1")
    keys = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])}
    assert f"{prefix}/MLmodel" in keys, sorted(keys)
    weights = [k for k, size in keys.items() if k.endswith((".pth", ".pt", ".pkl")) and size > 100_000]
    assert weights, sorted(keys)
    # and nothing of MLflow's went to a local folder
    assert not (mlflow_server["root"] / "home" / "mlartifacts").exists()

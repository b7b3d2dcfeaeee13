"""Every environment variable the core and the app layer read, in one typed settings object.

What differs per machine or holds a secret (where state goes, which database, the S3 endpoint,
tokens) comes from the environment, never from a config file in git. Each field names its
variable (the alias); a value is read when :func:`environment` is called, so a variable set
later (by a test, by the stack for its children) is seen. An empty value counts as unset.

    from gourmetgram.environment import environment
    environment().loop_db   # $GOURMETGRAM_LOOP_DB or None
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _var(name: str, doc: str):
    return Field(None, alias=name, description=doc)


class Environment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    # where state goes, and MLflow
    home: str | None = _var("GOURMETGRAM_HOME", "the local state folder (default ./.gourmetgram)")
    mlflow_tracking_uri: str | None = _var("MLFLOW_TRACKING_URI", "the MLflow server (default: a sqlite file in the home)")
    kfp_pod_name: str | None = _var("KFP_POD_NAME", "set by KFP in every pipeline pod")
    kfp_token: str | None = _var("KFP_TOKEN", "bearer token for the KFP API")
    git_commit: str | None = _var("GIT_COMMIT", "the code version a registered model records")
    # the loop's storage
    loop_db: str | None = _var("GOURMETGRAM_LOOP_DB", "SQLAlchemy URL of the loop store (default sqlite in the home)")
    loop_db_sync: str | None = _var("GOURMETGRAM_LOOP_DB_SYNC", "SQLite synchronous mode: NORMAL (default) or FULL")
    loop_objects: str | None = _var("GOURMETGRAM_LOOP_OBJECTS", "object store URL: file:///dir or s3://bucket/prefix")
    s3_endpoint: str | None = _var("GOURMETGRAM_S3_ENDPOINT_URL", "the S3 endpoint (MinIO) of the loop's store")
    aws_endpoint: str | None = _var("AWS_ENDPOINT_URL", "the S3 endpoint KServe's storage initializer reads")
    mlflow_s3_endpoint: str | None = _var("MLFLOW_S3_ENDPOINT_URL", "the S3 endpoint MLflow's artifacts use")
    models_bucket: str | None = _var("GOURMETGRAM_MODELS_BUCKET", "the bucket registered bundles go to")
    # Label Studio
    label_studio_url: str | None = _var("LABEL_STUDIO_URL", "Label Studio's URL")
    label_studio_api_key: str | None = _var("LABEL_STUDIO_API_KEY", "Label Studio's API token")
    label_studio_username: str | None = _var("LABEL_STUDIO_USERNAME", "Label Studio's first user")
    label_studio_password: str | None = _var("LABEL_STUDIO_PASSWORD", "that user's password")
    label_studio_bin: str | None = _var("GOURMETGRAM_LABEL_STUDIO_BIN", "the label-studio executable")
    # tokens of the local control paths
    control_token: str | None = _var("GOURMETGRAM_CONTROL_TOKEN", "the gateway's control token")
    detector_token: str | None = _var("GOURMETGRAM_DETECTOR_TOKEN", "the drift detector's ingest token")
    retrain_token: str | None = _var("GOURMETGRAM_RETRAIN_TOKEN", "the retrain receiver's bearer token")
    retrain_reasons: str | None = _var("GOURMETGRAM_RETRAIN_REASONS", "why the receiver started a job (set for it)")

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def s3_endpoint_url(self) -> str | None:
        """The first S3 endpoint set: the loop's own, KServe's, MLflow's."""
        return self.s3_endpoint or self.aws_endpoint or self.mlflow_s3_endpoint


def environment() -> Environment:
    """The environment now, typed."""
    return Environment.model_validate(dict(os.environ))

"""What every pipeline component shares: the image, the decorator, the cluster secrets.

Components are KFP v2 *lightweight* Python components: KFP ships the function's source
and runs it with the image's interpreter. ``install_kfp_package=False`` because the image
(``components/Dockerfile``) already has kfp and this project installed; the same setting
lets ``kfp.local.SubprocessRunner(use_venv=False)`` run them with the current interpreter,
no pip, no network.
"""

from __future__ import annotations

import functools
import os

from kfp import dsl

from gourmetgram.images import image

# The pipeline image, built from components/Dockerfile (python 3.11 + this project), under the
# one image reference (charts/gourmetgram/images.env, shared with the chart and the install).
# Override for one compile: GOURMETGRAM_PIPELINE_IMAGE=... or `gourmetgram pipeline compile --image ...`.
PIPELINE_IMAGE_NAME = "pipeline-python3.11"
DEFAULT_PIPELINE_IMAGE = image(PIPELINE_IMAGE_NAME)
PIPELINE_IMAGE = os.environ.get("GOURMETGRAM_PIPELINE_IMAGE", DEFAULT_PIPELINE_IMAGE)

# Kubernetes Secrets the cluster steps read as environment variables. Required on the
# cluster (a pod without them does not start, naming the Secret) so no step silently falls
# back to a per-pod sqlite MLflow or to AWS; infra/scripts/install_platform.sh creates both in
# the `kubeflow` namespace from generated or exported credentials. Their values never live in git.
MLFLOW_SECRET = "mlflow-credentials"
MLFLOW_SECRET_ENV = {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"}
OBJECT_STORE_SECRET = "object-store-credentials"
OBJECT_STORE_SECRET_ENV = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",  # gourmetgram.objectstore (models bucket, s3:// datasets)
    "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL",  # MLflow's artifact client
    "GOURMETGRAM_MODELS_BUCKET": "GOURMETGRAM_MODELS_BUCKET",
}



def with_secrets(task):
    """Both Secrets as the task's environment, required (see above). kfp.local ignores it."""
    from kfp import kubernetes

    kubernetes.use_secret_as_env(task, MLFLOW_SECRET, MLFLOW_SECRET_ENV, optional=False)
    kubernetes.use_secret_as_env(task, OBJECT_STORE_SECRET, OBJECT_STORE_SECRET_ENV, optional=False)
    return task


component = functools.partial(dsl.component, base_image=PIPELINE_IMAGE, install_kfp_package=False)

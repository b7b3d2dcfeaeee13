"""Names and ports, defined once and imported everywhere."""

from pathlib import Path

# Stages a model moves through; each is also an MLflow registry alias.
STAGING = "staging"
CANARY = "canary"
PRODUCTION = "production"
STAGES = (STAGING, CANARY, PRODUCTION)

# The Triton model name; the transformer's --model_name must equal it.
MODEL_NAME = "food11"
# The MLflow registered model name.
REGISTERED_MODEL_NAME = "gourmetgram-food11"
# KServe's name for the transformer container collocated in the predictor pod
# (kserve constants.TransformerContainerName): each revision is a transformer + Triton pair.
TRANSFORMER_CONTAINER = "transformer-container"
# InferenceService names per stage.
ISVC_NAMES = {STAGING: "food11-staging", PRODUCTION: "food11"}
# The cluster's shadow InferenceService (chart values `shadow:`): Istio mirrors production to it.
SHADOW_ISVC_NAME = "food11-shadow"
# The registered model version a revision serves: an annotation on the predictor (so on each
# revision's pods), which KServe's logger copies into every event (logger.metadataAnnotations).
MODEL_VERSION_ANNOTATION = "gourmetgram.io/model-version"

# Dataset layout (Food-11): <root>/<split>/class_XX/*.jpg
SPLITS = ("training", "validation", "evaluation")
CLASS_NAMES_FILE = "classes.txt"

# Model architectures gourmetgram.model builds (configs: model.arch).
ARCHITECTURES = ("mobilenet_v2",)

# Tensor names in the exported ONNX model / Triton config.
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
FEATURES_NAME = "features"

# Local runtime ports (cluster ports come from the manifests). Bound to localhost.
HOST = "127.0.0.1"
TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
TRANSFORMER_HTTP_PORT = 8080
TRANSFORMER_GRPC_PORT = 8081
GATEWAY_PORT = 8090
DETECTOR_PORT = 8070
CAPTURE_PORT = 8071  # capture sink + feedback API (closing the loop)
# The capture sink's read-only loop summary (accuracy by version, labelling backlog): what the
# web app's operator page reads.
LOOP_SUMMARY_PATH = "/summary"
# The feedback API (POST /v1/feedback on the public API, to the capture sink): JSON only, so a
# cross-site page cannot send it without a CORS preflight (which nothing here grants).
FEEDBACK_PATH = "/v1/feedback"
FEEDBACK_CONTENT_TYPE = "application/json"
# A caller allowed to name its users (configs/loop.yaml feedback.client_id_from: the web app)
# names the one a feedback comes from in this header; the daily correction cap counts by it.
CLIENT_ID_HEADER = "X-Client-Id"
# A captured photo's small JPEG, read-only, for the operator page: <capture sink>/thumbnails/<sample id>
SAMPLE_THUMBNAIL_PATH = "/thumbnails"
BROKER_PORT = 8060  # local stand-in for the Knative Broker (logger fan-out)
LABEL_STUDIO_PORT = 8085
PROMETHEUS_PORT = 9090
RETRAIN_RECEIVER_PORT = 8073  # Alertmanager webhook -> retrain trigger receiver
ALERTMANAGER_PORT = 9093  # the local stack's Alertmanager (Debian's prometheus-alertmanager)
# The web app (user page and read-only operator page), a client of the gateway's public API.
WEBAPP_PORT = 8050

# Where local runs keep their state, relative to the working directory unless
# GOURMETGRAM_HOME is set.
DEFAULT_HOME = Path(".gourmetgram")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"

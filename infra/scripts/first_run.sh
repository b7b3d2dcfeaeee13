#!/usr/bin/env bash
# The first run on a fresh cluster, in order, each step waited for: the dataset into MinIO ->
# training run 1 (registers version 1: the bundle staging.yaml and production.yaml serve) ->
# training run 2, uncached (version 2: the canary's bundle) -> the InferenceServices applied
# and Ready -> the smoke test (canary of version 2, analysis, promote). Run it after
# install_platform.sh, from the repository root's environment (the `gourmetgram` CLI).
#
#   export KUBECONFIG=~/gourmetgram-kubeconfig DOMAIN=<ip>.sslip.io
#   infra/scripts/first_run.sh /data/Food-11 [image.jpg]
#
# The MinIO keys are read from the cluster (Secret minio-root), never printed. Exit codes:
# 0 ok, 1 a check failed (a training run failed, a bundle is missing, the smoke test failed),
# 2 bad input, 3 a dependency unavailable (the cluster, a port-forward).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DATASET=${1:-}
IMAGE=${2:-}
PLATFORM_NS=gourmetgram-platform
DATASET_URI=${DATASET_URI:-s3://gourmetgram-datasets/food11}
CONFIG=${CONFIG:-food11}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-7200}
MODELS_BUCKET=${MODELS_BUCKET:-gourmetgram-models}

die() { echo "FAIL: $2" >&2; exit "$1"; }
step() { echo; echo "== $*"; }
for tool in kubectl python3 gourmetgram; do
  command -v "$tool" >/dev/null || die 3 "$tool not found on PATH"
done
[[ -n "$DATASET" && -d "$DATASET" ]] || die 2 "usage: first_run.sh DATASET_FOLDER [image.jpg] (a Food-11 folder: training/ validation/ evaluation/)"
[[ -n "${DOMAIN:-}" ]] || die 2 "set DOMAIN (the one install_platform.sh configured, e.g. <ip>.sslip.io)"
kubectl version >/dev/null 2>&1 || die 3 "the cluster is not reachable (KUBECONFIG, SSH tunnel?)"

# Local ports for the port-forwards (kubectl picks none itself).
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
forwards=()
cleanup() { for pid in "${forwards[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
forward() {  # forward VAR NAMESPACE SERVICE REMOTE_PORT: sets VAR to the local URL once it connects
  local port
  port=$(free_port)
  kubectl -n "$2" port-forward "svc/$3" "$port:$4" >/dev/null 2>&1 &
  forwards+=($!)  # in this shell (not a $(...) subshell), so the EXIT trap stops it
  for _ in $(seq 1 30); do
    if python3 -c 'import socket,sys;socket.create_connection(("127.0.0.1",int(sys.argv[1])),1)' "$port" 2>/dev/null; then
      printf -v "$1" 'http://127.0.0.1:%s' "$port"
      return 0
    fi
    sleep 1
  done
  die 3 "the port-forward to $2/svc/$3:$4 did not open in 30 s (kubectl -n $2 get svc $3)"
}
secret() { kubectl -n "$PLATFORM_NS" get secret minio-root -o "jsonpath={.data.$1}" | base64 -d; }

step "1. the dataset to $DATASET_URI (MinIO through a port-forward)"
forward AWS_ENDPOINT_URL "$PLATFORM_NS" minio 9000
AWS_ACCESS_KEY_ID=$(secret rootUser)
AWS_SECRET_ACCESS_KEY=$(secret rootPassword)
export AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
gourmetgram data upload "$DATASET" "$DATASET_URI"

step "2. training run 1 on Kubeflow Pipelines (registers version 1, the bundle the manifests serve)"
forward KFP kubeflow ml-pipeline 8888
gourmetgram pipeline submit --host "$KFP" --run-name gourmetgram-first-1 --wait "$RUN_TIMEOUT_S" \
  --param "dataset_uri=$DATASET_URI" --param "config=$CONFIG" || die 1 "training run 1 did not succeed"

step "3. training run 2, uncached (version 2: the canary's bundle)"
gourmetgram pipeline submit --host "$KFP" --run-name gourmetgram-first-2 --no-cache --wait "$RUN_TIMEOUT_S" \
  --param "dataset_uri=$DATASET_URI" --param "config=$CONFIG" || die 1 "training run 2 did not succeed"

step "4. the bundles the manifests and the canary name are in the models bucket"
manifest_bundles=$(python3 - "$ROOT" <<'PY'
import sys, yaml
for stage in ("staging", "production"):
    for doc in yaml.safe_load_all(open(f"{sys.argv[1]}/inference_services/{stage}.yaml")):
        if doc and doc.get("kind") == "InferenceService":
            print(doc["spec"]["predictor"]["model"]["storageUri"])
PY
)
CANARY_BUNDLE=${CANARY_BUNDLE:-s3://$MODELS_BUCKET/food11/2}
for bundle in $(echo "$manifest_bundles" | sort -u) "$CANARY_BUNDLE"; do
  python3 -c 'import sys; from gourmetgram import objectstore; sys.exit(0 if objectstore.exists(sys.argv[1] + "/model_spec.json") else 1)' \
    "$bundle" || die 1 "$bundle/model_spec.json is not in the object store: did both training runs register (versions 1 and 2)?"
  echo "bundle $bundle: present"
done

step "5. the InferenceServices (staging, then production) and Ready"
kubectl apply -f "$ROOT/inference_services/staging.yaml"
kubectl -n gourmetgram-staging wait --for=condition=Ready inferenceservice/food11-staging --timeout=900s
export CANARY_BUNDLE
step "6. the smoke test (production: apply, Ready, predict, canary of version 2, analysis, promote)"
"$ROOT/infra/scripts/smoke_cluster.sh" ${IMAGE:+"$IMAGE"}
echo; echo "first run done: staging and production serve; production runs version 2 after the promote"

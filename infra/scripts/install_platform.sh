#!/usr/bin/env bash
# Install the serving platform on the k3s cluster, every version pinned in infra/versions.env:
# NVIDIA driver check -> cert-manager -> kube-prometheus-stack -> NVIDIA GPU operator (GPU
# time-slicing from infra/capacity.env; the GPU slots and every node's driver checked) ->
# GourmetGram's images checked and pre-pulled on every node (charts/gourmetgram/images.env) ->
# Istio -> Knative Serving (+ net-istio; ConfigMaps merge-patched once its webhook is ready; the
# queue-proxy that aggregates Triton's metrics) -> Knative Eventing (the logger's Broker) ->
# KServe (Knative mode) -> MinIO -> MLflow on PostgreSQL (+ the loop database) -> Kubeflow
# Pipelines (standalone) -> the GourmetGram namespaces with their Secrets, and the pipelines'
# Secrets. It applies no InferenceService: infra/scripts/first_run.sh does, once a training run
# has registered the bundles they serve.
#
#   export KUBECONFIG=~/gourmetgram-kubeconfig       # see infra/README.md
#   export NODE_IP=<server floating ip>              # or DOMAIN=models.example.org
#   infra/scripts/install_platform.sh
#
# Credentials are never in git: the object store's keys are AWS_ACCESS_KEY_ID /
# AWS_SECRET_ACCESS_KEY from the environment, else the ones a previous run stored in the
# cluster, else generated here; PostgreSQL's likewise (MLFLOW_DB_PASSWORD). AWS_ENDPOINT_URL
# defaults to the in-cluster MinIO; set it to use another S3 endpoint for the models bucket.
# A private image registry: REGISTRY_USERNAME / REGISTRY_PASSWORD become the pull Secret
# `gourmetgram-registry` on the ServiceAccounts that pull GourmetGram's images. BUILD_IMAGES=1
# builds and pushes the images first (scripts/build_images.sh; needs docker buildx).
#
# Exit codes: 0 ok, 1 a check failed (NVIDIA driver too old, too few GPU slots), 2 bad input
# (missing tool or variable), 3 a dependency unavailable (the node cannot be reached for
# nvidia-smi, an image cannot be pulled).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
INFRA="$HERE/.."
# shellcheck source=SCRIPTDIR/../versions.env
source "$INFRA/versions.env"
# shellcheck source=SCRIPTDIR/../capacity.env
source "$INFRA/capacity.env"
# shellcheck source=SCRIPTDIR/../../charts/gourmetgram/images.env
source "$INFRA/../charts/gourmetgram/images.env"

die() { echo "error: $2" >&2; exit "$1"; }
step() { echo "== $*"; }
# A value a previous install stored in a Secret (empty when there is none): re-running the
# install keeps the credentials the running MinIO/PostgreSQL were started with.
stored() { kubectl -n "$1" get secret "$2" -o "jsonpath={.data.$3}" 2>/dev/null | base64 -d 2>/dev/null || true; }
generate() { od -An -N20 -tx1 /dev/urandom | tr -d ' \n'; }
# Create or update a Secret from NAME=VALUE pairs without the values touching argv logs or git.
apply_secret() {
  local ns=$1 name=$2; shift 2
  local args=()
  for pair in "$@"; do args+=(--from-literal="$pair"); done
  kubectl -n "$ns" create secret generic "$name" "${args[@]}" --dry-run=client -o yaml | kubectl apply -f -
}

for tool in kubectl helm; do
  command -v "$tool" >/dev/null || die 2 "$tool not found on PATH (helm $HELM_VERSION, kubectl for Kubernetes ${K3S_VERSION%%+*})"
done
# `kubectl apply -k github.com/...` (Kubeflow Pipelines) clones with the operator's git.
command -v "${GIT:-git}" >/dev/null || die 2 "git not found on PATH: kubectl apply -k fetches Kubeflow Pipelines' manifests with it"
[[ "$GPU_SHARES" =~ ^[1-9][0-9]?$ ]] || die 2 "GPU_SHARES must be 1..99 (infra/capacity.env), got '$GPU_SHARES'"
# One image pull Secret, only when credentials are given (public images need none).
PULL_SECRET=gourmetgram-registry
if [[ -n "${REGISTRY_USERNAME:-}" || -n "${REGISTRY_PASSWORD:-}" ]]; then
  [[ -n "${REGISTRY_USERNAME:-}" && -n "${REGISTRY_PASSWORD:-}" ]] || die 2 "set both REGISTRY_USERNAME and REGISTRY_PASSWORD (or neither)"
  USE_PULL_SECRET=1
else
  USE_PULL_SECRET=0
fi
# Create the pull Secret in namespace $1 and attach it to its ServiceAccounts $2.. (no-op
# without credentials): every pod of those accounts then pulls with it.
pull_secret() {
  local ns=$1 account; shift
  (( USE_PULL_SECRET )) || return 0
  kubectl -n "$ns" create secret docker-registry "$PULL_SECRET" --docker-server="${IMAGE_REGISTRY%%/*}" \
    --docker-username="$REGISTRY_USERNAME" --docker-password="$REGISTRY_PASSWORD" --dry-run=client -o yaml \
    | kubectl apply -f -
  for account in "$@"; do
    kubectl -n "$ns" patch serviceaccount "$account" --type merge \
      -p "{\"imagePullSecrets\":[{\"name\":\"$PULL_SECRET\"}]}"
  done
}
PLATFORM_NS=gourmetgram-platform
MINIO_URL="http://minio.${PLATFORM_NS}.svc.cluster.local:9000"
MLFLOW_URL="http://mlflow.${PLATFORM_NS}.svc.cluster.local:5000"
MODELS_BUCKET=${MODELS_BUCKET:-gourmetgram-models}
LOOP_DB_NAME=gourmetgram_loop
# PostgreSQL's password goes into database URLs unquoted (MLflow's backend store, the loop
# database): refuse one that would break them before anything is installed.
if [[ -n "${MLFLOW_DB_PASSWORD:-}" && ! "$MLFLOW_DB_PASSWORD" =~ ^[A-Za-z0-9._~-]+$ ]]; then
  die 2 "MLFLOW_DB_PASSWORD may hold only letters, digits and . _ ~ - (it is part of a database URL)"
fi
# KServe's storage initializer, the detector and the pipeline steps read AWS_ENDPOINT_URL; there
# is no AWS default anywhere (a missing endpoint would silently send every download to AWS).
AWS_ENDPOINT_URL=${AWS_ENDPOINT_URL:-$MINIO_URL}
[[ "$AWS_ENDPOINT_URL" =~ ^(https?)://([^/]+)/?$ ]] || die 2 "AWS_ENDPOINT_URL must look like http[s]://host[:port], got '$AWS_ENDPOINT_URL'"
S3_ENDPOINT=${BASH_REMATCH[2]}
if [[ ${BASH_REMATCH[1]} == https ]]; then S3_USE_HTTPS=1; else S3_USE_HTTPS=0; fi
S3_VERIFY_SSL=${S3_VERIFY_SSL:-$S3_USE_HTTPS}
# External route: Knative's default domain (svc.cluster.local) makes every service cluster-local.
if [[ -z "${DOMAIN:-}" ]]; then
  [[ -n "${NODE_IP:-}" ]] || die 2 "set NODE_IP (the server's floating IP, for <ip>.sslip.io) or DOMAIN (a DNS name pointing at it)"
  DOMAIN="${NODE_IP}.sslip.io"
fi
[[ "$DOMAIN" =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ && "$DOMAIN" == *.* ]] || die 2 "DOMAIN '$DOMAIN' is not a DNS name"

# --- the node's NVIDIA driver against Triton's CUDA (before anything is installed) ----------
# NVIDIA_SMI runs nvidia-smi where the GPU is: over SSH by default, or `nvidia-smi` when this
# script runs on the node itself.
read -r -a nvidia_smi <<< "${NVIDIA_SMI:-ssh -o BatchMode=yes cc@${NODE_IP:-$DOMAIN} nvidia-smi}"
step "NVIDIA driver (Triton $TRITON_IMAGE_TAG needs >= $MIN_NVIDIA_DRIVER)"
if ! drivers=$("${nvidia_smi[@]}" --query-gpu=driver_version --format=csv,noheader); then
  die 3 "cannot run '${nvidia_smi[*]}' on the GPU node; set NVIDIA_SMI to a command that reaches it"
fi
[[ -n "$drivers" ]] || die 1 "nvidia-smi lists no GPU: the node has no working NVIDIA driver"
while read -r driver; do
  [[ "$driver" =~ ^([0-9]+)\. ]] || die 1 "nvidia-smi reported an unreadable driver version '$driver'"
  if (( BASH_REMATCH[1] < MIN_NVIDIA_DRIVER )); then
    die 1 "NVIDIA driver $driver is older than $MIN_NVIDIA_DRIVER, which Triton $TRITON_IMAGE_TAG (CUDA 12.6, >= 560) and the pipeline image's torch (CUDA 13.0, >= 580) need; use a newer CC-Ubuntu CUDA image"
  fi
  echo "driver $driver ok"
done <<< "$drivers"

step "cert-manager $CERT_MANAGER_VERSION"
kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
kubectl -n cert-manager rollout status deploy/cert-manager-webhook --timeout=300s

# Before the GPU operator: the DCGM exporter's ServiceMonitor needs prometheus-operator's CRD.
step "kube-prometheus-stack $KUBE_PROMETHEUS_STACK_VERSION"
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update >/dev/null
helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
  --version "$KUBE_PROMETHEUS_STACK_VERSION" -n monitoring --create-namespace --wait --timeout 15m \
  -f "$INFRA/k8s/kube-prometheus-stack-values.yaml"
kubectl wait --for=condition=Established --timeout=120s crd/servicemonitors.monitoring.coreos.com

step "NVIDIA GPU operator $GPU_OPERATOR_VERSION ($GPU_SHARES nvidia.com/gpu slot(s) per GPU)"
# The device plugin's config (k8s-device-plugin format): GPU_SHARES time-slices per GPU, each
# pod asking for one slot; 1 = no sharing. It must exist before the plugin starts.
time_slicing_config() {
  printf 'version: v1\nflags:\n  migStrategy: none\n'
  if (( GPU_SHARES > 1 )); then
    printf 'sharing:\n  timeSlicing:\n    renameByDefault: false\n    failRequestsGreaterThanOne: true\n'
    printf '    resources:\n      - name: nvidia.com/gpu\n        replicas: %d\n' "$GPU_SHARES"
  fi
}
kubectl create namespace gpu-operator --dry-run=client -o yaml | kubectl apply -f -
kubectl -n gpu-operator create configmap gourmetgram-time-slicing --from-literal="time-sliced=$(time_slicing_config)" \
  --dry-run=client -o yaml | kubectl apply -f -
helm repo add nvidia https://helm.ngc.nvidia.com/nvidia --force-update >/dev/null
helm upgrade --install gpu-operator nvidia/gpu-operator --version "$GPU_OPERATOR_VERSION" \
  --namespace gpu-operator --create-namespace --wait --timeout 15m \
  -f "$INFRA/k8s/gpu-operator-values.yaml"

step "GPU slots and drivers on every GPU node (need $GPU_SLOTS_REQUIRED nvidia.com/gpu, driver >= $MIN_NVIDIA_DRIVER)"
# GPU feature discovery labels each GPU node with its driver; the device plugin advertises the
# slots. Both appear a little after the operator is up: poll, then judge every node.
POLL_SECONDS=${POLL_SECONDS:-10}
for _ in $(seq 1 30); do
  gpu_nodes=$(kubectl get nodes -l nvidia.com/gpu.present=true -o \
    'jsonpath={range .items[*]}{.metadata.name}{" "}{.status.allocatable.nvidia\.com/gpu}{" "}{.metadata.labels.nvidia\.com/cuda\.driver\.major}{"\n"}{end}')
  slots=0 unlabelled=0
  while read -r node allocatable driver; do
    [[ -n "$node" ]] || continue
    slots=$(( slots + ${allocatable:-0} ))
    [[ -n "$driver" ]] || unlabelled=1
  done <<< "$gpu_nodes"
  (( slots >= GPU_SLOTS_REQUIRED && ! unlabelled )) && break
  sleep "$POLL_SECONDS"
done
[[ -n "${gpu_nodes//[[:space:]]/}" ]] || die 1 "no node is labelled nvidia.com/gpu.present=true: the GPU operator found no GPU (kubectl -n gpu-operator get pods)"
while read -r node allocatable driver; do
  [[ -n "$node" ]] || continue
  [[ "$driver" =~ ^[0-9]+$ ]] || die 1 "node $node has no driver label (nvidia.com/cuda.driver.major): GPU feature discovery is not running there"
  (( driver >= MIN_NVIDIA_DRIVER )) || die 1 "node $node runs NVIDIA driver $driver, older than $MIN_NVIDIA_DRIVER (see infra/cloud-init/node-prep.sh, NVIDIA_DRIVER_BRANCH)"
  echo "node $node: driver $driver, ${allocatable:-0} nvidia.com/gpu slot(s)"
done <<< "$gpu_nodes"
(( slots >= GPU_SLOTS_REQUIRED )) || die 1 "only $slots allocatable nvidia.com/gpu slot(s); the production revision, a canary and training need $GPU_SLOTS_REQUIRED: raise GPU_SHARES in infra/capacity.env (time-slicing) or lease more GPUs"

step "GourmetGram images: $IMAGE_REGISTRY/*:$IMAGE_TAG checked and pulled on every node"
# Nothing that pulls them is applied before every node has them: a missing image stops the
# install here, naming it, and a multi-GB Triton image is not pulled inside a revision's
# progress deadline (kserve#1247).
if [[ "${BUILD_IMAGES:-0}" == 1 ]]; then
  PUSH=1 "$INFRA/../scripts/build_images.sh"
fi
kubectl create namespace "$PLATFORM_NS" --dry-run=client -o yaml | kubectl apply -f -
pull_secret "$PLATFORM_NS" default
read -r -a image_names <<< "$IMAGES"
prepull_images=("nvcr.io/nvidia/tritonserver:$TRITON_IMAGE_TAG" "kserve/qpext:$KSERVE_VERSION"
                "kserve/storage-initializer:$KSERVE_VERSION")
for name in "${image_names[@]}"; do
  tag=$IMAGE_TAG
  [[ "$name" == mlflow-server ]] && tag=$MLFLOW_VERSION
  prepull_images+=("$IMAGE_REGISTRY/$name:$tag")
done
prepull_manifest() {
  local i=0 image
  cat <<YAML
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: gourmetgram-image-prepull
  namespace: $PLATFORM_NS
  labels: {app.kubernetes.io/name: image-prepull, app.kubernetes.io/part-of: gourmetgram}
spec:
  selector:
    matchLabels: {app.kubernetes.io/name: image-prepull}
  template:
    metadata:
      labels: {app.kubernetes.io/name: image-prepull, app.kubernetes.io/part-of: gourmetgram}
    spec:
      tolerations: [{operator: Exists}]
YAML
  if (( USE_PULL_SECRET )); then printf '      imagePullSecrets: [{name: %s}]\n' "$PULL_SECRET"; fi
  echo "      initContainers:"
  for image in "${prepull_images[@]}"; do
    printf '        - {name: pull-%d, image: "%s", imagePullPolicy: Always, command: [sh, -c, "exit 0"]}\n' "$i" "$image"
    i=$((i + 1))
  done
  cat <<YAML
      containers:
        - {name: pause, image: "registry.k8s.io/pause:3.10", resources: {requests: {cpu: 1m, memory: 8Mi}}}
YAML
}
prepull_manifest | kubectl apply -f -
for _ in $(seq 1 240); do
  pulls=$(kubectl -n "$PLATFORM_NS" get pods -l app.kubernetes.io/name=image-prepull -o \
    'jsonpath={range .items[*]}{range .status.initContainerStatuses[*]}{.image}{" "}{.state.waiting.reason}{"\n"}{end}{end}')
  failed=$(grep -E ' (ImagePullBackOff|InvalidImageName|ErrImageNeverPull)$' <<< "$pulls" | cut -d' ' -f1 | sort -u || true)
  [[ -z "$failed" ]] || die 3 "cannot pull $(echo "$failed" | tr '\n' ' ')from the nodes: build and push it (BUILD_IMAGES=1, or PUSH=1 make images), check charts/gourmetgram/images.env, give REGISTRY_USERNAME/REGISTRY_PASSWORD for a private registry; re-run if the registry was only briefly unreachable"
  kubectl -n "$PLATFORM_NS" rollout status ds/gourmetgram-image-prepull --timeout=10s >/dev/null 2>&1 && break
  sleep "$POLL_SECONDS"
done
kubectl -n "$PLATFORM_NS" rollout status ds/gourmetgram-image-prepull --timeout=60s
echo "pulled on every node: ${prepull_images[*]}"

step "Istio $ISTIO_VERSION"
helm repo add istio https://istio-release.storage.googleapis.com/charts --force-update >/dev/null
helm upgrade --install istio-base istio/base --version "$ISTIO_VERSION" -n istio-system --create-namespace --wait
helm upgrade --install istiod istio/istiod --version "$ISTIO_VERSION" -n istio-system --wait
helm upgrade --install istio-ingressgateway istio/gateway --version "$ISTIO_VERSION" -n istio-system --wait

step "Knative Serving $KNATIVE_SERVING_VERSION (net-istio $KNATIVE_NET_ISTIO_VERSION)"
kn_base="https://github.com/knative/serving/releases/download/${KNATIVE_SERVING_VERSION}"
kubectl apply -f "$kn_base/serving-crds.yaml"
kubectl wait --for=condition=Established --timeout=120s crd/services.serving.knative.dev
kubectl apply -f "$kn_base/serving-core.yaml"
kubectl apply -f "https://github.com/knative/net-istio/releases/download/${KNATIVE_NET_ISTIO_VERSION}/net-istio.yaml"
# The webhook validates every change to Knative's ConfigMaps: wait for it, then merge-patch
# only the keys GourmetGram needs (a whole-ConfigMap apply drops queue-sidecar-image, which
# the webhook rejects).
kubectl -n knative-serving rollout status deploy/webhook --timeout=300s
kubectl -n knative-serving rollout status deploy/controller --timeout=300s
for patch in "$INFRA"/k8s/knative/config-*.yaml; do
  kubectl -n knative-serving patch configmap "$(basename "$patch" .yaml)" --type merge --patch-file "$patch"
done
kubectl -n knative-serving patch configmap config-domain --type merge \
  -p "{\"data\":{\"$DOMAIN\":\"\"}}"
kubectl -n knative-serving rollout status deploy/net-istio-controller --timeout=300s

step "Knative Eventing $KNATIVE_EVENTING_VERSION (the inference logger's Broker and Triggers)"
# Idempotent: re-applying the same release changes nothing. The chart's Broker (class
# MTChannelBasedBroker on the default InMemoryChannel) needs the channel and the broker.
ev_base="https://github.com/knative/eventing/releases/download/${KNATIVE_EVENTING_VERSION}"
kubectl apply -f "$ev_base/eventing-crds.yaml"
kubectl wait --for=condition=Established --timeout=120s crd/brokers.eventing.knative.dev crd/triggers.eventing.knative.dev
kubectl apply -f "$ev_base/eventing-core.yaml"
kubectl -n knative-eventing rollout status deploy/eventing-webhook --timeout=300s
kubectl apply -f "$ev_base/in-memory-channel.yaml"
kubectl apply -f "$ev_base/mt-channel-broker.yaml"
for deploy in eventing-controller imc-controller imc-dispatcher mt-broker-controller mt-broker-ingress mt-broker-filter; do
  kubectl -n knative-eventing rollout status "deploy/$deploy" --timeout=300s
done

step "KServe $KSERVE_VERSION (Knative mode, external domain $DOMAIN)"
helm upgrade --install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd --version "$KSERVE_VERSION" \
  -n kserve --create-namespace --wait
helm upgrade --install kserve oci://ghcr.io/kserve/charts/kserve-resources --version "$KSERVE_VERSION" \
  -n kserve --wait -f "$INFRA/k8s/kserve-values.yaml" \
  --set "kserve.controller.gateway.domain=$DOMAIN"
kubectl -n kserve rollout status deploy/kserve-controller-manager --timeout=300s

step "object store: MinIO chart $MINIO_CHART_VERSION in $PLATFORM_NS"
kubectl create namespace "$PLATFORM_NS" --dry-run=client -o yaml | kubectl apply -f -
AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-$(stored "$PLATFORM_NS" minio-root rootUser)}
AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-gourmetgram-$(generate | cut -c1-8)}
AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-$(stored "$PLATFORM_NS" minio-root rootPassword)}
AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-$(generate)}
apply_secret "$PLATFORM_NS" minio-root "rootUser=$AWS_ACCESS_KEY_ID" "rootPassword=$AWS_SECRET_ACCESS_KEY"
helm repo add minio https://charts.min.io/ --force-update >/dev/null
helm upgrade --install minio minio/minio --version "$MINIO_CHART_VERSION" -n "$PLATFORM_NS" \
  --wait --timeout 10m -f "$INFRA/k8s/platform/minio-values.yaml"
kubectl -n "$PLATFORM_NS" rollout status deploy/minio --timeout=300s

step "MLflow $MLFLOW_VERSION on PostgreSQL $POSTGRES_IMAGE_TAG (artifacts in MinIO)"
MLFLOW_DB_PASSWORD=${MLFLOW_DB_PASSWORD:-$(stored "$PLATFORM_NS" mlflow-postgres POSTGRES_PASSWORD)}
MLFLOW_DB_PASSWORD=${MLFLOW_DB_PASSWORD:-$(generate)}
apply_secret "$PLATFORM_NS" mlflow-postgres POSTGRES_USER=mlflow "POSTGRES_PASSWORD=$MLFLOW_DB_PASSWORD" POSTGRES_DB=mlflow
# the server image from images.env's registry (the file names it ${IMAGE_REGISTRY})
sed "s#\${IMAGE_REGISTRY}#$IMAGE_REGISTRY#g" "$INFRA/k8s/platform/mlflow.yaml" | kubectl apply -f -
kubectl -n "$PLATFORM_NS" rollout status statefulset/postgres --timeout=300s
kubectl -n "$PLATFORM_NS" rollout status deploy/mlflow --timeout=600s

step "loop database ($LOOP_DB_NAME: captures, feedback, labels) on the same PostgreSQL"
# The capture sink applies its own migrations; the database only has to exist.
loop_db_exists=$(kubectl -n "$PLATFORM_NS" exec statefulset/postgres -- \
  psql -U mlflow -d mlflow -tAc "SELECT 1 FROM pg_database WHERE datname = '$LOOP_DB_NAME'")
if [[ "$loop_db_exists" != 1 ]]; then
  kubectl -n "$PLATFORM_NS" exec statefulset/postgres -- createdb -U mlflow "$LOOP_DB_NAME"
fi

step "Kubeflow Pipelines $KFP_VERSION (standalone)"
kfp_base="github.com/kubeflow/pipelines/manifests/kustomize"
kubectl apply -k "$kfp_base/cluster-scoped-resources?ref=$KFP_VERSION"
kubectl wait --for=condition=Established --timeout=120s crd/applications.app.k8s.io
kubectl apply -k "$kfp_base/env/platform-agnostic?ref=$KFP_VERSION"
kubectl -n kubeflow rollout status deploy/ml-pipeline --timeout=900s
pull_secret kubeflow default pipeline-runner
# The pipeline steps' Secrets (components/base.py: required, so a step never falls back to a
# per-pod sqlite MLflow or to AWS).
apply_secret kubeflow mlflow-credentials "MLFLOW_TRACKING_URI=$MLFLOW_URL"
apply_secret kubeflow object-store-credentials "AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID" \
  "AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY" "AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL" \
  "MLFLOW_S3_ENDPOINT_URL=$AWS_ENDPOINT_URL" "GOURMETGRAM_MODELS_BUCKET=$MODELS_BUCKET"

step "GourmetGram namespaces and model-store credentials (from the environment, never files)"
# The namespaces are created here, not by the chart (one owner): the Secret must exist first.
for ns in gourmetgram-staging gourmetgram-production; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
  kubectl label namespace "$ns" --overwrite app.kubernetes.io/part-of=gourmetgram
  apply_secret "$ns" gourmetgram-s3 "AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID" \
    "AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY" "AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL" \
    "S3_ENDPOINT=$S3_ENDPOINT" "S3_USE_HTTPS=$S3_USE_HTTPS" "S3_VERIFY_SSL=$S3_VERIFY_SSL"
  # KServe's credential builder turns these annotations into the storage initializer's env.
  kubectl -n "$ns" annotate secret gourmetgram-s3 --overwrite \
    serving.kserve.io/s3-endpoint="$S3_ENDPOINT" serving.kserve.io/s3-usehttps="$S3_USE_HTTPS" \
    serving.kserve.io/s3-verifyssl="$S3_VERIFY_SSL"
  kubectl -n "$ns" apply -f "$INFRA/k8s/model-serviceaccount.yaml"
  pull_secret "$ns" default gourmetgram-models
  # The capture sink's metadata database (chart value capture.databaseSecret).
  apply_secret "$ns" gourmetgram-loop-db \
    "url=postgresql+psycopg2://mlflow:${MLFLOW_DB_PASSWORD}@postgres.${PLATFORM_NS}.svc.cluster.local:5432/${LOOP_DB_NAME}"
done
echo "platform ready; external URLs: http://<isvc>-<namespace>.$DOMAIN"
echo "KFP: kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80 (then --endpoint http://localhost:8080)"
echo "MLflow: kubectl -n $PLATFORM_NS port-forward svc/mlflow 5000:5000; models bucket s3://$MODELS_BUCKET"
echo "next: infra/scripts/first_run.sh /path/to/Food-11 (data -> training runs -> the InferenceServices -> smoke test)"

#!/usr/bin/env bash
# Install the serving platform on the k3s cluster, every version pinned in infra/versions.env:
# NVIDIA driver check -> cert-manager -> NVIDIA GPU operator -> Istio -> Knative Serving
# (+ net-istio; ConfigMaps merge-patched once its webhook is ready) -> Knative Eventing (the
# logger's Broker: in-memory channel + multi-tenant channel broker) -> KServe (Knative mode)
# -> kube-prometheus-stack -> MinIO -> MLflow on PostgreSQL (+ the loop database) -> Kubeflow
# Pipelines (standalone) -> the GourmetGram namespaces with their model-store and loop-database
# Secrets, and the pipelines' Secrets.
#
#   export KUBECONFIG=~/gourmetgram-kubeconfig       # see infra/README.md
#   export NODE_IP=<server floating ip>              # or DOMAIN=models.example.org
#   infra/scripts/install_platform.sh
#
# Credentials are never in git: the object store's keys are AWS_ACCESS_KEY_ID /
# AWS_SECRET_ACCESS_KEY from the environment, else the ones a previous run stored in the
# cluster, else generated here; PostgreSQL's likewise (MLFLOW_DB_PASSWORD). AWS_ENDPOINT_URL
# defaults to the in-cluster MinIO; set it to use another S3 endpoint for the models bucket.
#
# Exit codes: 0 ok, 1 a check failed (NVIDIA driver too old), 2 bad input (missing tool or
# variable), 3 a dependency unavailable (the node cannot be reached for nvidia-smi).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
INFRA="$HERE/.."
# shellcheck source=SCRIPTDIR/../versions.env
source "$INFRA/versions.env"

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

step "NVIDIA GPU operator $GPU_OPERATOR_VERSION"
helm repo add nvidia https://helm.ngc.nvidia.com/nvidia --force-update >/dev/null
helm upgrade --install gpu-operator nvidia/gpu-operator --version "$GPU_OPERATOR_VERSION" \
  --namespace gpu-operator --create-namespace --wait --timeout 15m \
  -f "$INFRA/k8s/gpu-operator-values.yaml"

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

step "kube-prometheus-stack $KUBE_PROMETHEUS_STACK_VERSION"
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update >/dev/null
helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
  --version "$KUBE_PROMETHEUS_STACK_VERSION" -n monitoring --create-namespace --wait --timeout 15m \
  -f "$INFRA/k8s/kube-prometheus-stack-values.yaml"

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
kubectl apply -f "$INFRA/k8s/platform/mlflow.yaml"
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
  # The capture sink's metadata database (chart value capture.databaseSecret).
  apply_secret "$ns" gourmetgram-loop-db \
    "url=postgresql+psycopg2://mlflow:${MLFLOW_DB_PASSWORD}@postgres.${PLATFORM_NS}.svc.cluster.local:5432/${LOOP_DB_NAME}"
done
echo "platform ready; external URLs: http://<isvc>-<namespace>.$DOMAIN"
echo "KFP: kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80 (then --endpoint http://localhost:8080)"
echo "MLflow: kubectl -n $PLATFORM_NS port-forward svc/mlflow 5000:5000; models bucket s3://$MODELS_BUCKET"
echo "next: kubectl apply -f inference_services/staging.yaml && infra/scripts/smoke_cluster.sh"

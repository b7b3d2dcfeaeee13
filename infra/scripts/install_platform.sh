#!/usr/bin/env bash
# Install the serving platform on the k3s cluster, every version pinned in infra/versions.env:
# cert-manager -> NVIDIA GPU operator -> Istio -> Knative Serving (+ net-istio) -> KServe ->
# kube-prometheus-stack, then the GourmetGram namespaces with their model-store credentials.
#
#   export KUBECONFIG=~/gourmetgram-kubeconfig       # see terraform output kubeconfig_tunnel
#   export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... S3_ENDPOINT=minio.example.org:9000
#   infra/scripts/install_platform.sh
#   kubectl apply -f inference_services/staging.yaml
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
INFRA="$HERE/.."
# shellcheck source=../versions.env
source "$INFRA/versions.env"

for tool in kubectl helm; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (helm $HELM_VERSION)" >&2; exit 2; }
done
: "${AWS_ACCESS_KEY_ID:?set AWS_ACCESS_KEY_ID for the model store}"
: "${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY for the model store}"
S3_ENDPOINT=${S3_ENDPOINT:-s3.amazonaws.com}
S3_USE_HTTPS=${S3_USE_HTTPS:-1}

echo "== cert-manager $CERT_MANAGER_VERSION"
kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
kubectl -n cert-manager rollout status deploy/cert-manager-webhook --timeout=300s

echo "== NVIDIA GPU operator $GPU_OPERATOR_VERSION"
helm repo add nvidia https://helm.ngc.nvidia.com/nvidia --force-update >/dev/null
helm upgrade --install gpu-operator nvidia/gpu-operator --version "$GPU_OPERATOR_VERSION" \
  --namespace gpu-operator --create-namespace --wait --timeout 15m \
  -f "$INFRA/k8s/gpu-operator-values.yaml"

echo "== Istio $ISTIO_VERSION"
helm repo add istio https://istio-release.storage.googleapis.com/charts --force-update >/dev/null
helm upgrade --install istio-base istio/base --version "$ISTIO_VERSION" -n istio-system --create-namespace --wait
helm upgrade --install istiod istio/istiod --version "$ISTIO_VERSION" -n istio-system --wait
helm upgrade --install istio-ingressgateway istio/gateway --version "$ISTIO_VERSION" -n istio-system --wait

echo "== Knative Serving $KNATIVE_SERVING_VERSION (net-istio $KNATIVE_NET_ISTIO_VERSION)"
kn_base="https://github.com/knative/serving/releases/download/${KNATIVE_SERVING_VERSION}"
kubectl apply -f "$kn_base/serving-crds.yaml"
kubectl apply -f "$kn_base/serving-core.yaml"
kubectl apply -f "https://github.com/knative/net-istio/releases/download/${KNATIVE_NET_ISTIO_VERSION}/net-istio.yaml"
kubectl apply -f "$INFRA/k8s/knative-config.yaml"
kubectl -n knative-serving rollout status deploy/controller --timeout=300s

echo "== KServe $KSERVE_VERSION (Serverless mode, Triton runtime)"
helm upgrade --install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd --version "$KSERVE_VERSION" --wait
helm upgrade --install kserve oci://ghcr.io/kserve/charts/kserve --version "$KSERVE_VERSION" \
  -n kserve --create-namespace --wait -f "$INFRA/k8s/kserve-values.yaml"

echo "== kube-prometheus-stack $KUBE_PROMETHEUS_STACK_VERSION"
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update >/dev/null
helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
  --version "$KUBE_PROMETHEUS_STACK_VERSION" -n monitoring --create-namespace --wait --timeout 15m \
  -f "$INFRA/k8s/kube-prometheus-stack-values.yaml"

echo "== GourmetGram namespaces and model-store credentials (from the environment, never files)"
for ns in gourmetgram-staging gourmetgram-production; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n "$ns" create secret generic gourmetgram-s3 \
    --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
    --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
    --from-literal=S3_ENDPOINT="$S3_ENDPOINT" \
    --from-literal=S3_USE_HTTPS="$S3_USE_HTTPS" \
    --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n "$ns" annotate secret gourmetgram-s3 --overwrite \
    serving.kserve.io/s3-endpoint="$S3_ENDPOINT" serving.kserve.io/s3-usehttps="$S3_USE_HTTPS"
  kubectl -n "$ns" apply -f "$INFRA/k8s/model-serviceaccount.yaml"
done
echo "platform ready: kubectl apply -f inference_services/staging.yaml"

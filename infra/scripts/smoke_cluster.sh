#!/usr/bin/env bash
# Smoke test of the cluster path, run by a person against the real cluster after
# install_platform.sh (nothing in CI can reach one). Each step prints what it checked;
# the first failure stops it with exit 1 (3 when a dependency is unreachable).
#
#   export KUBECONFIG=~/gourmetgram-kubeconfig DOMAIN=<ip>.sslip.io
#   export CANARY_BUNDLE=s3://gourmetgram-models/food11/2   # a second registered bundle
#   infra/scripts/smoke_cluster.sh [image.jpg]
#
# Steps: apply -> wait Ready -> predict through the external URL -> canary 10% -> canary
# analysis -> promote -> the detector received logger events -> Prometheus has the
# transformer's metrics for the serving revision.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=SCRIPTDIR/../capacity.env
source "$ROOT/infra/capacity.env"
NS=${NS:-gourmetgram-production}
ISVC=${ISVC:-food11}
MODEL=${MODEL:-food11}
PROM_NS=${PROM_NS:-monitoring}
PROM_SVC=${PROM_SVC:-kube-prometheus-stack-prometheus}
IMAGE=${1:-}

die() { echo "FAIL: $2" >&2; exit "$1"; }
step() { echo; echo "== $*"; }
for tool in kubectl curl python3 gourmetgram; do
  command -v "$tool" >/dev/null || die 3 "$tool not found on PATH"
done
[[ -n "${DOMAIN:-}" ]] || die 2 "set DOMAIN (the one install_platform.sh configured, e.g. <ip>.sslip.io)"
[[ -n "${CANARY_BUNDLE:-}" ]] || die 2 "set CANARY_BUNDLE=s3://<bucket>/<model>/<version> of a second bundle"
kubectl version >/dev/null 2>&1 || die 3 "the cluster is not reachable (KUBECONFIG, SSH tunnel?)"

step "0. GPU slots: the production revision, its canary and training need $GPU_SLOTS_REQUIRED nvidia.com/gpu"
slots=$(kubectl get nodes -o 'jsonpath={range .items[*]}{.status.allocatable.nvidia\.com/gpu}{"\n"}{end}' \
  | awk '{s += $1} END {print s + 0}')
echo "allocatable nvidia.com/gpu: $slots"
(( slots >= GPU_SLOTS_REQUIRED )) || die 1 "only $slots nvidia.com/gpu slot(s): a canary revision would stay Pending (raise GPU_SHARES in infra/capacity.env and re-run install_platform.sh, or lease more GPUs)"

step "1. apply inference_services/production.yaml"
kubectl apply -f "$ROOT/inference_services/production.yaml"

step "2. wait for InferenceService $NS/$ISVC to be Ready (GPU pod start: up to 15 min)"
kubectl -n "$NS" wait --for=condition=Ready "inferenceservice/$ISVC" --timeout=900s
kubectl -n "$NS" wait --for=condition=Ready "ksvc/drift-detector" --timeout=600s
url=$(kubectl -n "$NS" get inferenceservice "$ISVC" -o jsonpath='{.status.url}')
echo "status.url: $url"
[[ "$url" == *".$DOMAIN" ]] || die 1 "status.url $url is not under $DOMAIN (config-domain not applied?)"

step "3. predict through the external URL"
if [[ -z "$IMAGE" ]]; then
  IMAGE=$(mktemp --suffix=.png)
  python3 -c "import base64,sys;sys.stdout.buffer.write(base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=='))" > "$IMAGE"
fi
body=$(python3 -c "import base64,json,sys;print(json.dumps({'instances':[{'image':{'b64':base64.b64encode(open(sys.argv[1],'rb').read()).decode()}}]}))" "$IMAGE")
predict() { curl -fsS --max-time 60 -H 'Content-Type: application/json' -d "$body" "$url/v1/models/$MODEL:predict"; }
reply=$(predict) || die 1 "POST $url/v1/models/$MODEL:predict failed"
echo "$reply" | python3 -c "import json,sys;p=json.load(sys.stdin)['predictions'][0];print('prediction:',p['label'],round(p['confidence'],3))"

step "4. canary 10% of $CANARY_BUNDLE"
gourmetgram rollout canary --cluster --name "$ISVC" --namespace "$NS" --bundle "$CANARY_BUNDLE" --percent 10
kubectl -n "$NS" wait --for=condition=Ready "inferenceservice/$ISVC" --timeout=900s
for _ in $(seq 1 200); do predict >/dev/null || true; done
echo "sent 200 requests"

step "5. canary analysis (Prometheus via port-forward)"
kubectl -n "$PROM_NS" port-forward "svc/$PROM_SVC" 19090:9090 >/dev/null 2>&1 &
pf=$!
trap 'kill "$pf" 2>/dev/null || true' EXIT
sleep 3
set +e
gourmetgram rollout analyze --cluster --name "$ISVC" --namespace "$NS" --prometheus http://127.0.0.1:19090 --window 5m
verdict=$?
set -e
echo "analysis exit code: $verdict (0 promote, 1 roll back / hold)"

step "6. promote (the detector's reference moves to the new bundle)"
gourmetgram rollout promote --cluster --name "$ISVC" --namespace "$NS"
kubectl -n "$NS" wait --for=condition=Ready "ksvc/drift-detector" --timeout=600s
ref=$(kubectl -n "$NS" get ksvc drift-detector -o jsonpath='{.spec.template.spec.initContainers[0].args[0]}')
echo "detector reference: $ref"
[[ "${ref%/}" == "${CANARY_BUNDLE%/}" ]] || die 1 "the detector still judges drift against $ref"
kubectl -n "$NS" rollout status deploy/capture-sink --timeout=600s
sink=$(kubectl -n "$NS" get deploy capture-sink -o jsonpath='{.spec.template.spec.initContainers[0].args[0]}')
echo "capture sink bundle: $sink"
[[ "${sink%/}" == "${CANARY_BUNDLE%/}" ]] || die 1 "the capture sink still reads its classes from $sink"

step "7. the detector receives logger events"
for _ in $(seq 1 20); do predict >/dev/null; done
sleep 20
q() { curl -fsS --get --data-urlencode "query=$1" http://127.0.0.1:19090/api/v1/query; }
events=$(q "sum(drift_events_received_total{namespace=\"$NS\"})" \
  | python3 -c "import json,sys;r=json.load(sys.stdin)['data']['result'];print(r[0]['value'][1] if r else 0)")
echo "detector events: $events"
python3 -c "import sys;sys.exit(0 if float(sys.argv[1])>0 else 1)" "$events" || die 1 "no logger events reached the detector"

step "8. Prometheus has the transformer's and queue-proxy's series for $ISVC"
for series in prediction_confidence_count predicted_class_total kn_serving_invocation_duration_seconds_count nv_inference_request_success; do
  n=$(q "count($series{k8s_namespace_name=\"$NS\"})" | python3 -c "import json,sys;r=json.load(sys.stdin)['data']['result'];print(r[0]['value'][1] if r else 0)")
  echo "$series: $n series"
  [[ "$n" != 0 ]] || die 1 "Prometheus has no $series in $NS (PodMonitor not picked up?)"
done
# GPU memory in use (DCGM exporter): the figures behind infra/capacity.env's budgets
fb=$(q 'max by (Hostname, gpu) (DCGM_FI_DEV_FB_USED)' | python3 -c "import json,sys;print(' '.join(f\"{r['metric'].get('Hostname','?')}/gpu{r['metric'].get('gpu','?')}={r['value'][1]}MiB\" for r in json.load(sys.stdin)['data']['result']))")
echo "GPU memory used: ${fb:-none reported}"
echo; echo "smoke test passed (analysis verdict exit code $verdict)"

#!/usr/bin/env bash
# Prepare one Chameleon GPU node for k3s, run once by cloud-init (k3s-node.yaml.tftpl), with its
# settings in /etc/gourmetgram/node.env (K3S_VERSION, K3S_ROLE, NODE_IPS, NVIDIA_DRIVER_BRANCH,
# NVIDIA_CONTAINER_TOOLKIT_VERSION). Then: firewalld -> NVIDIA driver branch -> NVIDIA Container
# Toolkit -> k3s with the `nvidia` runtime as its default -> a reboot if the driver changed.
#
# firewalld: CC images enable it (ChameleonCloud/CC-Images elements/cc-firewall), and on
#   bare-metal sites it, not the Terraform security group, filters traffic. k3s's requirements
#   (docs.k3s.io/installation/requirements, Firewalld) trust the pod and service CIDRs; the
#   nodes trust each other (6443, flannel VXLAN 8472/udp, kubelet 10250); 80/443 are open for
#   the Istio ingress gateway. 6443 stays closed to the world: the API is reached by SSH tunnel.
# driver: CC-Ubuntu22.04-CUDA ships nvidia-driver-560 (CC-Images elements/cuda/package-installs.yaml);
#   the pipeline image's torch (CUDA 13.0) needs the 580 branch, from the image's own CUDA repo.
# toolkit: k3s finds nvidia-container-runtime on PATH and writes the `nvidia` runtime into the
#   containerd 2 config it generates (k3s pkg/agent/containerd/nvidia.go); no config template.
set -euo pipefail

ROOT=${PREP_ROOT:-}
# shellcheck source=/dev/null
[[ -f "$ROOT/etc/gourmetgram/node.env" ]] && source "$ROOT/etc/gourmetgram/node.env"
: "${K3S_VERSION:?}" "${K3S_ROLE:?}" "${NODE_IPS:?}" "${NVIDIA_DRIVER_BRANCH:?}" "${NVIDIA_CONTAINER_TOOLKIT_VERSION:?}"
POD_CIDR=10.42.0.0/16      # k3s's default cluster-cidr
SERVICE_CIDR=10.43.0.0/16  # k3s's default service-cidr
log() { echo "node-prep: $*"; }

# --- firewalld ---------------------------------------------------------------------------
if command -v firewall-offline-cmd >/dev/null; then
  if systemctl is-active --quiet firewalld; then fw=(firewall-cmd --permanent); else fw=(firewall-offline-cmd); fi
  for source in $POD_CIDR $SERVICE_CIDR $NODE_IPS; do
    "${fw[@]}" --zone=trusted --add-source="$source"
  done
  for port in 80/tcp 443/tcp; do
    "${fw[@]}" --zone=public --add-port="$port"
  done
  if systemctl is-active --quiet firewalld; then firewall-cmd --reload; fi
  log "firewalld: trusted $POD_CIDR $SERVICE_CIDR $NODE_IPS; public 80/tcp 443/tcp"
fi

# --- NVIDIA driver ------------------------------------------------------------------------
reboot_needed=0
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 || true)
if [[ ! "$driver" =~ ^([0-9]+)\. ]] || (( BASH_REMATCH[1] < NVIDIA_DRIVER_BRANCH )); then
  log "NVIDIA driver '${driver:-none}' is older than branch $NVIDIA_DRIVER_BRANCH: installing cuda-drivers-$NVIDIA_DRIVER_BRANCH"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "cuda-drivers-$NVIDIA_DRIVER_BRANCH"
  reboot_needed=1
fi

# --- NVIDIA Container Toolkit (NVIDIA's apt repository, pinned) ---------------------------
keyring=$ROOT/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | gpg --batch --yes --dearmor -o "$keyring"
curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \
  | sed "s#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g" \
  > "$ROOT/etc/apt/sources.list.d/nvidia-container-toolkit.list"
apt-get update
v=$NVIDIA_CONTAINER_TOOLKIT_VERSION
DEBIAN_FRONTEND=noninteractive apt-get install -y "nvidia-container-toolkit=$v" "nvidia-container-toolkit-base=$v" \
  "libnvidia-container-tools=$v" "libnvidia-container1=$v"
command -v nvidia-container-runtime >/dev/null || { echo "node-prep: nvidia-container-runtime is not on PATH" >&2; exit 1; }

# --- k3s, the nvidia runtime as its default ------------------------------------------------
# Every pod runs through nvidia-container-runtime (a plain runc for pods without a GPU), so
# KServe's and KFP's GPU pods need no runtimeClassName.
grep -q '^default-runtime:' "$ROOT/etc/rancher/k3s/config.yaml" || echo "default-runtime: nvidia" >> "$ROOT/etc/rancher/k3s/config.yaml"
curl -sfL https://get.k3s.io | INSTALL_K3S_VERSION="$K3S_VERSION" INSTALL_K3S_EXEC="$K3S_ROLE" sh -
containerd_config=$ROOT/var/lib/rancher/k3s/agent/etc/containerd/config.toml
for _ in $(seq 1 60); do
  grep -q "nvidia" "$containerd_config" 2>/dev/null && break
  sleep "${POLL_SECONDS:-5}"
done
grep -q "nvidia" "$containerd_config" || { echo "node-prep: k3s did not configure the nvidia runtime ($containerd_config)" >&2; exit 1; }
log "k3s $K3S_VERSION ($K3S_ROLE) with the nvidia runtime"

if (( reboot_needed )); then
  log "rebooting in a minute to load NVIDIA driver $NVIDIA_DRIVER_BRANCH (k3s starts again by itself)"
  shutdown -r +1
fi

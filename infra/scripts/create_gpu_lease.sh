#!/usr/bin/env bash
# Reserve Chameleon GPU bare-metal hosts with Blazar and hand the reservation id to Terraform.
#
#   source ~/CHI-xxxxxx-openrc.sh      # or: export OS_CLOUD=chi-uc (clouds.yaml outside git)
#   infra/scripts/create_gpu_lease.sh  # then: terraform -chdir=infra/terraform apply
#
# Needs python-openstackclient + python-blazarclient. Settings (environment):
#   LEASE_NAME (gourmetgram-$USER), NODE_TYPE (gpu_rtx_6000), NODES (1), HOURS (8).
set -euo pipefail

LEASE_NAME=${LEASE_NAME:-gourmetgram-${USER:-me}}
NODE_TYPE=${NODE_TYPE:-gpu_rtx_6000}
NODES=${NODES:-1}
HOURS=${HOURS:-8}
HERE=$(cd "$(dirname "$0")" && pwd)
TFVARS="$HERE/../terraform/gpu_lease.auto.tfvars.json"

if [[ -z "${OS_AUTH_URL:-}" && -z "${OS_CLOUD:-}" ]]; then
  echo "error: no OpenStack credentials: source your Chameleon openrc or set OS_CLOUD" >&2
  exit 2
fi
case "$NODE_TYPE" in
  gpu_*|compute_liqid) ;;
  *) echo "error: NODE_TYPE=$NODE_TYPE is not a GPU node type" >&2; exit 2 ;;
esac

if ! openstack reservation lease show "$LEASE_NAME" >/dev/null 2>&1; then
  end=$(date -u -d "+${HOURS} hours" '+%Y-%m-%d %H:%M')
  openstack reservation lease create \
    --reservation "min=${NODES},max=${NODES},resource_type=physical:host,resource_properties=[\"==\",\"\$node_type\",\"${NODE_TYPE}\"]" \
    --start-date now --end-date "$end" \
    "$LEASE_NAME"
fi

echo "waiting for lease $LEASE_NAME to become ACTIVE..."
for _ in $(seq 1 60); do
  status=$(openstack reservation lease show -f value -c status "$LEASE_NAME")
  [[ "$status" == "ACTIVE" ]] && break
  [[ "$status" == "ERROR" ]] && { echo "error: lease $LEASE_NAME failed" >&2; exit 1; }
  sleep 20
done
[[ "$status" == "ACTIVE" ]] || { echo "error: lease $LEASE_NAME still $status" >&2; exit 1; }

# The reservations field is JSON (a list, or one object per line on older clients).
openstack reservation lease show -f json "$LEASE_NAME" | python3 -c '
import json, sys
lease = json.load(sys.stdin)
res = lease["reservations"]
if isinstance(res, str):
    res = [json.loads(x) for x in res.splitlines() if x.strip()] if not res.lstrip().startswith("[") else json.loads(res)
host = [r for r in res if r.get("resource_type") == "physical:host"]
print(json.dumps({"gpu_reservation_id": host[0]["id"]}, indent=2))
' > "$TFVARS"
echo "wrote $TFVARS"

#!/usr/bin/env bash
# Build every GourmetGram image with docker buildx, tagged from git; PUSH=1 pushes them.
#
#   make images                                   # build and load into the local docker
#   PUSH=1 REGISTRY=ghcr.io/<org> make images     # build and push (what CI does)
#
# Tag: IMAGE_TAG, else `git describe --tags --always --dirty` (v0.1.0, v0.1.0-3-gabc1234,
# abc1234-dirty). A commit exactly at tag v<version> is also tagged <version>, the tag the
# chart (charts/gourmetgram/values.yaml) and the pipeline (components/base.py) reference; to
# run a development build, point them at its git tag (`gourmetgram pipeline compile --image`).
# The MLflow server image is tagged with its MLflow version (infra/versions.env).
# Exit codes: 0 ok, 2 bad input, 3 docker buildx unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=SCRIPTDIR/../infra/versions.env
source infra/versions.env

die() { echo "error: $2" >&2; exit "$1"; }

REGISTRY=${REGISTRY:-ghcr.io/gourmetgram}
PLATFORMS=${PLATFORMS:-linux/amd64}
[[ "$REGISTRY" =~ ^[a-z0-9.:-]+(/[a-z0-9._-]+)*$ ]] || die 2 "REGISTRY '$REGISTRY' is not a registry path like ghcr.io/org"
TAG=${IMAGE_TAG:-$(git describe --tags --always --dirty)}
[[ "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die 2 "image tag '$TAG' is not a valid docker tag"
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' gourmetgram/__init__.py)
RELEASE=$(git describe --tags --exact-match 2>/dev/null || true)
COMMIT=$(git rev-parse HEAD)
docker buildx version >/dev/null 2>&1 || die 3 "docker buildx is not available (install docker-buildx-plugin); nothing was built"

if [[ "${PUSH:-0}" == 1 ]]; then
  output=(--push)
else
  [[ "$PLATFORMS" != *,* ]] || die 2 "a multi-platform build cannot be loaded locally; set PUSH=1 or one platform"
  output=(--load)
fi

# name | Dockerfile | extra tag
images=(
  "pipeline-python3.11|components/Dockerfile|"
  "food-transformer|transformers/Dockerfile|"
  "drift-detector|detectors/Dockerfile|"
  "capture-sink|capture/Dockerfile|"
  "retrain-receiver|gourmetgram/retrain/Dockerfile|"
  "webapp|webapp/Dockerfile|"
  "mlflow-server|infra/docker/mlflow/Dockerfile|$MLFLOW_VERSION"
)
for entry in "${images[@]}"; do
  IFS='|' read -r name dockerfile extra <<< "$entry"
  tags=(--tag "$REGISTRY/$name:$TAG")
  [[ "$RELEASE" == "v$VERSION" ]] && tags+=(--tag "$REGISTRY/$name:$VERSION")
  [[ -n "$extra" ]] && tags+=(--tag "$REGISTRY/$name:$extra")
  echo "== $REGISTRY/$name:$TAG ($dockerfile)"
  docker buildx build --platform "$PLATFORMS" --file "$dockerfile" "${tags[@]}" \
    --build-arg "GIT_COMMIT=$COMMIT" --label "org.opencontainers.image.revision=$COMMIT" \
    --label "org.opencontainers.image.version=$TAG" "${output[@]}" .
done
echo "built ${#images[@]} images tagged $TAG${PUSH:+ (pushed)}"

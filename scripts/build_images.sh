#!/usr/bin/env bash
# Build every GourmetGram image with docker buildx; PUSH=1 pushes them.
#
#   make images                                   # build and load into the local docker
#   PUSH=1 make images                            # build and push (what CI does)
#
# Registry and tag: charts/gourmetgram/images.env, the ONE image reference the chart, the
# pipelines and the install use. Every image gets that IMAGE_TAG (what the cluster pulls; it
# follows the latest build) and the immutable `git describe --tags --always --dirty` tag
# (v0.1.0-3-gabc1234, abc1234-dirty) for pinning one build. REGISTRY / IMAGE_TAG in the
# environment override the file for one build (a development registry); the cluster then
# needs the same change in images.env. The MLflow server image is tagged with its MLflow
# version (infra/versions.env) instead of IMAGE_TAG.
# Exit codes: 0 ok, 2 bad input, 3 docker buildx unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=SCRIPTDIR/../infra/versions.env
source infra/versions.env
override_tag=${IMAGE_TAG:-}
# shellcheck source=SCRIPTDIR/../charts/gourmetgram/images.env
source charts/gourmetgram/images.env
IMAGE_TAG=${override_tag:-$IMAGE_TAG}

die() { echo "error: $2" >&2; exit "$1"; }

REGISTRY=${REGISTRY:-$IMAGE_REGISTRY}
PLATFORMS=${PLATFORMS:-linux/amd64}
[[ "$REGISTRY" =~ ^[a-z0-9.:-]+(/[a-z0-9._-]+)*$ ]] || die 2 "REGISTRY '$REGISTRY' is not a registry path like ghcr.io/org"
BUILD=$(git describe --tags --always --dirty)
for tag in "$IMAGE_TAG" "$BUILD"; do
  [[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die 2 "image tag '$tag' is not a valid docker tag"
done
COMMIT=$(git rev-parse HEAD)
docker buildx version >/dev/null 2>&1 || die 3 "docker buildx is not available (install docker-buildx-plugin); nothing was built"

if [[ "${PUSH:-0}" == 1 ]]; then
  output=(--push)
else
  [[ "$PLATFORMS" != *,* ]] || die 2 "a multi-platform build cannot be loaded locally; set PUSH=1 or one platform"
  output=(--load)
fi

# Each name of images.env's IMAGES and the Dockerfile that builds it.
dockerfile_of() {
  case "$1" in
    pipeline-python3.11) echo components/Dockerfile ;;
    food-transformer) echo transformers/Dockerfile ;;
    drift-detector) echo detectors/Dockerfile ;;
    capture-sink) echo capture/Dockerfile ;;
    retrain-receiver) echo gourmetgram/retrain/Dockerfile ;;
    webapp) echo webapp/Dockerfile ;;
    mlflow-server) echo infra/docker/mlflow/Dockerfile ;;
    *) return 1 ;;
  esac
}
read -r -a names <<< "$IMAGES"
for name in "${names[@]}"; do
  dockerfile_of "$name" >/dev/null || die 2 "images.env names image '$name', which no Dockerfile builds (add it to dockerfile_of)"
done
for name in "${names[@]}"; do
  dockerfile=$(dockerfile_of "$name")
  # the tag the cluster pulls: IMAGE_TAG, or the MLflow version for the MLflow server
  pulled=$IMAGE_TAG
  [[ "$name" == mlflow-server ]] && pulled=$MLFLOW_VERSION
  tags=(--tag "$REGISTRY/$name:$pulled" --tag "$REGISTRY/$name:$BUILD")
  echo "== $REGISTRY/$name:$pulled ($dockerfile, build $BUILD)"
  docker buildx build --platform "$PLATFORMS" --file "$dockerfile" "${tags[@]}" \
    --build-arg "GIT_COMMIT=$COMMIT" --label "org.opencontainers.image.revision=$COMMIT" \
    --label "org.opencontainers.image.version=$BUILD" "${output[@]}" .
done
echo "built ${#names[@]} images tagged $IMAGE_TAG and $BUILD${PUSH:+ (pushed)}"

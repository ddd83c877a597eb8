#!/usr/bin/env bash
# Build the nnkube stage image (CPU or GPU) with podman, offline: a wheelhouse made on the host, then the image.
#
# usage: images/build.sh [--target cpu|gpu] [--base-image IMG] [--tag TAG] [--torch-spec SPEC] [--python PY]
#   --target      cpu (default) or gpu: the Dockerfile target and the torch build in the wheelhouse
#   --base-image  image with python3 of the wheelhouse's version (default localhost/nnkube-base:bookworm,
#                 made by images/make-base.sh when missing; in a cluster e.g. python:3.11-slim)
#   --tag         image name (default localhost/nnkube-stages:<target>)
#   --torch-spec  torch requirement (default torch==2.13.0+cpu for cpu, torch==2.13.0 for gpu; pip must find it,
#                 e.g. through PIP_FIND_LINKS or PIP_EXTRA_INDEX_URL)
#   --python      interpreter whose pip builds the wheelhouse; its version must match the base image's python3
#                 (default: the repository's .venv, else python3)
# Environment: CONTAINERS_CONF (default images/containers.conf: runc and lowered ulimits).
# Prints the image's name on stdout when done.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TARGET=cpu
DEFAULT_BASE=localhost/nnkube-base:bookworm
BASE_IMAGE=$DEFAULT_BASE
TAG=""
TORCH_SPEC=""
PYTHON=""
while [ $# -gt 0 ]; do
    case "$1" in
        --target) TARGET="$2"; shift 2 ;;
        --base-image) BASE_IMAGE="$2"; shift 2 ;;
        --tag) TAG="$2"; shift 2 ;;
        --torch-spec) TORCH_SPEC="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
case "$TARGET" in
    cpu) TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0+cpu}" ;;
    gpu) TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}" ;;
    *) die "--target must be cpu or gpu, not $TARGET" ;;
esac
TAG="${TAG:-localhost/nnkube-stages:$TARGET}"
if [ -z "$PYTHON" ]; then
    if [ -x "$REPO_ROOT/.venv/bin/python" ]; then PYTHON="$REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

ensure_container_tools
if [ "$BASE_IMAGE" = "$DEFAULT_BASE" ] && ! podman image exists "$BASE_IMAGE"; then
    "$IMAGES_DIR/make-base.sh" --image "$BASE_IMAGE"
fi

# One build at a time on this machine: builds share the staged wheelhouse (a second one waits here).
mkdir -p "$IMAGES_DIR/.cache"
exec 9>"$IMAGES_DIR/.cache/build.lock"
flock 9

# --- wheelhouse: kept per target in images/.cache/ (reused by later builds), staged in images/.wheelhouse/ ---
CACHE="$IMAGES_DIR/.cache/wheels-$TARGET"
STAGE="$IMAGES_DIR/.wheelhouse"
mkdir -p "$CACHE"
rm -f "$CACHE"/nnkube-*.whl
log "building the wheelhouse with $PYTHON ($TORCH_SPEC)"
# A fixed SOURCE_DATE_EPOCH makes the wheel reproducible, so unchanged sources reuse the cached image layer.
SOURCE_DATE_EPOCH=315532800 "$PYTHON" -m pip wheel -qq --no-deps --wheel-dir "$CACHE" "$REPO_ROOT"
project_wheel="$(ls "$CACHE"/nnkube-*.whl)"
# Every dependency as a wheel (sdists are built here), plus pip itself, which the Dockerfile runs from its wheel.
# Resolved again only when the dependencies, the torch spec or the interpreter change.
stamp="$(cat "$REPO_ROOT/pyproject.toml" - <<<"$TORCH_SPEC $("$PYTHON" -VV)" | sha256sum | cut -c1-64)"
if [ "$(cat "$CACHE/.stamp" 2>/dev/null)" != "$stamp" ]; then
    "$PYTHON" -m pip wheel -qq --wheel-dir "$CACHE" --find-links "$CACHE" \
        "$TORCH_SPEC" "nnkube[runtime] @ file://$project_wheel" pip
    echo "$stamp" >"$CACHE/.stamp"
else
    log "dependency wheels unchanged (cached in $CACHE)"
fi
torch_wheels=("$CACHE"/torch-*.whl)
if [ "$TARGET" = gpu ] && ls "$CACHE"/torch-*+cpu-*.whl >/dev/null 2>&1; then
    die "the gpu wheelhouse got a CPU torch wheel; point pip at the CUDA build (--torch-spec / PIP_* settings)"
fi
[ ${#torch_wheels[@]} -eq 1 ] || die "several torch wheels in $CACHE: ${torch_wheels[*]}; remove the stale ones"
rm -rf "$STAGE"
mkdir -p "$STAGE"
ln "$CACHE"/*.whl "$STAGE"/ 2>/dev/null || cp "$CACHE"/*.whl "$STAGE"/
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
# Layer-cache keys: the dependency wheels by name (names carry versions), the project by content.
DEPS_STAMP="$(cd "$STAGE" && ls *.whl | grep -v '^nnkube-' | sha256sum | cut -c1-16)"
PROJECT_STAMP="$(cat "$STAGE"/nnkube-*.whl "$IMAGES_DIR/precompile.py" | sha256sum | cut -c1-16)"

# --- image ---
log "building $TAG (target $TARGET) on $BASE_IMAGE"
start=$(date +%s)
podman build --quiet --file "$IMAGES_DIR/Dockerfile" --target "$TARGET" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PYTHON_VERSION="$PY_VERSION" \
    --build-arg DEPS_STAMP="$DEPS_STAMP" --build-arg PROJECT_STAMP="$PROJECT_STAMP" \
    --tag "$TAG" "$REPO_ROOT" >/dev/null
rm -rf "$STAGE"
# Earlier builds of this image, now untagged (the cached intermediate layers are kept).
podman image prune --force --filter "label=org.opencontainers.image.title=nnkube stages" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$TAG")
log "built $TAG in $(( $(date +%s) - start )) s: $(( size / 1000000 )) MB"
echo "$TAG"

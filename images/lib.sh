# Shared helpers of images/make-base.sh and images/build.sh (sourced, not run).

IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$IMAGES_DIR/.." && pwd)"
# runc and lowered ulimits (see containers.conf); a caller's own CONTAINERS_CONF wins.
export CONTAINERS_CONF="${CONTAINERS_CONF:-$IMAGES_DIR/containers.conf}"
# Debian packages that build and run the images without a Docker engine.
CONTAINER_PACKAGES=(podman buildah runc skopeo uidmap slirp4netns fuse-overlayfs debootstrap)

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Install the container tools with apt-get when one of them is missing (needs root).
ensure_container_tools() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    if [ "${1:-}" = "--with-debootstrap" ]; then
        command -v debootstrap >/dev/null || missing+=(debootstrap)
    fi
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; as root: apt-get install ${CONTAINER_PACKAGES[*]}"
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    log "installing ${CONTAINER_PACKAGES[*]} (missing: ${missing[*]})"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${CONTAINER_PACKAGES[@]}" >/dev/null
}

# Print the calling script's header comment (its usage).
usage() { awk 'NR == 1 {next} /^#/ {sub(/^# ?/, ""); print; next} {exit}' "$0"; }

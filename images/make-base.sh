#!/usr/bin/env bash
# Make a small Debian base image with python3 locally (no registry needed): debootstrap + podman import.
#
# usage: images/make-base.sh [--image NAME] [--suite SUITE] [--mirror URL] [--force]
#   --image   name of the imported image (default localhost/nnkube-base:bookworm)
#   --suite   Debian suite (default bookworm, whose python3 is 3.11)
#   --mirror  Debian mirror (default: the first one apt on this machine is configured with)
#   --force   rebuild even when the image already exists (otherwise the cached image is kept)
# Needs root (debootstrap); installs the container tools with apt-get when they are missing.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

IMAGE=localhost/nnkube-base:bookworm
SUITE=bookworm
MIRROR=""
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --image) IMAGE="$2"; shift 2 ;;
        --suite) SUITE="$2"; shift 2 ;;
        --mirror) MIRROR="$2"; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

ensure_container_tools --with-debootstrap
if [ "$FORCE" -eq 0 ] && podman image exists "$IMAGE"; then
    log "base image $IMAGE exists (cached; --force rebuilds it)"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"

if [ -z "$MIRROR" ]; then
    # deb822 sources first, then the one-line format.
    MIRROR="$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '$2 !~ /security/ {print $2; exit}')"
    [ -n "$MIRROR" ] || MIRROR="$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        | awk '$2 !~ /security/ && $2 ~ /debian/ {print $2; exit}')"
    [ -n "$MIRROR" ] || die "no Debian mirror found in apt's sources; pass --mirror URL"
fi

ROOTFS="$(mktemp -d /tmp/nnkube-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
log "debootstrap $SUITE from $MIRROR"
# python3 (not python3-minimal): the stages need the full standard library (ctypes, multiprocessing, ...).
debootstrap --variant=minbase --include=python3 "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
    || { tail -20 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; die "debootstrap failed"; }
rm -f "$ROOTFS.log"
# Keep the base small: no package caches, lists, docs, man pages or translations. The standard library's
# bytecode stays: the images run as a non-root user who cannot write it, and without it every start is slower.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/log/*.log

log "importing as $IMAGE"
# Through a file, not a pipe: a failing tar must not leave an empty image behind.
tar --numeric-owner -C "$ROOTFS" -cf "$ROOTFS.tar" .
trap 'rm -rf "$ROOTFS" "$ROOTFS.tar"' EXIT
podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' "$ROOTFS.tar" "$IMAGE" >/dev/null
log "done: $IMAGE ($(podman image inspect --format '{{.Size}}' "$IMAGE") bytes)"

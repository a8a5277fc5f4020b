#!/usr/bin/env bash
# Make a local base image (Debian bookworm + python3) with buildah, for building deploykit's
# serving image where no registry can be pulled from (no Docker Hub, no Docker engine):
#
#   sudo k8s/offline/bookworm-python.sh [IMAGE]          # default localhost/bookworm-python:3.11
#   sudo BUILDAH_ISOLATION=chroot STORAGE_DRIVER=vfs \
#        deploykit containerize ARTIFACT_OR_BENTO --backend buildah \
#        --base-image localhost/bookworm-python:3.11 --tag deploykit-classifier:offline
#
# Needs: apt-get install buildah debootstrap; root; python3 -m pip (to fetch uv's wheel); a reachable Debian mirror (taken from this
# machine's apt sources, or DEBIAN_MIRROR=...) and Python package index for the build itself.
set -euo pipefail

IMAGE=${1:-localhost/bookworm-python:3.11}
UV_VERSION=${UV_VERSION:-0.13.4}  # the uv BentoML 1.4.40's Dockerfile pins (it skips its own install)
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot} STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then  # the mirror apt already uses here (deb822 or one-line format)
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "set DEBIAN_MIRROR to a Debian mirror URL" >&2; exit 2; }

rootfs=$(mktemp -d)
ctr=""
cleanup() { [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1; rm -rf "$rootfs"; }
trap cleanup EXIT

# minbase = Essential packages + apt; passwd provides the groupadd/useradd that BentoML's
# Dockerfile calls for the non-root user.
debootstrap --variant=minbase --include=python3,ca-certificates,passwd \
  bookworm "$rootfs" "$mirror"

# BentoML's Dockerfile installs everything with uv, and installs uv with pip unless a recent
# enough uv is already there. Putting uv's binary in the base (from its wheel) saves shipping
# pip, setuptools and wheel (~27 MB) in every image.
wheels=$(mktemp -d -p "$rootfs/tmp")
PIP_CONSTRAINT="" python3 -m pip download -q --no-deps --only-binary=:all: -d "$wheels" "uv==$UV_VERSION"
python3 -m zipfile -e "$wheels"/uv-*.whl "$wheels/x"
install -m 0755 "$wheels"/x/uv-*.data/scripts/uv "$rootfs/usr/local/bin/uv"
rm -rf "$wheels"

# Trust what this machine trusts (a TLS-intercepting proxy's CA included), so pip and uv can
# reach the package index during the image build.
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
# Nothing the service needs: package lists, caches, docs, man pages, translations.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
       "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/info/*

ctr=$(buildah from scratch)
mnt=$(buildah mount "$ctr")
cp -a "$rootfs"/. "$mnt"/
buildah umount "$ctr"
buildah config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --env UV_NATIVE_TLS=1 \
  --cmd /bin/bash "$ctr"
buildah commit --rm "$ctr" "$IMAGE" >/dev/null
ctr=""
buildah images "$IMAGE"

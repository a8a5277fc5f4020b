#!/usr/bin/env bash
# Make a local base image (Debian bookworm + python3) with buildah, for building deploykit's
# serving image where no registry can be pulled from (no Docker Hub, no Docker engine):
#
#   k8s/offline/bookworm-python.sh [IMAGE]          # as root; default localhost/bookworm-python:3.11
#   deploykit containerize ARTIFACT_OR_BENTO --backend buildah \
#       --base-image localhost/bookworm-python:3.11 --tag localhost/deploykit-sentiment:offline
#
# Needs: apt-get install buildah debootstrap; root; python3 -m pip (to fetch uv's wheel); a
# reachable Debian mirror (taken from this machine's apt sources, or DEBIAN_MIRROR=...) and, for
# the image build itself, the Python package index. buildah and podman use the storage driver
# of /etc/containers/storage.conf (overlay where the kernel has it); set STORAGE_DRIVER=vfs for
# every buildah and podman command where overlay mounts are refused (inside some containers).
#
# The image is labelled with this script's sha256 (org.deploykit.base.script-sha256). With
# DEPLOYKIT_BASE_CACHE=DIR (CI sets it; so do the tests, see tests/outside_tools.py) the script
# builds only when it must: it keeps IMAGE if this version of the script made it, else restores
# it from DIR/bookworm-python-<sha256 prefix>.oci.tar, else builds it and stores that archive
# (older archives are removed). Concurrent runs wait on a lock in DIR.
set -euo pipefail

IMAGE=${1:-localhost/bookworm-python:3.11}
UV_VERSION=${UV_VERSION:-0.13.4}  # the uv BentoML 1.4.40's Dockerfile pins (it skips its own install)
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
SCRIPT_SHA256=$(sha256sum "$0" | cut -d' ' -f1)
LABEL=org.deploykit.base.script-sha256

made_by_this_script() {
  [ "$(buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$LABEL\"}}" \
        "$IMAGE" 2>/dev/null)" = "$SCRIPT_SHA256" ]
}
if [ -n "${DEPLOYKIT_BASE_CACHE:-}" ]; then
  mkdir -p "$DEPLOYKIT_BASE_CACHE"
  archive="$DEPLOYKIT_BASE_CACHE/bookworm-python-${SCRIPT_SHA256:0:16}.oci.tar"
  exec 9>"$DEPLOYKIT_BASE_CACHE/bookworm-python.lock"
  flock 9
  if made_by_this_script; then
    echo "base image $IMAGE is current (made by this script)"; exit 0
  fi
  if [ -f "$archive" ]; then
    id=$(buildah pull --quiet "oci-archive:$archive")
    buildah tag "$id" "$IMAGE"
    made_by_this_script || { echo "$archive does not hold this script's base" >&2; exit 1; }
    echo "base image $IMAGE restored from $archive"; exit 0
  fi
fi

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

# Packages neither the image build (sh, coreutils, useradd, uv, python3) nor the service uses:
# the package manager and what only it needs (perl for debconf and adduser, apt and its TLS
# stack and keys), disk and mount tools. dpkg removes their files and records it, so image
# scanners that read /var/lib/dpkg/status see what is really there; their maintainer scripts
# are skipped (they would call perl or debconf, which go first). Nothing can be apt-get
# installed into this base afterwards: add packages with debootstrap's --include above.
unused=(perl-base adduser debconf apt libapt-pkg6.0 gpgv debian-archive-keyring
        libgnutls30 libp11-kit0 libtasn1-6 libhogweed6 libnettle8 libidn2-0 libunistring2
        libxxhash0 e2fsprogs libext2fs2 libss2 logsave mount util-linux util-linux-extra
        libfdisk1 libsmartcols1 libmount1 init-system-helpers sysvinit-utils bsdutils)
present=()
for pkg in "${unused[@]}"; do
  if chroot "$rootfs" dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q installed; then
    present+=("$pkg")
    rm -f "$rootfs/var/lib/dpkg/info/$pkg".{prerm,postrm,preinst,postinst}
  fi
done
chroot "$rootfs" dpkg --purge --force-remove-essential --force-depends "${present[@]}" >/dev/null
# glibc's iconv modules: Python has its own codecs, and nothing else here converts charsets.
rm -rf "$rootfs"/usr/lib/x86_64-linux-gnu/gconv

# Every program and library left must still find the libraries it links: fail here, naming
# the file, rather than in a build or at serving time.
broken=$(chroot "$rootfs" /bin/sh -c '
  find /usr -type f \( -perm -u+x -o -name "*.so*" \) | while read -r f; do
    [ "$(head -c 4 "$f" | tail -c 3)" = ELF ] || continue
    ldd "$f" 2>/dev/null | grep "not found" | sed "s|^|$f: |"
  done')
[ -z "$broken" ] || { echo "the trimmed base misses libraries:" >&2; echo "$broken" >&2; exit 1; }

# BentoML's Dockerfile installs everything with uv, and installs uv with pip unless a recent
# enough uv is already there. Putting uv's binary in the base (from its wheel) saves shipping
# pip, setuptools and wheel in every image; deploykit containerize removes uv again in the
# image's last build step (deploykit/deploy/slim.py), as nothing runs it after the build.
wheels=$(mktemp -d -p "$rootfs/tmp")
PIP_CONSTRAINT="" python3 -m pip download -q --no-deps --only-binary=:all: -d "$wheels" "uv==$UV_VERSION"
python3 -m zipfile -e "$wheels"/uv-*.whl "$wheels/x"
install -m 0755 "$wheels"/x/uv-*.data/scripts/uv "$rootfs/usr/local/bin/uv"
rm -rf "$wheels"

# Trust what this machine trusts (a TLS-intercepting proxy's CA included), so pip and uv can
# reach the package index during the image build.
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
# Nothing the service needs: package lists, caches, docs, man pages, translations.
rm -rf "$rootfs"/var/lib/apt "$rootfs"/var/cache/apt "$rootfs"/var/cache/debconf \
       "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
       "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/lintian

ctr=$(buildah from scratch)
mnt=$(buildah mount "$ctr")
cp -a "$rootfs"/. "$mnt"/
buildah umount "$ctr"
buildah config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --env UV_NATIVE_TLS=1 \
  --label "org.deploykit.base.script-sha256=$SCRIPT_SHA256" \
  --cmd /bin/bash "$ctr"
buildah commit --rm "$ctr" "$IMAGE" >/dev/null
ctr=""
if [ -n "${DEPLOYKIT_BASE_CACHE:-}" ]; then  # written aside, then renamed: never a partial archive
  rm -f "$DEPLOYKIT_BASE_CACHE"/bookworm-python-*.oci.tar
  buildah push --quiet "$IMAGE" "oci-archive:$archive.tmp:$IMAGE"
  mv "$archive.tmp" "$archive"
  echo "stored $archive"
fi
buildah images "$IMAGE"

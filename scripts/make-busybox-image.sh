#!/usr/bin/env bash
# Builds a tiny container image from Debian's static busybox, with no registry and no network:
#
#   OUTDIR/busybox-rootfs.tar   a plain root filesystem tar      -> podman import FILE localhost/busybox-local:latest
#   OUTDIR/busybox-oci.tar      an OCI image-layout archive      -> ctr images import FILE
#                               (its index names it localhost/busybox-local:latest through the
#                               io.containerd.image.name and org.opencontainers.image.ref.name annotations)
#
# Usage: scripts/make-busybox-image.sh [OUTDIR]      (default: build/images in the repository)
# Prints OUTDIR. Idempotent: nothing is rebuilt while both tars are newer than /bin/busybox and this
# script. The archives are reproducible (fixed order, owners and times), so the image digest is stable.
# Needs: busybox-static (/bin/busybox), tar, sha256sum.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$REPO/build/images}
BUSYBOX=${BUSYBOX:-/bin/busybox}
SELF=${BASH_SOURCE[0]}
REF=localhost/busybox-local:latest

[ -x "$BUSYBOX" ] || { echo "make-busybox-image: $BUSYBOX not found (apt-get install busybox-static)" >&2; exit 1; }
# The image has no C library, so a dynamically linked busybox would not start inside it.
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "make-busybox-image: $BUSYBOX is dynamically linked; install busybox-static" >&2
  exit 1
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOTFS_TAR=$OUT/busybox-rootfs.tar
OCI_TAR=$OUT/busybox-oci.tar

up_to_date() {
  local t
  for t in "$ROOTFS_TAR" "$OCI_TAR"; do
    [ -s "$t" ] && [ "$t" -nt "$BUSYBOX" ] && [ "$t" -nt "$SELF" ] || return 1
  done
}
if up_to_date; then
  echo "$OUT"
  exit 0
fi

# Image architecture in OCI (Go) terms.
case "$(uname -m)" in
  x86_64) ARCH=amd64 ;;
  aarch64) ARCH=arm64 ;;
  armv7l | armv6l) ARCH=arm ;;
  i?86) ARCH=386 ;;
  ppc64le) ARCH=ppc64le ;;
  s390x) ARCH=s390x ;;
  riscv64) ARCH=riscv64 ;;
  *) echo "make-busybox-image: unknown machine $(uname -m)" >&2; exit 1 ;;
esac

WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---- root filesystem: /bin/busybox plus one symlink per applet; sbin and usr/* point at bin ----
R=$WORK/rootfs
mkdir -p "$R"/{bin,dev,etc,proc,sys,run,var,root,usr,tmp}
chmod 1777 "$R/tmp"
chmod 700 "$R/root"
cp "$BUSYBOX" "$R/bin/busybox"
chmod 755 "$R/bin/busybox"
while read -r applet; do
  [ -n "$applet" ] && [ "$applet" != busybox ] && ln -s busybox "$R/bin/$applet"
done < <("$BUSYBOX" --list)
ln -s bin "$R/sbin"
ln -s ../bin "$R/usr/bin"
ln -s ../bin "$R/usr/sbin"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"

reproducible_tar() { # DIR OUTFILE ENTRIES...
  local dir=$1 out=$2
  shift 2
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$dir" -cf "$out" "$@"
}
reproducible_tar "$R" "$WORK/busybox-rootfs.tar" .

# ---- OCI image layout: blobs/sha256/<digest> for the layer, config and manifest; index.json names it ----
L=$WORK/layout
mkdir -p "$L/blobs/sha256"
# blob FILE: moves FILE into the blob store and sets DIGEST and SIZE.
blob() {
  DIGEST=$(sha256sum "$1" | cut -d' ' -f1)
  SIZE=$(stat -c %s "$1")
  mv "$1" "$L/blobs/sha256/$DIGEST"
}
cp "$WORK/busybox-rootfs.tar" "$WORK/layer"
blob "$WORK/layer"
LAYER_DIGEST=$DIGEST LAYER_SIZE=$SIZE   # uncompressed layer: its digest is also its diff_id

printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$ARCH" "$LAYER_DIGEST" >"$WORK/config"
blob "$WORK/config"
CONFIG_DIGEST=$DIGEST CONFIG_SIZE=$SIZE

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$CONFIG_DIGEST" "$CONFIG_SIZE" "$LAYER_DIGEST" "$LAYER_SIZE" >"$WORK/manifest"
blob "$WORK/manifest"
MANIFEST_DIGEST=$DIGEST MANIFEST_SIZE=$SIZE

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$MANIFEST_DIGEST" "$MANIFEST_SIZE" "$ARCH" "$REF" "$REF" >"$L/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$L/oci-layout"
reproducible_tar "$L" "$WORK/busybox-oci.tar" oci-layout index.json blobs

# Replace the outputs only when both are complete (each rename is atomic).
mv -f "$WORK/busybox-rootfs.tar" "$ROOTFS_TAR"
mv -f "$WORK/busybox-oci.tar" "$OCI_TAR"
echo "$OUT"

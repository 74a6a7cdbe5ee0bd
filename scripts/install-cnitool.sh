#!/usr/bin/env bash
# Builds cnitool (the CNI project's reference client) offline from Debian's source package of libcni:
# Debian's -dev package has libcni but not cnitool/, and the source builds in GOPATH mode against it.
# The source list is private to this script; the system's apt configuration is not touched.
#
# Output: build/tools/cnitool (override the directory with CALICO_TS_TOOLS). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${CALICO_TS_TOOLS:-$PWD/build/tools}
[ -x "$OUT/cnitool" ] && { echo "$OUT/cnitool"; exit 0; }
command -v go >/dev/null || { echo "install-cnitool: go not found (apt-get install golang-go)" >&2; exit 1; }
[ -d /usr/share/gocode/src/github.com/containernetworking/cni/libcni ] ||
  { echo "install-cnitool: libcni not found (apt-get install golang-github-appc-cni-dev)" >&2; exit 1; }

src="$OUT/src"
mkdir -p "$src/lists/partial"
echo "deb-src http://deb.debian.org/debian bookworm main" >"$src/sources.list"
APTO=(-o "Dir::Etc::SourceList=$src/sources.list" -o "Dir::Etc::SourceParts=/nonexistent" -o "Dir::State::Lists=$src/lists")
if ! ls "$src"/golang-github-appc-cni_*.orig.tar.* >/dev/null 2>&1; then
  apt-get "${APTO[@]}" update -qq
  (cd "$src" && apt-get "${APTO[@]}" source --download-only golang-github-appc-cni >/dev/null 2>&1)
fi
tarball=$(ls "$src"/golang-github-appc-cni_*.orig.tar.* | head -1)
rm -rf "$src/tree"
mkdir -p "$src/tree"
tar -C "$src/tree" --strip-components=1 -xf "$tarball"
(cd "$src/tree" && GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off GOFLAGS= CGO_ENABLED=0 \
  GOCACHE="$OUT/gocache" go build -trimpath -o "$OUT/cnitool" ./cnitool/)
echo "$OUT/cnitool"

#!/usr/bin/env bash
# Builds dist/calico and dist/calico-ipam: one self-contained JavaScript file each (ncc bundle with the
# etcd3 .proto files embedded), executable, started by node through env(1).
#
# Usage: scripts/build-binaries.sh [--sea]
#   --sea   also build dist/sea/calico and dist/sea/calico-ipam: Node single executable applications with
#           a V8 code cache, so a host needs no Node installed (each is a ~100 MB copy of node).
set -euo pipefail
cd "$(dirname "$0")/.."
SEA=0
for a in "$@"; do case $a in --sea) SEA=1 ;; *) echo "unknown argument $a" >&2; exit 2 ;; esac; done

node scripts/gen-etcd3-protos.mjs >/dev/null
mkdir -p dist build/ncc
# The -u drops NODE_EXTRA_CA_CERTS, which runtimes pass through from their own environment: Node would
# parse that bundle on every start (~45 ms). etcd TLS uses etcd_ca_cert_file, not that variable.
SHEBANG='#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS node'
for p in calico calico-ipam; do
  rm -rf "build/ncc/$p"
  npx --no-install ncc build "plugins/$p/main.ts" -o "build/ncc/$p" -q --target es2022 >/dev/null
  { echo "$SHEBANG"; cat "build/ncc/$p/index.js"; } >"dist/$p.tmp"
  chmod 755 "dist/$p.tmp"
  mv -f "dist/$p.tmp" "dist/$p"   # atomic: a runtime never execs a half-written file
  echo "built dist/$p ($(($(stat -c %s "dist/$p") / 1024)) KiB)"
done

if [ "$SEA" = 1 ]; then
  mkdir -p dist/sea
  for p in calico calico-ipam; do
    cfg="build/ncc/$p/sea.json"
    echo "{\"main\":\"build/ncc/$p/index.js\",\"output\":\"build/ncc/$p/sea.blob\",\"disableExperimentalSEAWarning\":true,\"useCodeCache\":true}" >"$cfg"
    node --experimental-sea-config "$cfg" >/dev/null
    cp "$(command -v node)" "dist/sea/$p.tmp"
    npx --no-install postject "dist/sea/$p.tmp" NODE_SEA_BLOB "build/ncc/$p/sea.blob" \
      --sentinel-fuse NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2 >/dev/null 2>&1
    mv -f "dist/sea/$p.tmp" "dist/sea/$p"
    echo "built dist/sea/$p (single executable)"
  done
fi

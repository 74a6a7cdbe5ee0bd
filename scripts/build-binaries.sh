#!/usr/bin/env bash
# Builds dist/calico and dist/calico-ipam: one self-contained JavaScript file each, executable, started by
# node through env(1). Each file is a small launcher (shared/launch/launcher.ts) that answers VERSION by
# itself, followed by the plugin in block comments (scripts/pack-payload.mjs): the plugin's ncc bundle as
# plain JavaScript, and the chunks it loads lazily (the etcd3/gRPC client, with etcd3's .proto files
# embedded) brotli-compressed.
#
# Usage: scripts/build-binaries.sh [--sea]
#   --sea   also build dist/sea/calico and dist/sea/calico-ipam: Node single executable applications with
#           a V8 code cache, so a host needs no Node installed (each is a ~100 MB copy of node). The main
#           script is the same launcher, and the same parts are its asset "parts" (a SEA's require() loads
#           only built-in modules, so the chunks cannot be files beside it).
set -euo pipefail
cd "$(dirname "$0")/.."
SEA=0
for a in "$@"; do case $a in --sea) SEA=1 ;; *) echo "unknown argument $a" >&2; exit 2 ;; esac; done

node scripts/gen-etcd3-protos.mjs >/dev/null
mkdir -p dist build
# Minified (-m): the files are less than half the size, which every start pays for (node reads and scans
# the whole file); the plugin itself compiles from a V8 code cache, so minifying costs it nothing.
# A private work dir per run, so two builds at once never read each other's halves.
NCC=$(mktemp -d build/ncc.XXXXXX)
trap 'rm -rf "$NCC"' EXIT
# The -u drops NODE_EXTRA_CA_CERTS, which runtimes pass through from their own environment: Node would
# parse that bundle on every start (~45 ms). etcd TLS uses etcd_ca_cert_file, not that variable.
# The -e code reads only the head of this file and evaluates the launcher in it (the text up to the first
# part): node never loads the whole ~540 KB file as a script, which cost every call 20-30 ms on a loaded
# machine (reading it as UTF-8 and compiling it). The launcher answers VERSION, hands calls to the node
# agent, or reads the parts it needs itself. `node calico` still works: the file is a valid script.
# Linux reads at most 255 bytes of a "#!" line, and the launcher must end within the head: both checked.
HEAD=32768
# Within an arrow function, so the head and the descriptor are not left in globals for the process's life.
SHEBANG="#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS node -e '((f,b,d)=>{f.readSync(d,b);f.closeSync(d);b=b.latin1Slice();(0,eval)(b.slice(b.indexOf(\"\\n\"),b.indexOf(\"\\n/*CALICO-TS-PART\")))})(require(\"fs\"),Buffer.alloc($HEAD),require(\"fs\").openSync(process.argv[1]))'"
ncc() { npx --no-install ncc build "$1" -o "$2" -q -m --target es2022 >/dev/null && [ -s "$2/index.js" ]; }

ncc shared/launch/launcher.ts "$NCC/launcher"
[ ${#SHEBANG} -le 255 ] || { echo "build: the #! line is ${#SHEBANG} bytes; Linux reads at most 255" >&2; exit 1; }
LC_ALL=C grep -q '[^[:print:][:space:]]' "$NCC/launcher/index.js" && { echo "build: the launcher is not ASCII; the #! line reads it as latin1" >&2; exit 1; }
launcher_bytes=$(($(stat -c %s "$NCC/launcher/index.js") + ${#SHEBANG} + 1024))
[ "$launcher_bytes" -le "$HEAD" ] || { echo "build: the launcher ($launcher_bytes bytes with the #! line) must fit in the $HEAD bytes the #! line reads" >&2; exit 1; }
for p in calico calico-ipam; do
  ncc "plugins/$p/main.ts" "$NCC/$p"
  out="dist/$p.tmp.$$"
  id="$p-$(date +%s%N)-$$"
  sed "s/__CALICO_TS_BUILD_ID__/$id/" "$NCC/launcher/index.js" >"$NCC/$p/launcher.js"
  node scripts/pack-payload.mjs "$NCC/$p" "$id" >"$NCC/$p/parts.txt"
  { echo "$SHEBANG"; cat "$NCC/$p/launcher.js" "$NCC/$p/parts.txt"; } >"$out"
  chmod 755 "$out"
  mv -f "$out" "dist/$p" # atomic: a runtime never execs a half-written file
  echo "built dist/$p ($(($(stat -c %s "dist/$p") / 1024)) KiB)"
done

if [ "$SEA" = 1 ]; then
  mkdir -p dist/sea
  for p in calico calico-ipam; do
    echo "{\"main\":\"$NCC/$p/launcher.js\",\"output\":\"$NCC/$p/sea.blob\",\"disableExperimentalSEAWarning\":true,\"useCodeCache\":true,\"assets\":{\"parts\":\"$NCC/$p/parts.txt\"}}" >"$NCC/$p/sea.json"
    node --experimental-sea-config "$NCC/$p/sea.json" >/dev/null 2>&1
    cp "$(command -v node)" "dist/sea/$p.tmp.$$"
    npx --no-install postject "dist/sea/$p.tmp.$$" NODE_SEA_BLOB "$NCC/$p/sea.blob" \
      --sentinel-fuse NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2 >/dev/null 2>&1
    mv -f "dist/sea/$p.tmp.$$" "dist/sea/$p"
    echo "built dist/sea/$p (single executable)"
  done
fi

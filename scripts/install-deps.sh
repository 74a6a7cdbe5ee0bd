#!/usr/bin/env bash
# Installs what the demo and the tests need on a Debian machine (idempotent; quick when all is present):
# Debian packages (etcd, iproute2, the Go reference CNI plugins, Go and libcni's source for cnitool,
# podman and containerd for the real-runtime tests), then the npm dependencies, then the build.
#
# Usage: scripts/install-deps.sh [--no-runtimes] [--sea]
#   --sea   build the self-contained binaries (dist/sea) too
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIMES=1 BUILD_ARGS=()
for a in "$@"; do
  case $a in
    --no-runtimes) RUNTIMES=0 ;;
    --sea) BUILD_ARGS+=(--sea) ;;
    *) echo "unknown argument $a" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "install-deps: run as root (network namespaces, veths and apt need it)" >&2; exit 1; }

pkgs=(etcd-server etcd-client iproute2 iptables iputils-ping procps util-linux jq openssl time hyperfine
      containernetworking-plugins golang-go golang-github-appc-cni-dev xz-utils ca-certificates)
[ "$RUNTIMES" = 1 ] && pkgs+=(podman containerd runc conmon busybox-static catatonit)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v node >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "install-deps: Node.js 20 or later is required (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

# npm ci only when the lock changed since the last install.
stamp=node_modules/.calico-ts-lock
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi
bash scripts/build-binaries.sh "${BUILD_ARGS[@]}"
bash scripts/install-cnitool.sh

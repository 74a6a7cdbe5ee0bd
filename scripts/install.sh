#!/usr/bin/env bash
# Installs the built plugins into the CNI binary directory and a network config into the CNI config
# directory, as a platform engineer would on each host.
#
# Usage: scripts/install.sh [--prefix DIR] [--dry-run] [--conf FILE] [--etcd-endpoints URLS] [--force]
#   --prefix DIR          install under DIR (DIR/opt/cni/bin, DIR/etc/cni/net.d); default /
#   --dry-run             print what would be done, change nothing
#   --conf FILE           the network config to install (default conf-examples/10-calico.conflist)
#   --etcd-endpoints URLS write these etcd endpoints into the installed config
#   --force               replace an existing config file of the same name
# Binaries are replaced atomically (copy, then rename), so a runtime never runs a half-written plugin.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX="" DRY=0 CONF=conf-examples/10-calico.conflist ENDPOINTS="" FORCE=0
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --conf) CONF=${2:?--conf needs a file}; shift 2 ;;
    --etcd-endpoints) ENDPOINTS=${2:?--etcd-endpoints needs URLs}; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install: unknown argument $1" >&2; exit 2 ;;
  esac
done
BIN_DIR=$PREFIX/opt/cni/bin
CONF_DIR=$PREFIX/etc/cni/net.d
for b in calico calico-ipam; do
  [ -x "dist/$b" ] || { echo "install: dist/$b missing: run scripts/build-binaries.sh first" >&2; exit 1; }
done
[ -f "$CONF" ] || { echo "install: config $CONF not found" >&2; exit 1; }

run() { if [ "$DRY" = 1 ]; then echo "would: $*"; else "$@"; fi; }

run mkdir -p "$BIN_DIR" "$CONF_DIR"
for b in calico calico-ipam; do
  run install -m 0755 "dist/$b" "$BIN_DIR/.$b.tmp"
  run mv -f "$BIN_DIR/.$b.tmp" "$BIN_DIR/$b"
done
dest=$CONF_DIR/$(basename "$CONF")
if [ -e "$dest" ] && [ "$FORCE" = 0 ]; then
  echo "install: $dest exists; keeping it (use --force to replace)" >&2
else
  if [ -n "$ENDPOINTS" ]; then
    tmp=$(mktemp)
    jq --arg ep "$ENDPOINTS" '(if .plugins then .plugins[] else . end) |= (if .type == "calico" then .etcd_endpoints = $ep else . end)' "$CONF" >"$tmp"
    run install -m 0644 "$tmp" "$dest"
    rm -f "$tmp"
  else
    run install -m 0644 "$CONF" "$dest"
  fi
fi
[ "$DRY" = 1 ] || echo "installed calico, calico-ipam -> $BIN_DIR; $(basename "$CONF") -> $CONF_DIR"

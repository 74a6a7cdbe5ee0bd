#!/usr/bin/env bash
# Installs the built plugins into the CNI binary directory and a network config into the CNI config
# directory, as a platform engineer would on each host; with --agent, the node agent's systemd unit too.
#
# Usage: scripts/install.sh [--prefix DIR] [--dry-run] [--conf FILE] [--etcd-endpoints URLS] [--force] [--sea] [--agent]
#   --prefix DIR          install under DIR (DIR/opt/cni/bin, DIR/etc/cni/net.d); default /
#   --dry-run             print what would be done, change nothing
#   --conf FILE           the network config to install (default conf-examples/10-calico.conflist, or
#                         conf-examples/50-calico-agent.conflist with --agent)
#   --etcd-endpoints URLS write these etcd endpoints into the installed config
#   --force               replace an existing config file of the same name
#   --sea                 install the self-contained build (dist/sea, from build-binaries.sh --sea): the
#                         host needs no Node.js
#   --agent               also install the node agent's unit (etc/systemd/system/calico-agent.service);
#                         on this host (no --prefix) with systemd running, enable and (re)start it
# Binaries are replaced atomically (copy, then rename), so a runtime never runs a half-written plugin. A
# running agent is restarted after its binary is replaced: it refuses calls from binaries of another
# build, which then run in their own process (slower) until it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX="" DRY=0 CONF="" ENDPOINTS="" FORCE=0 SEA=0 AGENT=0
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --conf) CONF=${2:?--conf needs a file}; shift 2 ;;
    --etcd-endpoints) ENDPOINTS=${2:?--etcd-endpoints needs URLs}; shift 2 ;;
    --force) FORCE=1; shift ;;
    --sea) SEA=1; shift ;;
    --agent) AGENT=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "install: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$CONF" ]; then
  if [ "$AGENT" = 1 ]; then CONF=conf-examples/50-calico-agent.conflist; else CONF=conf-examples/10-calico.conflist; fi
fi
SRC=dist BUILD=scripts/build-binaries.sh
[ "$SEA" = 1 ] && SRC=dist/sea BUILD="scripts/build-binaries.sh --sea"
BIN_DIR=$PREFIX/opt/cni/bin
CONF_DIR=$PREFIX/etc/cni/net.d
UNIT_DIR=$PREFIX/etc/systemd/system
UNIT=calico-agent.service
for b in calico calico-ipam; do
  [ -x "$SRC/$b" ] || { echo "install: $SRC/$b missing: run $BUILD first" >&2; exit 1; }
  # A self-contained binary older than the script build is another build's.
  if [ "$SEA" = 1 ] && [ "dist/$b" -nt "$SRC/$b" ]; then
    echo "install: $SRC/$b is older than dist/$b: run $BUILD" >&2
    exit 1
  fi
done
[ -f "$CONF" ] || { echo "install: config $CONF not found" >&2; exit 1; }
if [ "$AGENT" = 1 ] && command -v jq >/dev/null && ! jq -e '[(.plugins // [.])[] | select(.type == "calico") | .agent_socket // empty] | length > 0' "$CONF" >/dev/null; then
  echo "install: $CONF sets no agent_socket: its calls will not go to the agent" >&2
fi

run() { if [ "$DRY" = 1 ]; then echo "would: $*"; else "$@"; fi; }
# Only this host's systemd, and only when it runs: a --prefix tree is someone else's root.
host_systemd() { [ -z "$PREFIX" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

run mkdir -p "$BIN_DIR" "$CONF_DIR"
for b in calico calico-ipam; do
  run install -m 0755 "$SRC/$b" "$BIN_DIR/.$b.tmp"
  run mv -f "$BIN_DIR/.$b.tmp" "$BIN_DIR/$b"
done
dest=$CONF_DIR/$(basename "$CONF")
# Runtimes use the first config file by name: another one there may be the one in effect.
for other in "$CONF_DIR"/*.conf "$CONF_DIR"/*.conflist "$CONF_DIR"/*.json; do
  if [ -f "$other" ] && [ "$other" != "$dest" ]; then
    echo "install: $CONF_DIR also holds $(basename "$other"); runtimes use the first config file by name" >&2
  fi
done
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
# The agent's unit, its ExecStart fitted to the build installed: the self-contained binary starts by itself
# (it takes no node flags); the script build through node with the example unit's flags. A unit already
# installed (perhaps edited: another socket) is kept but for that, so switching builds never leaves it
# running node on an executable, or the script without its flags.
NODE_START=$(sed -nE 's|^ExecStart=(.*)/opt/cni/bin/calico agent.*$|\1|p' conf-examples/$UNIT)
fit_unit() {
  local start=$NODE_START
  [ "$SEA" = 1 ] && start=""
  sed -E "s|^ExecStart=.*/opt/cni/bin/calico agent(.*)$|ExecStart=${start}/opt/cni/bin/calico agent\1|" "$1"
}
unit_src="" unit_changed=0
if [ "$AGENT" = 1 ]; then unit_src=conf-examples/$UNIT; elif [ -f "$UNIT_DIR/$UNIT" ]; then unit_src=$UNIT_DIR/$UNIT; fi
if [ -n "$unit_src" ]; then
  fitted=$(mktemp)
  fit_unit "$unit_src" >"$fitted"
  if ! cmp -s "$fitted" "$UNIT_DIR/$UNIT"; then
    run mkdir -p "$UNIT_DIR"
    run install -m 0644 "$fitted" "$UNIT_DIR/$UNIT"
    unit_changed=1
  fi
  rm -f "$fitted"
fi
if host_systemd; then
  if [ "$AGENT" = 1 ]; then
    run systemctl daemon-reload
    run systemctl enable $UNIT
    run systemctl restart $UNIT
  elif systemctl -q is-active $UNIT; then
    if [ "$unit_changed" = 1 ]; then run systemctl daemon-reload; fi
    run systemctl restart $UNIT
  fi
elif [ "$AGENT" = 1 ]; then
  echo "install: start the agent on the host with: systemctl daemon-reload && systemctl enable --now $UNIT" >&2
fi
unit_note=""
if [ "$unit_changed" = 1 ]; then unit_note="; $UNIT -> $UNIT_DIR"; fi
[ "$DRY" = 1 ] || echo "installed calico, calico-ipam ($SRC) -> $BIN_DIR; $(basename "$CONF") -> $CONF_DIR$unit_note"

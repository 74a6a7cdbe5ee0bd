#!/usr/bin/env bash
# The two-host demo: two "hosts" (network namespaces joined by a veth link), one etcd, one IP pool, two
# pods on each host networked by the built calico + calico-ipam through cnitool. Each host claims its own
# /26 block; block routes are programmed as BIRD would (calico-ipam routes); pods ping each other on the
# same host and across hosts. Everything is torn down at the end, also on failure or Ctrl-C.
#
# Usage: scripts/demo.sh [--no-setup]     (--no-setup: skip scripts/install-deps.sh)
# Exit status: non-zero if any step or any ping fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SETUP=1
for a in "$@"; do case $a in --no-setup) SETUP=0 ;; *) echo "unknown argument $a" >&2; exit 2 ;; esac; done
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 1; }
[ "$SETUP" = 1 ] && bash scripts/install-deps.sh --no-runtimes

CNITOOL=${CNITOOL:-$ROOT/build/tools/cnitool}
IPAM=$ROOT/dist/calico-ipam
NET=demo-net
POOL=10.244.0.0/16
TAG=cts$$          # unique per run, so two demos never collide
HOSTS=(host-a host-b)
declare -A LINK_ADDR=([host-a]=10.99.0.1 [host-b]=10.99.0.2)
declare -A PEER=([host-a]=host-b [host-b]=host-a)
PODS=(a1 a2 b1 b2)
declare -A POD_HOST=([a1]=host-a [a2]=host-a [b1]=host-b [b2]=host-b)
declare -A POD_IP=()

STATE=$(mktemp -d /tmp/calico-ts-demo.XXXXXX)
ETCD_PID=""
cleanup() {
  set +e
  for p in "${PODS[@]}"; do
    h=${POD_HOST[$p]}
    if [ -e "/var/run/netns/$TAG-$p" ] && [ -e "/var/run/netns/$TAG-$h" ]; then
      ip netns exec "$TAG-$h" env NETCONFPATH="$STATE/$h" CNI_PATH="$ROOT/dist" "$CNITOOL" del "$NET" "/var/run/netns/$TAG-$p" >/dev/null 2>&1
    fi
    ip netns del "$TAG-$p" 2>/dev/null
  done
  for h in "${HOSTS[@]}"; do ip netns del "$TAG-$h" 2>/dev/null; done
  if [ -n "$ETCD_PID" ]; then
    kill "$ETCD_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$ETCD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$ETCD_PID" 2>/dev/null
  fi
  rm -rf "$STATE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n== %s\n' "$*"; }
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

say "etcd on loopback (and on a unix socket, which every network namespace can reach)"
CPORT=$(free_port); PPORT=$(free_port)
ETCD_EP=http://127.0.0.1:$CPORT
# etcd names the socket file after the URL's host, relative to its working directory.
(cd "$STATE" && exec setsid etcd --name demo --data-dir "$STATE/etcd" \
  --listen-client-urls "$ETCD_EP,unix://etcd.sock:0" --advertise-client-urls "$ETCD_EP" \
  --listen-peer-urls "http://127.0.0.1:$PPORT" --initial-advertise-peer-urls "http://127.0.0.1:$PPORT" \
  --initial-cluster "demo=http://127.0.0.1:$PPORT" --heartbeat-interval 10 --election-timeout 100 \
  --log-level error </dev/null >"$STATE/etcd.log" 2>&1) &
ETCD_PID=$!
SOCK_EP="unix://$STATE/etcd.sock:0"
for _ in $(seq 100); do ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EP" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EP" endpoint health
echo "etcd pid $ETCD_PID, $ETCD_EP and $SOCK_EP"

say "plugins"
for b in calico calico-ipam; do printf '%-12s VERSION -> %s\n' "$b" "$(CNI_COMMAND=VERSION "$ROOT/dist/$b" </dev/null)"; done

say "IP pool"
"$IPAM" pool add "$POOL" --name demo-pool --etcd-endpoints "$ETCD_EP"
"$IPAM" pool list --etcd-endpoints "$ETCD_EP"

say "two hosts joined by a veth link"
for h in "${HOSTS[@]}"; do
  ip netns add "$TAG-$h"
  ip -n "$TAG-$h" link set lo up
  ip netns exec "$TAG-$h" sysctl -q -w net.ipv4.ip_forward=1
done
ip -n "$TAG-host-a" link add eth0 type veth peer name eth0 netns "$TAG-host-b"
for h in "${HOSTS[@]}"; do
  ip -n "$TAG-$h" addr add "${LINK_ADDR[$h]}/24" dev eth0
  ip -n "$TAG-$h" link set eth0 up
  # Stand-in for the host's uplink: proxy ARP answers a pod's "who has 169.254.1.1" only when the host
  # has a route to that address.
  ip -n "$TAG-$h" route add default via "${LINK_ADDR[${PEER[$h]}]}"
  "$IPAM" node set "$h" --ipv4 "${LINK_ADDR[$h]}/24" --etcd-endpoints "$ETCD_EP" >/dev/null
  mkdir -p "$STATE/$h"
  cat >"$STATE/$h/10-demo.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$NET",
  "plugins": [
    {
      "type": "calico",
      "etcd_endpoints": "$SOCK_EP",
      "nodename": "$h",
      "log_level": "warn",
      "ipam": { "type": "calico-ipam" }
    }
  ]
}
EOF
  echo "$h: eth0 ${LINK_ADDR[$h]}/24"
done

say "pods, through cnitool run on their host"
for p in "${PODS[@]}"; do
  h=${POD_HOST[$p]}
  ip netns add "$TAG-$p"
  out=$(ip netns exec "$TAG-$h" env NETCONFPATH="$STATE/$h" CNI_PATH="$ROOT/dist" "$CNITOOL" add "$NET" "/var/run/netns/$TAG-$p")
  POD_IP[$p]=$(printf '%s' "$out" | jq -r '.ips[0].address' | cut -d/ -f1)
  echo "pod $p on $h: ${POD_IP[$p]}"
done

say "blocks in etcd (each host claimed its own)"
"$IPAM" show --etcd-endpoints "$ETCD_EP"

say "block routes, as BIRD would program them (calico-ipam routes --node <host> --apply, run on each host)"
for h in "${HOSTS[@]}"; do
  ip netns exec "$TAG-$h" "$IPAM" routes --node "$h" --apply --etcd-endpoints "$SOCK_EP" >/dev/null
done

for h in "${HOSTS[@]}"; do
  say "$h routes"
  ip -n "$TAG-$h" route show
done
for p in "${PODS[@]}"; do
  say "pod $p (${POD_HOST[$p]}): address and routes"
  ip -n "$TAG-$p" -4 -brief addr show dev eth0
  ip -n "$TAG-$p" route show
done

say "ping pod -> pod"
fails=0
pings=0
for pair in a1:a2 b2:b1 a1:b1 a2:b2 b1:a1 b2:a2; do
  from=${pair%%:*}; to=${pair##*:}
  scope=$([ "${POD_HOST[$from]}" = "${POD_HOST[$to]}" ] && echo "same host " || echo "cross-host")
  pings=$((pings + 1))
  if ip netns exec "$TAG-$from" ping -c 2 -i 0.2 -W 2 "${POD_IP[$to]}" >/dev/null 2>&1; then
    echo "ok    $scope  $from (${POD_IP[$from]}) -> $to (${POD_IP[$to]})"
  else
    echo "FAIL  $scope  $from (${POD_IP[$from]}) -> $to (${POD_IP[$to]})"
    fails=$((fails + 1))
  fi
done
echo "pings: $((pings - fails)) of $pings succeeded"

say "teardown"
for p in "${PODS[@]}"; do
  h=${POD_HOST[$p]}
  ip netns exec "$TAG-$h" env NETCONFPATH="$STATE/$h" CNI_PATH="$ROOT/dist" "$CNITOOL" del "$NET" "/var/run/netns/$TAG-$p"
  ip netns del "$TAG-$p"
done
left=$(ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EP" get --prefix /calico/ipam/v2/handle/ --keys-only | grep -c . || true)
echo "pods deleted; IPAM handles left in etcd: $left"
[ "$fails" = 0 ] && [ "$left" = 0 ] || { echo "demo: FAILED" >&2; exit 1; }
echo "demo: all pods reached each other, on the same host and across hosts"

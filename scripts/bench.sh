#!/usr/bin/env bash
# Benchmarks calico-ts against Debian's Go reference plugins (ptp + host-local) in one run: ADD/DEL
# latency through cnitool, VERSION, a parallel burst, peak RSS and IPAM scale on a 3-member etcd.
# Results: bench/results/latest.json and bench/results/latest.svg. Run as root.
#   BENCH_N (30)  BENCH_BURST (50)  BENCH_HOSTS (100)  BENCH_ADDRS (60)
set -euo pipefail
cd "$(dirname "$0")/.."
# --no-setup: use what is installed and built (dist/sea only if it is as new as dist/calico).
if [ "${1:-}" != --no-setup ]; then
  bash scripts/install-deps.sh --no-runtimes --sea # the self-contained build is measured too
fi
mkdir -p build/bench
npx --no-install ncc build bench/cni-bench.ts -o build/bench -q --target es2022 >/dev/null
CALICO_TS_ROOT=$PWD exec env -u NODE_EXTRA_CA_CERTS node build/bench/index.js

#!/usr/bin/env bash
# Sets up everything (Debian packages, npm ci, build, cnitool) and runs every test: type check, unit and
# property tests, and the integration tests on real etcd, real network namespaces, the built binaries,
# cnitool, podman and containerd. Run as root on Debian. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
# --sea: the self-contained build is tested too (test/sea.test.ts), on a host view without node.
bash scripts/install-deps.sh --sea
echo "== type check"
npx --no-install tsc --noEmit -p .
echo "== tests"
mkdir -p build
status=0
npx --no-install vitest run --reporter=default --reporter=json --outputFile.json=build/vitest-results.json "$@" || status=$?
node -e '
  const r = require("./build/vitest-results.json");
  const skipped = r.numPendingTests + r.numTodoTests;
  console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
' || true
exit $status

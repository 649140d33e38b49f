#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the pinned emulators (npm) and dev tools
# (PyPI, into .venv), the KCL client libraries for the multilang suite (npm aws-kcl, PyPI
# amazon-kclpy) and the status page test driver (npm: playwright-core), then runs every
# test of the workspace. Needs Rust, Node.js, Python 3 and Chromium (Debian's `chromium`, or
# CHROMIUM_PATH).
# Usage: scripts/test.sh [extra cargo test arguments]
#
# Without arguments (as CI runs it) the documentation examples run next, and the consumer's
# Kinesis suites (polling, aggregation, leased)
# then run a second time against kinesis-mock 0.5.2, the engine LocalStack 4.14.0 installs, so
# the docker compose demo's engine is tested too; the first pass uses 0.6.2. With arguments only
# the first pass runs (KINESIS_MOCK_PACKAGE=kinesis-local-0.5.2 selects 0.5.2 for it).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

echo "==> installing the emulators pinned in emulators/package-lock.json" >&2
npm ci --prefix emulators --no-audit --no-fund --loglevel=error >&2
echo "==> installing the Node.js KCL pinned in multilang/package-lock.json" >&2
npm ci --prefix multilang --no-audit --no-fund --loglevel=error >&2
echo "==> installing the status page test driver pinned in browser/package-lock.json" >&2
npm ci --prefix browser --no-audit --no-fund --loglevel=error >&2
echo "==> installing the dev tools pinned in requirements-dev.txt and amazon-kclpy into .venv" >&2
scripts/dev-venv.sh >/dev/null

echo "==> cargo test --workspace (kinesis-mock: ${KINESIS_MOCK_PACKAGE:-kinesis-local})" >&2
cargo test --workspace --all-targets --locked "$@"

if (($# == 0)); then
  # `--all-targets` leaves out documentation examples: they are compiled and run here.
  echo "==> cargo test --workspace --doc" >&2
  cargo test --workspace --doc --locked
  echo "==> consumer Kinesis suites again, against kinesis-mock 0.5.2 (LocalStack 4.14.0's)" >&2
  KINESIS_MOCK_PACKAGE=kinesis-local-0.5.2 \
    cargo test --locked -p consumer --test polling --test aggregation --test leased
fi

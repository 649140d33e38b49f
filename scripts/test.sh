#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the pinned emulators (npm) and dev tools
# (PyPI, into .venv), the KCL client libraries for the multilang suite (npm aws-kcl, PyPI
# amazon-kclpy) and the status page test driver (npm: playwright-core), then runs every test of
# the workspace. Needs Rust, Node.js, Python 3, Go (to build promtool and AWS's EC2 metadata
# mock, into .tools/bin) and Chromium (Debian's
# `chromium`, installed with apt-get when this runs as root, or CHROMIUM_PATH); a missing tool
# stops it at once with one line saying how to get it.
# Usage: scripts/test.sh [extra cargo test arguments]
#
# Without arguments (as CI runs it) the documentation's relative links and their #fragments are
# checked first (scripts/check-links.sh: lychee, offline, built from crates.io on first use
# into ~/.cache/kinesis-tools), then the Prometheus alert rules are checked and unit-tested with
# promtool (monitoring/check.sh, which builds the pinned promtool on first use), the
# documentation examples run after the workspace tests, the library crates are checked last
# (scripts/api-check.sh: MSRV, `cargo package`, `cargo doc`, cargo-semver-checks; the MSRV toolchain and
# cargo-semver-checks are installed first, with the other tools), and the consumer's
# Kinesis suites (polling, aggregation, leased)
# then run a second time against kinesis-mock 0.5.2, the engine LocalStack 4.14.0 installs, so
# the docker compose demo's engine is tested too; the first pass uses 0.6.2. With arguments only
# the first pass runs (KINESIS_MOCK_PACKAGE=kinesis-local-0.5.2 selects 0.5.2 for it).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# Every tool first, so that the suite never fails half-way for want of one: one line naming
# what is missing and how to get it.
missing() {
  echo "scripts/test.sh: $1 is missing: $2" >&2
  exit 1
}
command -v cargo >/dev/null || missing "cargo (Rust)" "install it from https://rustup.rs"
command -v node >/dev/null || missing "Node.js 20+" "install it from https://nodejs.org or your package manager"
command -v npm >/dev/null || missing "npm" "it comes with Node.js"
command -v python3 >/dev/null || missing "Python 3" "install python3 (with venv) from your package manager"
command -v go >/dev/null || missing "Go 1.26+ (it builds promtool for the alert rule tests and the EC2 metadata mock)" "install it from https://go.dev/dl/"
if [[ -n "${CHROMIUM_PATH:-}" ]]; then
  [[ -x "$CHROMIUM_PATH" ]] || {
    echo "scripts/test.sh: CHROMIUM_PATH=$CHROMIUM_PATH is not an executable file: point it at a Chromium or Chrome binary" >&2
    exit 1
  }
elif ! command -v chromium >/dev/null; then
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "==> installing Chromium for the status page tests (apt-get install chromium)" >&2
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    missing "Chromium (the status page tests drive it)" "apt-get install chromium as root, or set CHROMIUM_PATH to a Chromium or Chrome binary"
  fi
fi

if (($# == 0)); then
  # First: it needs nothing but cargo, takes seconds once lychee is built, and a broken link
  # should not wait for the whole suite.
  scripts/check-links.sh
fi

echo "==> installing the emulators pinned in emulators/package-lock.json" >&2
npm ci --prefix emulators --no-audit --no-fund --loglevel=error >&2
echo "==> installing the Node.js KCL pinned in multilang/package-lock.json" >&2
npm ci --prefix multilang --no-audit --no-fund --loglevel=error >&2
echo "==> installing the status page test driver pinned in browser/package-lock.json" >&2
npm ci --prefix browser --no-audit --no-fund --loglevel=error >&2
# AWS's EC2 instance metadata mock, for the test of CONSUMER_WORKER_CPU_SOURCE=kcl on EC2.
EC2_METADATA_MOCK_VERSION=v1.13.0
if [[ "$(cat .tools/bin/ec2-metadata-mock.version 2>/dev/null)" != "$EC2_METADATA_MOCK_VERSION" ]]; then
  echo "==> building the EC2 metadata mock (github.com/aws/amazon-ec2-metadata-mock $EC2_METADATA_MOCK_VERSION) into .tools/bin" >&2
  mkdir -p .tools/bin
  GOBIN="$PWD/.tools/bin" go install \
    "github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@$EC2_METADATA_MOCK_VERSION"
  echo "$EC2_METADATA_MOCK_VERSION" >.tools/bin/ec2-metadata-mock.version
fi
echo "==> installing the dev tools pinned in requirements-dev.txt and amazon-kclpy into .venv" >&2
scripts/dev-venv.sh >/dev/null
if (($# == 0)); then
  echo "==> installing the library checks' tools (scripts/api-check.sh --install)" >&2
  scripts/api-check.sh --install
fi

if (($# == 0)); then
  echo "==> Prometheus alert rules: promtool check rules, promtool test rules" >&2
  monitoring/check.sh
fi

echo "==> cargo test --workspace (kinesis-mock: ${KINESIS_MOCK_PACKAGE:-kinesis-local})" >&2
cargo test --workspace --all-targets --locked "$@"

if (($# == 0)); then
  # `--all-targets` leaves out documentation examples: they are compiled and run here.
  echo "==> cargo test --workspace --doc" >&2
  cargo test --workspace --doc --locked
  echo "==> consumer Kinesis suites again, against kinesis-mock 0.5.2 (LocalStack 4.14.0's)" >&2
  KINESIS_MOCK_PACKAGE=kinesis-local-0.5.2 \
    cargo test --locked -p kinesis-consumer --test polling --test aggregation --test leased
  echo "==> library crates: MSRV, cargo package, cargo doc, API baseline (scripts/api-check.sh)" >&2
  scripts/api-check.sh
fi

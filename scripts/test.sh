#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the pinned emulators (npm) and dev tools
# (PyPI, into .venv), then runs every test of the workspace. Needs Rust, Node.js and Python 3.
# Usage: scripts/test.sh [extra cargo test arguments]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

echo "==> installing the emulators pinned in emulators/package-lock.json" >&2
npm ci --prefix emulators --no-audit --no-fund --loglevel=error >&2
echo "==> installing the dev tools pinned in requirements-dev.txt into .venv" >&2
scripts/dev-venv.sh >/dev/null

echo "==> cargo test --workspace" >&2
cargo test --workspace --all-targets --locked "$@"

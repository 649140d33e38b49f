#!/usr/bin/env bash
# Builds and installs what bench/run.py needs: release binaries, the emulators, the Node.js peer
# and the AWS CLI (.venv). Usage: bench/prepare.sh && python3 bench/run.py
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
cargo build --release --locked -p producer --bin producer --example plain_sdk_peer
cargo build --release --locked -p consumer --bin consumer
npm ci --prefix emulators --no-audit --no-fund --loglevel=error
npm ci --prefix bench/node-peer --no-audit --no-fund --loglevel=error
scripts/dev-venv.sh >/dev/null

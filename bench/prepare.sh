#!/usr/bin/env bash
# Builds and installs what bench/run.py needs: release binaries, the emulators, the Node.js peer,
# the AWS CLI (.venv) and, when Java and Maven are installed, the KPL peer (interop/java; without
# them, run `python3 bench/run.py --no-kpl`). Usage: bench/prepare.sh && python3 bench/run.py
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
cargo build --release --locked -p kinesis-producer --bin producer --example plain_sdk_peer
cargo build --release --locked -p kinesis-consumer --bin consumer
npm ci --prefix emulators --no-audit --no-fund --loglevel=error
npm ci --prefix bench/node-peer --no-audit --no-fund --loglevel=error
scripts/dev-venv.sh >/dev/null
if command -v java >/dev/null && command -v mvn >/dev/null; then
  mvn -B -q -f interop/java/pom.xml package
else
  echo "java or mvn missing: the KPL rows need them; run python3 bench/run.py --no-kpl" >&2
fi

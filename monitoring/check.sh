#!/usr/bin/env bash
# Checks the Prometheus alert rules with Prometheus's own promtool: `promtool check rules` on
# monitoring/prometheus/alerts.yml, then `promtool test rules` on its unit tests
# (alerts.test.yml, one or more per alert). scripts/test.sh runs it.
#
# promtool comes from the Go module proxy at the version pinned below, built with
# `go install` into .tools/bin on first use (needs Go 1.26 or newer; the first build downloads
# the Prometheus module's dependencies, a few minutes).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

PROMETHEUS_MODULE_VERSION=v0.316.0
bin="$repo/.tools/bin"
promtool="$bin/promtool"
stamp="$bin/promtool.version"

if [[ ! -x "$promtool" || "$(cat "$stamp" 2>/dev/null)" != "$PROMETHEUS_MODULE_VERSION" ]]; then
  command -v go >/dev/null || {
    echo "monitoring/check.sh: promtool is built with Go, which is not installed (https://go.dev/dl/ or apt-get install golang)" >&2
    exit 1
  }
  echo "==> building promtool (github.com/prometheus/prometheus $PROMETHEUS_MODULE_VERSION) into .tools/bin" >&2
  mkdir -p "$bin"
  GOBIN="$bin" go install \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION"
  echo "$PROMETHEUS_MODULE_VERSION" >"$stamp"
fi

"$promtool" check rules monitoring/prometheus/alerts.yml
"$promtool" test rules monitoring/prometheus/alerts.test.yml

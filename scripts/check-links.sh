#!/usr/bin/env bash
# Checks every relative link of the documentation (README.md, ARCHITECTURE.md and docs/), and
# the #fragment of each, with lychee in offline mode: a link to a missing file or to a heading
# that does not exist fails it. Links to other sites are not checked (no network). Links inside
# code blocks are not links. scripts/test.sh runs it first.
#
# lychee comes from crates.io at the version pinned below, built with `cargo install --locked`
# on first use into ${XDG_CACHE_HOME:-~/.cache}/kinesis-tools/lychee-<version>, outside the
# clone, so every clone on a machine shares one build. The build takes about 8 CPU-minutes (21
# minutes of wall time measured on a shared 2-core machine with CARGO_BUILD_JOBS=1); only a
# finished build is moved into place, so an interrupted one is built again.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

LYCHEE_VERSION=0.24.2
root="${XDG_CACHE_HOME:-$HOME/.cache}/kinesis-tools/lychee-$LYCHEE_VERSION"
lychee="$root/bin/lychee"

if [[ ! -x "$lychee" ]]; then
  command -v cargo >/dev/null || {
    echo "scripts/check-links.sh: lychee is built with cargo, which is not installed (https://rustup.rs)" >&2
    exit 1
  }
  echo "==> building lychee $LYCHEE_VERSION (crates.io) into $root, once per machine" >&2
  mkdir -p "$(dirname "$root")"
  partial="$(mktemp -d "$root.partial.XXXXXX")"
  trap 'rm -rf "$partial"' EXIT
  # Without CARGO_TARGET_DIR cargo builds in a temporary folder and removes it afterwards,
  # instead of adding lychee's build to the workspace's target folder. Email checks are left
  # out (--no-default-features): offline mode never makes them.
  env -u CARGO_TARGET_DIR cargo install lychee --version "$LYCHEE_VERSION" --locked \
    --no-default-features --root "$partial" --quiet
  # A concurrent run may have finished first: then its build stays.
  mv -T "$partial" "$root" 2>/dev/null || [[ -x "$lychee" ]]
fi

echo "==> checking the documentation's relative links (lychee $LYCHEE_VERSION, offline)" >&2
"$lychee" --offline --include-fragments --no-progress README.md ARCHITECTURE.md docs

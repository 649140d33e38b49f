#!/usr/bin/env bash
# Checks the library crates (common/, producer/, consumer/) as a Rust user gets them
# (docs/library.md says what is promised); scripts/test.sh runs it:
#
# 1. MSRV: `cargo check` of the library crates (libraries and binaries) with the toolchain of the
#    workspace's `rust-version`, installed by rustup (minimal profile) when missing.
# 2. `cargo package` of the library crates together (path dependencies packaged as one), with
#    verification: each package builds on its own, from its files and metadata alone.
#    Then `cargo doc` of the same crates with warnings as errors: the documentation docs.rs
#    would build, with no broken or private intra-doc link.
# 3. The API against a baseline with cargo-semver-checks: no breaking change within a version
#    series (0.1.x, 0.2.x, 1.x, ...). The baseline of a crate is the oldest commit of this
#    history where the crate already has its current name and version series and this script
#    exists, so a fresh `git clone` has it (not a shallow one). A deliberate breaking change
#    raises the version (0.1.x to 0.2.0), which moves the baseline to that commit.
#
# cargo-semver-checks is built from crates.io at the version pinned below, once, into
# $KINESIS_TOOLS_DIR (default ~/.cache/kinesis-tools), which outlives the clone; the first build
# takes several minutes (see docs/library.md for a measured figure).
#
# Usage: scripts/api-check.sh            # all the checks
#        scripts/api-check.sh --install  # only install what they need (scripts/test.sh does it first)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

SEMVER_CHECKS_VERSION=0.51.0
LIBRARY_DIRS=(common producer consumer)
tools="${KINESIS_TOOLS_DIR:-$HOME/.cache/kinesis-tools}"
semver_root="$tools/cargo-semver-checks-$SEMVER_CHECKS_VERSION"
semver_checks="$semver_root/bin/cargo-semver-checks"
msrv="$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)"
[[ -n "$msrv" ]] || {
  echo "scripts/api-check.sh: no rust-version in Cargo.toml's [workspace.package]" >&2
  exit 1
}

install() {
  command -v rustup >/dev/null || {
    echo "scripts/api-check.sh: rustup is missing: the MSRV check installs Rust $msrv with it (https://rustup.rs)" >&2
    exit 1
  }
  if ! rustup run "$msrv" rustc --version >/dev/null 2>&1; then
    echo "==> installing Rust $msrv (the workspace's rust-version) with rustup" >&2
    rustup toolchain install "$msrv" --profile minimal >&2
  fi
  if [[ ! -x "$semver_checks" ]]; then
    echo "==> building cargo-semver-checks $SEMVER_CHECKS_VERSION from crates.io into $semver_root" >&2
    # Its own temporary target directory, not the workspace's.
    env -u CARGO_TARGET_DIR cargo install cargo-semver-checks --locked \
      --version "$SEMVER_CHECKS_VERSION" --root "$semver_root" >&2
  fi
}

install
if [[ "${1:-}" == "--install" ]]; then
  exit 0
fi

# The package name and version a crate folder declares (the first ones of its Cargo.toml: its
# [package] section comes first).
field() { sed -n "s/^$2 = \"\(.*\)\"\$/\1/p" "$1" | head -1; }
packages=()
for dir in "${LIBRARY_DIRS[@]}"; do
  packages+=("$(field "$dir/Cargo.toml" name)")
done
package_args=()
for name in "${packages[@]}"; do
  package_args+=(-p "$name")
done

# The checks build in a target directory of their own under $tools, which outlives the
# clone like the tools: a fresh clone then rebuilds only the workspace's crates, not every
# dependency with two toolchains and for the baseline (about 15 minutes on 2 cores).
export CARGO_TARGET_DIR="$tools/api-check-target"
# The workspace's own crates are built again by every run (a clone elsewhere gives them other
# hashes), and their old builds would pile up there, hundreds of MB a run: they go first, and
# nothing incremental is kept of them.
export CARGO_INCREMENTAL=0
cargo clean --quiet "${package_args[@]}"

echo "==> MSRV: cargo +$msrv check of ${packages[*]}" >&2
cargo "+$msrv" check --locked --lib --bins "${package_args[@]}"

echo "==> cargo package of ${packages[*]}, verified" >&2
# Verifying a crate that depends on another of ours unpacks that one's new package into
# cargo's registry sources, but keeps a folder already there under the same name and version:
# one left by an earlier run, of other content (the version is not raised for each change of
# unpublished work). Those folders go first, so each run verifies what it packaged.
for dir in "${LIBRARY_DIRS[@]}"; do
  unpacked="$(field "$dir/Cargo.toml" name)-$(field "$dir/Cargo.toml" version)"
  rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$unpacked"
done
# --allow-dirty: a working copy with changes is what a developer runs the tests on.
cargo package --locked --allow-dirty "${package_args[@]}"

echo "==> cargo doc of ${packages[*]}, warnings as errors" >&2
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps "${package_args[@]}"

# The version series a version belongs to: 0.y for 0.y.z, x for x.y.z.
series() {
  local major minor
  IFS=. read -r major minor _ <<<"$1"
  if [[ "$major" == 0 ]]; then echo "0.$minor"; else echo "$major"; fi
}

if [[ "$(git rev-parse --is-shallow-repository)" == true ]]; then
  echo "scripts/api-check.sh: this clone is shallow and the API baseline is a commit of its history: run git fetch --unshallow" >&2
  exit 1
fi
# Commits oldest first; the first one where the crate has its current name and series is its
# baseline. Crates with the same baseline are checked in one run.
# First parents only: the commits of this branch itself, not those of a branch merged into it
# (a crate renamed on a branch and again on main at the merge has one baseline, main's).
mapfile -t history < <(git rev-list --reverse --first-parent HEAD)
declare -A by_baseline=()
for i in "${!LIBRARY_DIRS[@]}"; do
  dir="${LIBRARY_DIRS[$i]}"
  name="${packages[$i]}"
  want="$(series "$(field "$dir/Cargo.toml" version)")"
  baseline=""
  for commit in "${history[@]}"; do
    git cat-file -e "$commit:scripts/api-check.sh" 2>/dev/null || continue
    manifest="$(git show "$commit:$dir/Cargo.toml" 2>/dev/null)" || continue
    [[ "$(field /dev/stdin name <<<"$manifest")" == "$name" ]] || continue
    [[ "$(series "$(field /dev/stdin version <<<"$manifest")")" == "$want" ]] || continue
    baseline="$commit"
    break
  done
  if [[ -z "$baseline" ]]; then
    # A crate new in this working copy (or renamed, or its series raised, and not committed
    # yet): nothing to compare with.
    echo "==> $name $want: no commit has it yet, no API baseline to check against" >&2
    continue
  fi
  by_baseline[$baseline]+=" -p $name"
done
for baseline in "${!by_baseline[@]}"; do
  echo "==> cargo-semver-checks${by_baseline[$baseline]} against $(git log -1 --format='%h (%s)' "$baseline" | cut -c1-80)" >&2
  # shellcheck disable=SC2086 # the -p arguments are words
  "$semver_checks" semver-checks check-release ${by_baseline[$baseline]} \
    --baseline-rev "$baseline" --release-type minor
done

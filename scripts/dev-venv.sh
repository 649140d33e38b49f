#!/usr/bin/env bash
# Makes sure .venv (gitignored) holds exactly the tools pinned in requirements-dev.txt, and
# amazon-kclpy as pinned in multilang/requirements-kclpy.txt (for consumer/tests/multilang.rs).
# Installs only when the venv is missing or requirements-dev.txt changed since the last install.
# Usage: scripts/dev-venv.sh   (prints the venv's bin directory on stdout)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV_DIR:-$repo/.venv}"
req="$repo/requirements-dev.txt"
stamp="$venv/.requirements-dev.installed"

# One installer at a time (lint and tests may start together); the lock is on the requirements file.
if command -v flock >/dev/null 2>&1; then
  exec 9<"$req"
  flock 9
fi

if [[ ! -x "$venv/bin/python" ]]; then
  echo "dev-venv: creating $venv" >&2
  "${PYTHON:-python3}" -m venv "$venv"
fi
if ! cmp -s "$req" "$stamp"; then
  echo "dev-venv: installing $req into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
  cp "$req" "$stamp"
fi
# amazon-kclpy (multilang/requirements-kclpy.txt): its sdist, unpacked, not built (see there).
kclpy_req="$repo/multilang/requirements-kclpy.txt"
kclpy_stamp="$venv/.requirements-kclpy.installed"
if ! cmp -s "$kclpy_req" "$kclpy_stamp"; then
  echo "dev-venv: installing $kclpy_req into $venv (without its jars)" >&2
  download="$(mktemp -d)"
  "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary :all: --require-hashes -r "$kclpy_req" -d "$download" >&2
  "$venv/bin/python" - "$download" "$venv" <<'PY'
import glob, os, sys, sysconfig, tarfile
download, venv = sys.argv[1], sys.argv[2]
site = sysconfig.get_paths()["purelib"]
samples = os.path.join(venv, "share", "amazon-kclpy-samples")
(sdist,) = glob.glob(os.path.join(download, "amazon_kclpy-*.tar.gz"))
with tarfile.open(sdist) as tar:
    for member in tar.getmembers():
        parts = member.name.split("/", 1)
        if len(parts) < 2 or not member.isfile():
            continue
        rest = parts[1]
        if rest.startswith("amazon_kclpy/"):
            target = os.path.join(site, rest)
        elif rest.startswith("samples/"):
            target = os.path.join(samples, rest[len("samples/"):])
        else:
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with tar.extractfile(member) as src, open(target, "wb") as dst:
            dst.write(src.read())
PY
  rm -rf "$download"
  cp "$kclpy_req" "$kclpy_stamp"
fi
printf '%s\n' "$venv/bin"

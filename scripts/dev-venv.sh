#!/usr/bin/env bash
# Makes sure .venv (gitignored) holds exactly the tools pinned in requirements-dev.txt.
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
printf '%s\n' "$venv/bin"

#!/usr/bin/env python3
"""Print the `environment:` block of one docker-compose.yml service, as the service would see it.

scripts/run-local.sh uses this so that the host run and the compose stack cannot drift: the
variable names and values come from docker-compose.yml itself.

    compose_env.py SERVICE [--file docker-compose.yml] [--endpoint URL] [--set NAME=VALUE ...]
                   [--format nul|env]

- `${VAR:-default}`, `${VAR-default}`, `${VAR}`, `$VAR` and `$$` are interpolated from the
  current environment the way `docker compose` does it; `${VAR:?message}` / `${VAR?message}`
  fail when VAR is unset (or empty, with the colon).
- A variable of the block that is also set in the current environment takes that value: extra
  environment given to run-local.sh overrides the compose file.
- `--endpoint URL` replaces every AWS_ENDPOINT_URL* value (the compose file points at the
  `localstack` container, which does not exist on the host); `--set` adds or forces a value.
  Both win over the current environment.
- Output: NAME=VALUE entries, NUL-terminated (`--format nul`, default) or one per line
  (`--format env`, for people to read).

Needs PyYAML (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import yaml

_INTERPOLATION = re.compile(
    r"""\$(?:
        (?P<escaped>\$)
      | \{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}
      | (?P<named>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<invalid>)
    )""",
    re.VERBOSE,
)


class ComposeError(Exception):
    pass


def interpolate(value: str, env: dict[str, str], where: str) -> str:
    """Compose-style variable substitution of one value."""

    def substitute(m: re.Match[str]) -> str:
        if m.group("escaped") is not None:
            return "$"
        if m.group("named") is not None:
            return env.get(m.group("named"), "")
        name = m.group("braced")
        if name is None:
            raise ComposeError(f"{where}: invalid interpolation in {value!r}")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        missing = current is None or (op is not None and op.startswith(":") and current == "")
        if op is None:
            return current or ""
        if op.endswith("-"):
            return arg if missing else current  # type: ignore[return-value]
        if missing:  # `?` and `:?`
            raise ComposeError(f"{where}: {name} is required: {arg or 'not set'}")
        return current  # type: ignore[return-value]

    return _INTERPOLATION.sub(substitute, value)


def scalar(value: object) -> str | None:
    """A YAML scalar as the string compose passes to the container (None: take it from the host)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ComposeError(f"environment value {value!r} is not a scalar")


def raw_environment(compose: dict, service: str) -> list[tuple[str, str | None]]:
    services = compose.get("services") or {}
    if service not in services:
        raise ComposeError(f"no service {service!r} (services: {', '.join(services)})")
    block = services[service].get("environment") or {}
    pairs: list[tuple[str, str | None]] = []
    if isinstance(block, dict):
        for name, value in block.items():
            pairs.append((str(name), scalar(value)))
    elif isinstance(block, list):
        for item in block:
            name, sep, value = str(item).partition("=")
            pairs.append((name, value if sep else None))
    else:
        raise ComposeError(f"services.{service}.environment is neither a mapping nor a list")
    return pairs


def service_environment(
    compose: dict,
    service: str,
    env: dict[str, str],
    endpoint: str | None,
    forced: dict[str, str],
) -> dict[str, str]:
    result: dict[str, str] = {}
    for name, value in raw_environment(compose, service):
        where = f"services.{service}.environment.{name}"
        if name in env:
            result[name] = env[name]
        elif value is not None:
            result[name] = interpolate(value, env, where)
        # `NAME` without a value and not set here: compose leaves it unset too.
        if endpoint is not None and name.startswith("AWS_ENDPOINT_URL"):
            result[name] = endpoint
    result.update(forced)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("service")
    parser.add_argument(
        "--file",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "docker-compose.yml",
    )
    parser.add_argument("--endpoint", help="replaces every AWS_ENDPOINT_URL* value")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--format", choices=["nul", "env"], default="nul")
    args = parser.parse_args(argv)

    forced = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--set wants NAME=VALUE, got {item!r}")
        forced[name] = value

    try:
        compose = yaml.safe_load(args.file.read_text(encoding="utf-8"))
        values = service_environment(compose, args.service, dict(os.environ), args.endpoint, forced)
    except (OSError, yaml.YAMLError, ComposeError) as e:
        print(f"compose_env: {e}", file=sys.stderr)
        return 1

    end = "\0" if args.format == "nul" else "\n"
    for name, value in values.items():
        if args.format == "env" and "\n" in value:
            print(f"compose_env: {name} has a newline; use --format nul", file=sys.stderr)
            return 1
        sys.stdout.write(f"{name}={value}{end}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

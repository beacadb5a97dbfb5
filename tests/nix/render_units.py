"""Render unit files from the evaluated modules, the way NixOS's systemd-lib writes them.

The evaluated units (tests/nix/eval.nix, committed as tests/nix/golden.json) hold what a NixOS
module sets: unitConfig, serviceConfig, environment, wantedBy, after, wants, requires,
conflicts, partOf; for a socket (a key ending in `.socket`) socketConfig and listenStreams.
NixOS turns them into a unit file (nixos/lib/systemd-lib.nix, `attrsToSection`,
`serviceToUnit`, `socketToUnit`): list values become one line each, booleans `true`/`false`,
the dependency lists one space-separated line, each environment variable one
`Environment="K=V"` line quoted as JSON, each listenStreams entry one `ListenStream=` line
before the socketConfig. NixOS installs WantedBy= as symlinks; here it is an [Install]
section, which systemd-analyze reads the same way.

    render(host, unit, substitutions)   # text of `unit` on `host` from the golden file
    render_unit(data, substitutions)    # text of one evaluated unit (a dict from eval.nix)

`substitutions` maps strings (the stub store paths in golden["packages"], or any other) to what
they should be on the machine that runs the unit, e.g. the llama-cpp stub path to a directory
holding a real bin/llama-server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).with_name("golden.json")

STORE_PATH = re.compile(r"/nix/store/[0-9a-z]{32}-[A-Za-z0-9+\-._?=]+")

_DEPENDENCIES = (
    ("After", "after"),
    ("Wants", "wants"),
    ("Requires", "requires"),
    ("Conflicts", "conflicts"),
    ("PartOf", "partOf"),
)


def load_golden(path: Path = GOLDEN) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _value(value: object) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _section(items: Mapping[str, Any]) -> list[str]:
    lines = []
    for key, value in items.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"{key}={_value(v)}")
    return lines


def render_unit(data: Mapping[str, Any], substitutions: Mapping[str, str] | None = None) -> str:
    unit: list[str] = ["[Unit]"]
    if data.get("description"):
        unit.append(f"Description={data['description']}")
    for key, attr in _DEPENDENCIES:
        if data.get(attr):
            unit.append(f"{key}={' '.join(data[attr])}")
    unit += _section(data.get("unitConfig", {}))

    if "socketConfig" in data or "listenStreams" in data:
        service = ["[Socket]", *(f"ListenStream={s}" for s in data.get("listenStreams", []))]
        service += _section(data.get("socketConfig", {}))
    else:
        service = ["[Service]"]
        for name, value in data.get("environment", {}).items():
            if value is not None:
                service.append(f"Environment={json.dumps(f'{name}={value}')}")
        service += _section(data.get("serviceConfig", {}))

    install = ["[Install]", *(f"WantedBy={t}" for t in data.get("wantedBy", []))]
    text = "\n".join([*unit, "", *service, "", *install]) + "\n"
    for old, new in (substitutions or {}).items():
        text = text.replace(old, new)
    return text


def render(
    host: str,
    unit: str,
    substitutions: Mapping[str, str] | None = None,
    golden: Path = GOLDEN,
) -> str:
    """The unit file `unit` (e.g. "llama-server-main.service", "llama-server-main.socket") of
    hosts/<host>.nix."""
    hosts = load_golden(golden)["hosts"]
    if host not in hosts:
        raise KeyError(f"no host {host!r} in {golden} (have: {', '.join(sorted(hosts))})")
    units = hosts[host]["units"]
    if unit not in units:
        raise KeyError(f"no unit {unit!r} on {host} (have: {', '.join(sorted(units))})")
    return render_unit(units[unit], substitutions)


def store_paths(text: str) -> set[str]:
    """The /nix/store/<hash>-<name> prefixes a rendered unit refers to."""
    return set(STORE_PATH.findall(text))

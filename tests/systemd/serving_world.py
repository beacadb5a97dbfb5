"""One container set up as a NixOS host from tests/nix/golden.json would be, for the
pull-to-serving tests and bench/pull_to_serving.py.

    with serving_world(base, llama_server) as w:
        w.ct.model_pull([], env=w.pull_env)

What it sets up, as the NixOS modules would:
- the `inference` system user and group (users.users.inference, isSystemUser);
- the state root /var/lib/inference (tmpfiles `d /var/lib/inference 0755 root root`), bound
  read-write from `base/state` so the test can look at it from the host;
- /etc/inference/models.json: the host's manifest from golden.json, unchanged;
- the host's units (services and sockets) rendered from golden.json, installed and enabled. The
  runtime package of each (a /nix/store path in the unit) is a directory bound at that very
  store path, so the unit file is what NixOS writes, byte for byte, except the substitutions
  listed in `overrides`; the system tools the units use (systemd, util-linux, the on-demand
  script) are this machine's, bound the same way (`system_tools`);
- the host's systemd.tmpfiles.rules, applied with systemd-tmpfiles.

The models come from a loopback Hub (model_pull.devhub) serving `base/hub`, run inside the
container as `devhub.service`: the repos of the host's manifest, with tiny models under the
declared file names.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from container import PROJECT, SystemdContainer

from loopback_hub import TestHub as DevHub  # the package's DevHub, with fault injection

sys.path.insert(0, str(PROJECT / "tests" / "nix"))
from render_units import load_golden, render, store_paths

logger = logging.getLogger(__name__)

STATE_ROOT = "/var/lib/inference"
MANIFEST = "/etc/inference/models.json"
HUB_PORT = 18990
HUB_URL = f"http://127.0.0.1:{HUB_PORT}"
SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" \
    / "site-packages"
# Where the probe's code is bound inside the container: outside /tmp and /root, which the
# units' own PrivateTmp and ProtectHome hide (a checkout or venv may live in either).
PROBE_ROOT = "/opt/model-pull-test"
PROBE_BINDS = [
    (str(SITE), f"{PROBE_ROOT}/site-packages", True),
    (str(PROJECT / "helper"), f"{PROBE_ROOT}/helper", True),
    (str(PROJECT / "tests" / "systemd"), f"{PROBE_ROOT}/probe", True),
]


@dataclass
class World:
    ct: SystemdContainer
    hub: DevHub
    base: Path
    state: Path  # the host side of /var/lib/inference
    golden: dict[str, Any]
    pull_env: dict[str, str] = field(default_factory=dict)

    def unit(self, unit: str) -> dict[str, str]:
        """ActiveState, SubState, MainPID, ConditionResult, Result of a unit."""
        props = "ActiveState,SubState,MainPID,ConditionResult,Result,NRestarts"
        out = self.ct.run(["systemctl", "show", unit, "-p", props]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_journal(self, unit: str, text: str, timeout: float = 30) -> bool:
        """Whether `text` shows up in the unit's journal within `timeout` seconds (journald
        takes the unit's output asynchronously)."""
        deadline = time.monotonic() + timeout
        while text not in self.ct.journal(unit):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def link(self, name: str) -> str:
        """Where models/<name> points (relative), or '' when absent."""
        path = self.state / "models" / name
        return str(path.readlink()) if path.is_symlink() else ""

    def store(self) -> list[str]:
        store = self.state / "store"
        return sorted(p.name for p in store.iterdir()) if store.is_dir() else []

    def model_pull(self, *args: str, timeout: float = 300) -> Any:
        return self.ct.model_pull(list(args), env=self.pull_env, timeout=timeout)


def llama_server_binary() -> Path:
    """The llama-server binary: $LLAMA_SERVER, or scripts/build-llama-server.sh (cached;
    a cold build takes ~6 minutes on 2 cores)."""
    if os.environ.get("LLAMA_SERVER"):
        return Path(os.environ["LLAMA_SERVER"])
    proc = subprocess.run([str(PROJECT / "scripts/build-llama-server.sh")], capture_output=True,
                          text=True, timeout=1200, check=False)
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-llama-server.sh failed:\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def package_dir(base: Path, name: str, files: Mapping[str, str | Path], mode: int = 0o755) -> Path:
    """A stand-in for a /nix/store package: base/name with the given files, world-readable
    (tmp dirs are 0700, which the unit's `inference` user could not enter)."""
    pkg = base / name
    for rel, source in files.items():
        dest = pkg / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Path):
            shutil.copy2(source, dest)
        else:
            dest.write_text(source)
        dest.chmod(mode)
    for d in [pkg, *(p for p in pkg.rglob("*") if p.is_dir())]:
        d.chmod(0o755)
    return pkg


def probe(runtime: str) -> str:
    """A program standing in for a GPU runtime (vllm, sglang, triton): runs
    tests/systemd/runtime_probe.py, which says loudly that it is a probe. On Debian's
    /usr/bin/python3 (the venv's Python lives under /root, hidden by the units' ProtectHome)
    with the venv's site-packages on PYTHONPATH, all bound under PROBE_ROOT."""
    return (f"#!/bin/sh\n# TEST PROBE standing in for {runtime}; NOT {runtime}\n"
            f"exec env PYTHONPATH={PROBE_ROOT}/helper:{PROBE_ROOT}/site-packages "
            f"/usr/bin/python3 {PROBE_ROOT}/probe/runtime_probe.py {runtime} \"$@\"\n")


def system_tools(base: Path, host: str) -> dict[str, Path]:
    """The store paths of the host's units that hold system tools, as directories with this
    machine's copies: systemd (lib/systemd/systemd-socket-proxyd, bin/systemctl), util-linux
    (bin/flock) and the on-demand script (nixos/on-demand.sh as writeShellApplication packages
    it: bash with errexit, nounset, pipefail, and its runtime inputs on PATH). Only those the
    units refer to."""
    golden = load_golden()
    used = set().union(*(store_paths(render(host, u)) for u in golden["hosts"][host]["units"]))
    tools: dict[str, Path] = {}
    systemd_pkg = golden["packages"]["systemd"]
    if systemd_pkg in used:
        tools[systemd_pkg] = package_dir(base, "systemd", {
            "lib/systemd/systemd-socket-proxyd": Path("/usr/lib/systemd/systemd-socket-proxyd"),
        })
    if golden["packages"]["util-linux"] in used:
        tools[golden["packages"]["util-linux"]] = package_dir(
            base, "util-linux", {"bin/flock": Path("/usr/bin/flock")})
    for path in sorted(p for p in used if p.endswith("-inference-on-demand")):
        script = (PROJECT / "nixos" / "on-demand.sh").read_text()
        tools[path] = package_dir(base, "inference-on-demand", {
            "bin/inference-on-demand": "#!/bin/bash\nset -o errexit\nset -o nounset\n"
            f"set -o pipefail\n{script}",
        })
    return tools


def vllm_config(base: Path, host: str, instance: str) -> dict[str, Path]:
    """{store path of vllm-<instance>.yaml: a host file with what NixOS writes there}: the
    instance's settings (golden["hosts"][host]["vllmSettings"]) as YAML, read-only."""
    unit = f"vllm-{instance}.service"
    (path,) = [p for p in store_paths(render(host, unit)) if p.endswith(f"-vllm-{instance}.yaml")]
    settings = load_golden()["hosts"][host]["vllmSettings"][instance]
    yaml_file = base / f"vllm-{instance}.yaml"
    yaml_file.write_text(yaml.safe_dump(settings))
    yaml_file.chmod(0o444)
    return {path: yaml_file}


@contextmanager
def serving_world(
    base: Path,
    host: str,
    packages: Mapping[str, Path],
    *,
    overrides: Mapping[str, Mapping[str, str]] | None = None,
    hub_setup: Any = None,
    revisions: Mapping[str, str] | None = None,
) -> Iterator[World]:
    """Boot a container that is `host` of golden.json.

    packages: golden package name ("llama-cpp", "vllm", ...) or a store path -> the host
    directory to bind at that store path. overrides: unit -> {old text: new text}, the
    substitutions a test needs (each one explained where it is made). hub_setup(DevHub) adds
    the repos before the container starts. revisions: model -> the revision to pin instead of
    the declared one (a commit of the real repo cannot exist on the loopback Hub).
    """
    golden = load_golden()
    host_data = golden["hosts"][host]
    base.mkdir(parents=True, exist_ok=True)
    hub = DevHub(base / "hub")
    if hub_setup is not None:
        hub_setup(hub)
    state = base / "state"
    state.mkdir(exist_ok=True)
    state.chmod(0o755)  # tmpfiles: d /var/lib/inference 0755 root root
    binds: list[tuple[str, str, bool]] = [(str(base), str(base), False),
                                          (str(state), STATE_ROOT, False), *PROBE_BINDS]
    packages = {**system_tools(base, host), **packages}
    for pkg, host_path in packages.items():
        store_path = golden["packages"].get(pkg, pkg)
        binds.append((str(host_path), store_path, True))
    with SystemdContainer(f"e2e-{host}", binds) as ct:
        for user, spec in host_data["users"].items():
            assert spec["isSystemUser"], spec
            ct.run(["groupadd", "--system", spec["group"]])
            ct.run(["useradd", "--system", "--gid", spec["group"], "--no-create-home",
                    "--shell", "/usr/sbin/nologin", user])
        # systemd.tmpfiles.rules, as systemd-tmpfiles-setup.service applies them at boot
        ct.write_file("/etc/tmpfiles.d/inference.conf", "\n".join(host_data["tmpfiles"]) + "\n")
        ct.run(["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/inference.conf"])
        manifest = json.loads(json.dumps(host_data["manifest"]))
        for model, revision in (revisions or {}).items():
            manifest["models"][model]["revision"] = revision
        ct.write_file(MANIFEST, json.dumps(manifest, indent=2) + "\n")
        ct.start_service("devhub.service",
                         [sys.executable, str(PROJECT / "tests/loopback_hub.py"), "serve",
                          str(hub.data_dir),
                          "--port", str(HUB_PORT)],
                         env=ct.python_env())
        # any HTTP answer means it listens (wait_http retries while the port is closed)
        status, body = ct.wait_http(f"{HUB_URL}/api/models/up/probe", timeout=30)
        assert status in (200, 404), f"devhub did not come up: {status} {body}\n" + \
            ct.journal("devhub.service")
        for unit in host_data["units"]:
            if unit == "model-pull.service":
                continue  # the boot-time pull; the tests run model-pull themselves
            text = render(host, unit, (overrides or {}).get(unit, {}))
            ct.install_unit(unit, text)
        env = {
            "MODEL_PULL_MANIFEST": MANIFEST,
            "HF_ENDPOINT": HUB_URL,
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HOME": "/root/.cache/huggingface",
        }
        yield World(ct=ct, hub=hub, base=base, state=state, golden=golden, pull_env=env)

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

The runtime packages (tests/real_runtimes.py): llama-server is the real binary; vLLM is the
real CPU build (its venv bound at VLLM_VENV_DIR; `bin/vllm` runs it, as nixpkgs' wrapper
runs its own); SGLang's `python` and Triton's `tritonserver` run tests/systemd/runtime_probe.py
on that interpreter, which says loudly it is a probe. The packages on a unit's PATH (coreutils
and the rest NixOS gives every service, the C compiler the PyTorch runtimes get) are
directories of links to this machine's programs of the same name.
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
from container import PROJECT, SystemdContainer

from loopback_hub import TestHub as DevHub  # the package's DevHub, with fault injection
from real_runtimes import sglang_path, vllm_venv

sys.path.insert(0, str(PROJECT / "tests" / "nix"))
from render_units import load_golden, render, store_paths

logger = logging.getLogger(__name__)

STATE_ROOT = "/var/lib/inference"
MANIFEST = "/etc/inference/models.json"
HUB_PORT = 18990
HUB_URL = f"http://127.0.0.1:{HUB_PORT}"
SITE = (
    Path(sys.prefix)
    / "lib"
    / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    / "site-packages"
)
# Where the probe's code is bound inside the container: outside /tmp and /root, which the
# units' own PrivateTmp and ProtectHome hide (a checkout or venv may live in either). The
# test venv's site-packages bring tritonclient's ModelConfig for the Triton probe, and with the
# helper's code, model-pull for model-pull.service.
PROBE_ROOT = "/opt/model-pull-test"
PROBE_BINDS = [
    (str(SITE), f"{PROBE_ROOT}/site-packages", True),
    (str(PROJECT / "helper"), f"{PROBE_ROOT}/helper", True),
    (str(PROJECT / "tests" / "systemd"), f"{PROBE_ROOT}/probe", True),
    # the options of trtllm-serve, for the probe's stand-in of its parser
    (str(PROJECT / "nixos" / "args"), f"{PROBE_ROOT}/args", True),
]
# The CPU build of vLLM (made from Debian's /usr/bin/python3, so /root's pyenv is not needed)
# and SGLang's code, for the runtime units.
VLLM_VENV_DIR = f"{PROBE_ROOT}/vllm-venv"
SGLANG_DIR = f"{PROBE_ROOT}/sglang"
# Programs a unit's PATH must hold on this CPU-only machine and not on a GPU host; see
# cpu_dropin().
CPU_TOOLS_DIR = f"{PROBE_ROOT}/cpu-tools"

# The programs of the packages NixOS puts on a unit's PATH (golden["packages"] names), from
# this machine's Debian packages of the same content; systemd is also on it (systemd_package).
PATH_PACKAGES = {
    "coreutils": "coreutils",
    "findutils": "findutils",
    "gnugrep": "grep",
    "gnused": "sed",
    "jq": "jq",
}
# stdenv.cc: the compiler drivers and the binutils they run
CC_PROGRAMS = ["cc", "c++", "gcc", "g++", "cpp", "as", "ld"]


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

    def wait_serving(
        self, unit: str, url: str, payload: str | None = None, timeout: float = 900
    ) -> tuple[int, str]:
        """GET url (POST payload as JSON) from inside the container until it answers 200;
        gives up at once when the unit fails or restarts (a crash while loading)."""
        code = (
            "import subprocess, sys, time, urllib.request, urllib.error\n"
            "unit, url, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])\n"
            "body = sys.stdin.buffer.read() or None\n"
            "deadline = time.monotonic() + timeout\n"
            "while True:\n"
            "    req = urllib.request.Request(url, data=body,\n"
            "                                 headers={'Content-Type': 'application/json'})\n"
            "    try:\n"
            "        with urllib.request.urlopen(req, timeout=60) as r:\n"
            "            print(r.status); sys.stdout.write(r.read().decode()); break\n"
            "    except urllib.error.HTTPError as e:\n"
            "        if time.monotonic() > deadline:\n"
            "            print(e.code); sys.stdout.write(e.read().decode()); break\n"
            "    except OSError:\n"
            "        if time.monotonic() > deadline: raise\n"
            "    show = subprocess.run(['systemctl', 'show', unit, '-p', 'ActiveState',\n"
            "                           '-p', 'NRestarts'], capture_output=True, text=True)\n"
            "    state = dict(l.split('=', 1) for l in show.stdout.splitlines() if '=' in l)\n"
            "    if state['ActiveState'] not in ('active', 'activating') or \\\n"
            "            state['NRestarts'] != '0':\n"
            "        print(0); print(unit, 'failed:', state); break\n"
            "    time.sleep(0.5)\n"
        )
        proc = self.ct.run(
            [sys.executable, "-c", code, unit, url, str(timeout)],
            input=payload or "",
            env=self.ct.python_env(),
            timeout=timeout + 120,
            check=False,
        )
        status, _, body = proc.stdout.partition("\n")
        if proc.returncode != 0 or status != "200":
            raise AssertionError(
                f"{unit} does not serve {url}: {proc.stdout}{proc.stderr}\n"
                f"{self.ct.journal(unit, lines=60)}"
            )
        return int(status), body

    def complete(self, unit: str, port: int, model: str, timeout: float = 900) -> dict[str, Any]:
        """The first completion of 6 tokens the unit's server answers on `port` (OpenAI
        /v1/completions), polled until it does: a unit is ready when it completes, not when it
        lists its models (vLLM lists a model whose first completion kills the engine)."""
        payload = json.dumps(
            {
                "model": model,
                "prompt": "Hello",
                "max_tokens": 6,
                "ignore_eos": True,
                "temperature": 0,
            }
        )
        _, body = self.wait_serving(
            unit, f"http://127.0.0.1:{port}/v1/completions", payload, timeout
        )
        answer: dict[str, Any] = json.loads(body)
        return answer

    def unit_processes(self, unit: str) -> dict[int, int]:
        """{pid: VmRSS in bytes} of every process in the unit's cgroup (PIDs as the container
        sees them)."""
        group = self.ct.unit_property(unit, "ControlGroup")
        if not group:
            return {}
        code = (
            "import json, pathlib, sys\n"
            "group = sys.argv[1]\n"
            "procs = set()\n"
            "for root in ('/sys/fs/cgroup/unified', '/sys/fs/cgroup/systemd', '/sys/fs/cgroup'):\n"
            "    f = pathlib.Path(root + group, 'cgroup.procs')\n"
            "    if f.exists():\n"
            "        procs |= {int(p) for p in f.read_text().split()}\n"
            "rss = {}\n"
            "for pid in procs:\n"
            "    try:\n"
            "        status = pathlib.Path(f'/proc/{pid}/status').read_text()\n"
            "    except OSError:\n"
            "        continue\n"
            "    kb = [l.split()[1] for l in status.splitlines() if l.startswith('VmRSS:')]\n"
            "    rss[pid] = int(kb[0]) * 1024 if kb else 0\n"
            "print(json.dumps(rss))\n"
        )
        out = self.ct.run([sys.executable, "-c", code, group]).stdout
        return {int(k): v for k, v in json.loads(out).items()}

    def alive(self, pids: list[int]) -> list[int]:
        """Which of these container PIDs still exist."""
        return [
            p
            for p in pids
            if self.ct.run(["test", "-d", f"/proc/{p}"], check=False).returncode == 0
        ]

    def link(self, name: str) -> str:
        """Where models/<name> points (relative), or '' when absent."""
        path = self.state / "models" / name
        return str(path.readlink()) if path.is_symlink() else ""

    def store(self) -> list[str]:
        store = self.state / "store"
        return sorted(p.name for p in store.iterdir()) if store.is_dir() else []

    def model_pull(self, *args: str, timeout: float = 300) -> Any:
        return self.ct.model_pull(list(args), env=self.pull_env, timeout=timeout)


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


def links_package(base: Path, name: str, programs: Mapping[str, str]) -> Path:
    """A stand-in for a /nix/store package of programs: base/name/bin/<name> -> host path."""
    bin_dir = base / name / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for program, target in programs.items():
        (bin_dir / program).symlink_to(target)
    for d in (base / name, bin_dir):
        d.chmod(0o755)
    return base / name


def _debian_programs(package: str) -> dict[str, str]:
    """{name: path} of the programs a Debian package installs in /usr/bin, /bin, /usr/sbin."""
    listing = subprocess.run(
        ["dpkg", "-L", package], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return {
        Path(p).name: p
        for p in listing
        if str(Path(p).parent) in ("/usr/bin", "/bin", "/usr/sbin", "/sbin")
        and os.access(p, os.X_OK)
        and not Path(p).is_dir()
    }


def systemd_package(base: Path) -> Path:
    """systemd as a unit sees it: the programs of bin/ (systemctl, ...) and
    lib/systemd/systemd-socket-proxyd, which the on-demand proxies run."""
    pkg = base / "path-systemd"
    if not pkg.exists():
        links_package(base, "path-systemd", _debian_programs("systemd"))
        package_dir(
            base,
            "path-systemd",
            {
                "lib/systemd/systemd-socket-proxyd": Path("/usr/lib/systemd/systemd-socket-proxyd"),
            },
        )
    return pkg


def path_packages(base: Path) -> dict[str, Path]:
    """Store path -> host directory, for every package on the units' PATH (golden.json)."""
    packages = load_golden()["packages"]
    out = {
        packages[name]: links_package(base, f"path-{name}", _debian_programs(debian))
        for name, debian in PATH_PACKAGES.items()
    }
    out[packages["systemd"]] = systemd_package(base)
    cc = {p: shutil.which(p) for p in CC_PROGRAMS}
    missing = [p for p, target in cc.items() if target is None]
    if missing:
        pytest.fail(f"no {', '.join(missing)} on this machine (apt-get install gcc g++)")
    out[packages["cc"]] = links_package(base, "path-cc", {p: str(t) for p, t in cc.items()})
    return out


def shell_application(base: Path, name: str, text: str, runtime_inputs: list[str]) -> Path:
    """What nixpkgs' writeShellApplication builds: bin/<name>, a bash script with strict
    options and its runtime inputs (store paths) first on PATH."""
    path = ":".join(f"{p}/bin" for p in runtime_inputs)
    # writeShellApplication exports PATH only when there are runtime inputs
    export = f'export PATH="{path}:$PATH"\n\n' if runtime_inputs else ""
    script = f"#!/bin/bash\nset -o errexit\nset -o nounset\nset -o pipefail\n\n{export}{text}"
    return package_dir(base, name, {f"bin/{name}": script})


def runtime_binds() -> list[tuple[str, str, bool]]:
    """The vLLM venv and SGLang's code, where the runtime packages below run them from."""
    return [(str(vllm_venv()), VLLM_VENV_DIR, True), (str(sglang_path()), SGLANG_DIR, True)]


def vllm_package(base: Path) -> Path:
    """`bin/vllm` of the CPU build: the venv's interpreter on vLLM's CLI (the console script
    would name the venv's path on the host, which ProtectHome hides)."""
    return package_dir(
        base,
        "vllm",
        {
            "bin/vllm": f"#!/bin/sh\nexec {VLLM_VENV_DIR}/bin/python -m vllm.entrypoints.cli.main "
            '"$@"\n'
        },
    )


def probe(runtime: str) -> str:
    """A program standing in for SGLang's `python`, Triton's `tritonserver` or TensorRT-LLM's
    `trtllm-serve`: runs tests/systemd/runtime_probe.py on the vLLM venv's interpreter, which
    says loudly that it is a probe; SGLang's code, tritonclient's protobuf module and
    trtllm-serve's option list come from PROBE_ROOT."""
    return (
        f"#!/bin/sh\n# TEST PROBE standing in for {runtime}; NOT {runtime}\n"
        f"exec env PYTHONPATH={SGLANG_DIR} "
        f"PROBE_TRITONCLIENT={PROBE_ROOT}/site-packages/tritonclient "
        f"TRTLLM_SERVE_ARGS={PROBE_ROOT}/args/trtllm.json "
        f'{VLLM_VENV_DIR}/bin/python {PROBE_ROOT}/probe/runtime_probe.py {runtime} "$@"\n'
    )


def system_tools(base: Path, host: str) -> dict[str, Path]:
    """The store paths of the host's units that hold system tools, as directories with this
    machine's copies: systemd (`systemd_package`), util-linux (bin/flock) and the on-demand
    script (nixos/on-demand.sh as writeShellApplication packages it). Only those the units
    refer to."""
    golden = load_golden()
    used = set().union(*(store_paths(render(host, u)) for u in golden["hosts"][host]["units"]))
    tools: dict[str, Path] = {}
    if golden["packages"]["systemd"] in used:
        tools[golden["packages"]["systemd"]] = systemd_package(base)
    if golden["packages"]["util-linux"] in used:
        tools[golden["packages"]["util-linux"]] = package_dir(
            base, "util-linux", {"bin/flock": Path("/usr/bin/flock")}
        )
    for path in sorted(p for p in used if p.endswith("-inference-on-demand")):
        script = (PROJECT / "nixos" / "on-demand.sh").read_text()
        tools[path] = shell_application(base, "inference-on-demand", script, [])
    return tools


def placeholder(runtime: str, where: str) -> str:
    """A program that stays up and does nothing, for a test about something else than the
    runtime (that a unit is started); says so on stderr. `where` names the test that runs the
    real runtime, or its probe."""
    return (
        f"#!/bin/sh\necho 'PLACEHOLDER for {runtime}, NOT {runtime}: this test only checks "
        f"that the unit is started; {where} runs it' >&2\nexec /bin/sleep infinity\n"
    )


def cpu_dropin(host: str, unit: str) -> str:
    """A drop-in with what must differ for a PyTorch runtime unit on this CPU-only machine;
    the unit file itself stays as rendered. Each line says why."""
    rendered_path = load_golden()["hosts"][host]["units"][unit]["environment"]["PATH"]
    return (
        "# Test adaptations for a machine without a GPU; the unit file is as NixOS renders it.\n"
        "[Service]\n"
        "# 1. The memory share. On a GPU --gpu-memory-utilization is a share of VRAM; vLLM's CPU\n"
        "# backend takes it as a share of RAM, which this shared machine does not have free\n"
        "# (0.9 refuses to start). A fixed KV cache of 1 GiB instead (vllm/platforms/cpu.py).\n"
        "Environment=VLLM_CPU_KVCACHE_SPACE=1\n"
        "# 2. Programs only the CPU backends run, on top of the rendered PATH: vLLM's runs\n"
        "# `lscpu` to place its threads (vllm/utils/cpu_resource_utils.py); torch's inductor\n"
        "# compiles C++ kernels for a CPU and hashes their precompiled headers with `openssl\n"
        "# sha512` (torch/_inductor/codecache.py). On a GPU neither runs: vLLM's kernels are\n"
        "# Triton's, built with the C compiler the unit has.\n"
        f"Environment=PATH={rendered_path}:{CPU_TOOLS_DIR}/bin\n"
    )


def cpu_tools(base: Path) -> list[tuple[str, str, bool]]:
    """The bind of CPU_TOOLS_DIR (see cpu_dropin)."""
    tools = {name: shutil.which(name) for name in ("lscpu", "openssl")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        pytest.fail(f"no {', '.join(missing)} on this machine (apt-get install util-linux openssl)")
    package = links_package(base, "cpu-tools", {n: str(p) for n, p in tools.items()})
    return [(str(package), CPU_TOOLS_DIR, True)]


@contextmanager
def serving_world(
    base: Path,
    host: str,
    packages: Mapping[str, Path],
    *,
    overrides: Mapping[str, Mapping[str, str]] | None = None,
    hub_setup: Any = None,
    revisions: Mapping[str, str] | None = None,
    dropins: Mapping[str, str] | None = None,
    binds: list[tuple[str, str, bool]] | None = None,
) -> Iterator[World]:
    """Boot a container that is `host` of golden.json.

    packages: golden package name ("llama-cpp", "vllm", ...) or a store path -> the host
    directory to bind at that store path. overrides: unit -> {old text: new text}, the
    substitutions a test needs (each one explained where it is made); dropins: unit -> the
    text of a drop-in (`<unit>.d/test.conf`) for what must differ here, the unit file staying
    as rendered; binds: more (host, container, read-only) binds. hub_setup(DevHub) adds
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
    all_binds: list[tuple[str, str, bool]] = [
        (str(base), str(base), False),
        (str(state), STATE_ROOT, False),
        *PROBE_BINDS,
        *(binds or []),
    ]
    packages = {**system_tools(base, host), **packages}
    for pkg, host_path in packages.items():
        store_path = golden["packages"].get(pkg, pkg)
        all_binds.append((str(host_path), store_path, True))
    with SystemdContainer(f"e2e-{host}", all_binds) as ct:
        for user, spec in host_data["users"].items():
            assert spec["isSystemUser"], spec
            ct.run(["groupadd", "--system", spec["group"]])
            ct.run(
                [
                    "useradd",
                    "--system",
                    "--gid",
                    spec["group"],
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    user,
                ]
            )
        # systemd.tmpfiles.rules, as systemd-tmpfiles-setup.service applies them at boot
        ct.write_file("/etc/tmpfiles.d/inference.conf", "\n".join(host_data["tmpfiles"]) + "\n")
        ct.run(["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/inference.conf"])
        manifest = json.loads(json.dumps(host_data["manifest"]))
        for model, revision in (revisions or {}).items():
            manifest["models"][model]["revision"] = revision
        ct.write_file(MANIFEST, json.dumps(manifest, indent=2) + "\n")
        ct.start_service(
            "devhub.service",
            [
                sys.executable,
                str(PROJECT / "tests/loopback_hub.py"),
                "serve",
                str(hub.data_dir),
                "--port",
                str(HUB_PORT),
            ],
            env=ct.python_env(),
        )
        # any HTTP answer means it listens (wait_http retries while the port is closed)
        status, body = ct.wait_http(f"{HUB_URL}/api/models/up/probe", timeout=30)
        assert status in (200, 404), f"devhub did not come up: {status} {body}\n" + ct.journal(
            "devhub.service"
        )
        for unit in host_data["units"]:
            if unit == "model-pull.service":
                continue  # the boot-time pull; the tests run model-pull themselves
            text = render(host, unit, (overrides or {}).get(unit, {}))
            if unit in (dropins or {}):
                ct.write_file(f"/etc/systemd/system/{unit}.d/test.conf", (dropins or {})[unit])
            ct.install_unit(unit, text)
        env = {
            "MODEL_PULL_MANIFEST": MANIFEST,
            "HF_ENDPOINT": HUB_URL,
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HOME": "/root/.cache/huggingface",
        }
        yield World(ct=ct, hub=hub, base=base, state=state, golden=golden, pull_env=env)

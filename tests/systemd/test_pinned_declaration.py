"""A user's first pin, end to end: `model-pull prefetch` under one name, the printed set pasted
under another name into a NixOS configuration, the unit the real modules render for it gated on
the pin (`by-hash/<narHash>`) in a real systemd, then `model-pull` installs, and the unit starts
and serves from the pinned entry.

The modules are evaluated with nixpkgs' lib (NIXPKGS_LIB), the unit rendered as NixOS writes it
(tests/nix/render_units.py) with the real llama-server bound at its store path; model-pull runs
on this machine against the loopback Hub, into the state root the container sees as
/var/lib/inference, and restarts the unit over the container's system bus.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from container import PROJECT
from serving_world import package_dir

from model_pull.datamodel import by_hash_name
from real_runtimes import llama_server_binary

sys.path.insert(0, str(PROJECT / "tests" / "nix"))
from render_units import render_unit, store_paths

from test_nixos_eval import evaluate as evaluate_config

pytestmark = [pytest.mark.systemd, pytest.mark.slow, pytest.mark.nixlib]

NIXPKGS_LIB = os.environ.get("NIXPKGS_LIB", "")
UNIT = "llama-server-main.service"
PORT = 18181


def evaluate(module: str, tmp_path: Path) -> dict[str, Any]:
    """The NixOS configuration of `module`, which must pass every assertion."""
    result = evaluate_config(module, tmp_path)
    assert result["assertions"] == [], result["assertions"]
    return result


@pytest.mark.timeout(900)
def test_a_prefetched_pin_pasted_under_another_name_gates_and_starts_the_unit(
    make_container, model_pull, hub_repos, tmp_path: Path
):
    if not (NIXPKGS_LIB and Path(NIXPKGS_LIB, "lib/default.nix").is_file()):
        pytest.skip("NIXPKGS_LIB is not set to a checkout of nixpkgs' lib")
    if shutil.which("nix-instantiate") is None:
        pytest.skip("nix-instantiate not installed")
    gguf = hub_repos.tiny_gguf
    pasted = model_pull.ok(
        "prefetch",
        gguf.repo,
        "--layout",
        "gguf",
        "--include",
        "tiny.gguf",
        "--name",
        "tried-as-this",
        "--root",
        str(tmp_path / "probe"),
    ).stdout
    pin = json.loads(model_pull.ok("list", "--json", "--root", str(tmp_path / "probe")).stdout)[
        "models"
    ][0]["narHash"]

    config = evaluate(
        f"""{{
      services.inference.models.chat = {pasted};
      services.inference.llama-server.instances.main = {{
        model = {{ name = "chat"; file = "tiny.gguf"; }};
        port = {PORT}; contextSize = 256; parallel = 1;
      }};
    }}""",
        tmp_path,
    )
    gate = f"/var/lib/inference/by-hash/{by_hash_name(pin)}/share/models/gguf/tiny.gguf"
    unit_data = config["units"][UNIT]
    assert unit_data["unitConfig"]["ConditionPathExists"] == [gate]

    (llama_store,) = [p for p in store_paths(render_unit(unit_data)) if p.endswith("-llama-cpp")]
    package = package_dir(tmp_path, "llama-cpp", {"bin/llama-server": llama_server_binary()})
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)  # as tmpfiles makes /var/lib/inference
    ct = make_container(
        binds=[(str(state), "/var/lib/inference", False), (str(package), llama_store, True)]
    )
    ct.run(["groupadd", "--system", "inference"])
    ct.run(
        [
            "useradd",
            "--system",
            "--gid",
            "inference",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "inference",
        ]
    )
    ct.install_unit(UNIT, render_unit(unit_data))
    ct.run(["systemctl", "start", UNIT])  # as at boot: skipped, the pinned entry is not there
    assert ct.unit_property(UNIT, "ConditionResult") == "no"
    assert f"unmet condition check (ConditionPathExists={gate})" in ct.journal(UNIT)

    manifest = tmp_path / "models.json"
    manifest.write_text(json.dumps(config["manifest"]))
    pulled = model_pull.run(
        env={
            "MODEL_PULL_MANIFEST": str(manifest),
            "MODEL_PULL_ROOT": str(state),  # /var/lib/inference inside
            "DBUS_SYSTEM_BUS_ADDRESS": ct.bus_address,
        }
    )
    assert pulled.returncode == 0, pulled.stderr + pulled.stdout
    assert "chat: installed" in pulled.stdout, pulled.stdout
    assert f"{UNIT}: active (running)" in pulled.stdout, pulled.stdout

    status, body = ct.wait_http(f"http://127.0.0.1:{PORT}/v1/models")
    assert status == 200, body + ct.journal(UNIT)
    assert [m["id"] for m in json.loads(body)["data"]] == [gate]
    pid = ct.unit_property(UNIT, "MainPID")
    model = ct.run(["cat", f"/proc/{pid}/cmdline"]).stdout.split("\0")
    served = ct.run(["readlink", "-e", model[model.index("-m") + 1]]).stdout.strip()
    assert served.startswith("/var/lib/inference/store/") and "-chat/" in served

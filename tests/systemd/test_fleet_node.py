"""A fleet node, end to end in real systemd: the puller fetched the model from the Hub and pushed
it into a binary cache; the node declares the same model (same name, its narHash) and the cache
(`services.inference.caches.urls`), the unit the real modules render for it waits on the pin,
then `model-pull` substitutes the entry from the cache over HTTP, verified by the real Nix,
without the Hub (unreachable here), restarts the unit over the container's bus, and it serves.

The modules are evaluated with nixpkgs' lib (NIXPKGS_LIB), the unit rendered as NixOS writes it
(tests/nix/render_units.py) with the real llama-server bound at its store path. model-pull runs
on this machine, into the state root the container sees as /var/lib/inference.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from container import PROJECT
from serving_world import llama_server_binary, package_dir

from cache_server import StaticCache
from model_pull.binary_cache import store_path
from model_pull.datamodel import by_hash_name

sys.path.insert(0, str(PROJECT / "tests" / "nix"))
from render_units import render_unit, store_paths

pytestmark = [pytest.mark.systemd, pytest.mark.slow, pytest.mark.nixlib]

NIXPKGS_LIB = os.environ.get("NIXPKGS_LIB", "")
UNIT = "llama-server-main.service"
PORT = 18182


def evaluate(module: str, tmp_path: Path) -> dict[str, Any]:
    expr = (
        f"(import {PROJECT}/tests/nix/eval.nix {{ nixpkgsLib = "
        f"{Path(NIXPKGS_LIB).resolve()}; }}).evalConfig ({module})"
    )
    env = {**os.environ, "NIX_STATE_DIR": str(tmp_path / "nix-state")}
    p = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    result: dict[str, Any] = json.loads(p.stdout)
    assert result["assertions"] == [], result["assertions"]
    return result


@pytest.mark.timeout(900)
def test_a_node_substitutes_the_pushed_entry_and_its_unit_starts(
    make_container, model_pull, hub_repos, tmp_path: Path
):
    if not (NIXPKGS_LIB and Path(NIXPKGS_LIB, "lib/default.nix").is_file()):
        pytest.skip("NIXPKGS_LIB is not set to a checkout of nixpkgs' lib")
    for tool in ("nix-instantiate", "nix", "nix-store"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    gguf = hub_repos.tiny_gguf
    # The puller: from the Hub, then into a file:// cache that a static server serves.
    pulled = model_pull.json(
        "fetch",
        gguf.repo,
        "--revision",
        gguf.commit,
        "--layout",
        "gguf",
        "--include",
        "tiny.gguf",
        "--name",
        "chat",
        "--root",
        str(tmp_path / "puller"),
    )
    nar = pulled["narHash"]
    cache_dir = tmp_path / "cache"
    model_pull.ok("push", "chat", "--to", f"file://{cache_dir}", "--root", str(tmp_path / "puller"))

    with StaticCache(cache_dir) as cache:
        config = evaluate(
            f"""{{
          services.inference.caches.urls = [ "{cache.url}" ];
          services.inference.models.chat = {{
            repo = "{gguf.repo}"; revision = "{gguf.commit}"; layout = "gguf";
            include = [ "tiny.gguf" ]; narHash = "{nar}";
          }};
          services.inference.llama-server.instances.main = {{
            model = {{ name = "chat"; file = "tiny.gguf"; }};
            port = {PORT}; contextSize = 256; parallel = 1;
          }};
        }}""",
            tmp_path,
        )
        assert config["manifest"]["caches"]["urls"] == [cache.url]
        gate = f"/var/lib/inference/by-hash/{by_hash_name(nar)}/share/models/gguf/tiny.gguf"
        unit_data = config["units"][UNIT]
        assert unit_data["unitConfig"]["ConditionPathExists"] == [gate]

        (llama_store,) = [
            p for p in store_paths(render_unit(unit_data)) if p.endswith("-llama-cpp")
        ]
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
        ct.run(["systemctl", "start", UNIT])  # as at boot: skipped, the entry is not there
        assert ct.unit_property(UNIT, "ConditionResult") == "no"

        manifest = tmp_path / "models.json"
        manifest.write_text(json.dumps(config["manifest"]))
        pulled_here = model_pull.run(
            env={
                "MODEL_PULL_MANIFEST": str(manifest),
                "MODEL_PULL_ROOT": str(state),  # /var/lib/inference inside
                "HF_ENDPOINT": "http://127.0.0.1:9",  # the Hub is not reachable from this node
                "DBUS_SYSTEM_BUS_ADDRESS": ct.bus_address,
            }
        )
        assert pulled_here.returncode == 0, pulled_here.stderr + pulled_here.stdout
        assert f"/{Path(store_path(nar, 'chat')).name[:32]}.narinfo" in cache.requests
    out = pulled_here.stdout
    assert f"chat: substituted {store_path(nar, 'chat')} from {cache.url}" in out, out
    assert f"{UNIT}: active (running)" in out, out

    status, body = ct.wait_http(f"http://127.0.0.1:{PORT}/v1/models")
    assert status == 200, body + ct.journal(UNIT)
    assert [m["id"] for m in json.loads(body)["data"]] == [gate]
    verified = model_pull.json("verify", "--root", str(state))
    assert [e["ok"] for e in verified["entries"]] == [True]
    assert list((state / "staging").iterdir()) == []

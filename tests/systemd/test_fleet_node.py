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
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from container import PROJECT
from serving_world import (
    MANIFEST,
    PROBE_ROOT,
    World,
    package_dir,
    serving_world,
)

from cache_server import StaticCache
from model_pull.binary_cache import store_path
from model_pull.datamodel import by_hash_name
from model_pull.tinymodels import write_tiny_gguf
from real_runtimes import llama_server_binary

sys.path.insert(0, str(PROJECT / "tests" / "nix"))
from render_units import load_golden, render, render_unit, store_paths

from test_nixos_eval import evaluate as evaluate_config

pytestmark = [pytest.mark.systemd, pytest.mark.slow, pytest.mark.nixlib]

NIXPKGS_LIB = os.environ.get("NIXPKGS_LIB", "")
UNIT = "llama-server-main.service"
PORT = 18182


def evaluate(module: str, tmp_path: Path) -> dict[str, Any]:
    """The NixOS configuration of `module`, which must pass every assertion."""
    result = evaluate_config(module, tmp_path)
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


# --- fleet-node's own model-pull.service, with its hardening ------------------------------------

HOST = "fleet-node"
MODEL = "qwen3-8b"
GGUF = "Qwen3-8B-Q4_K_M.gguf"
CACHE_PORT = 18183
# The unit's PATH is its `path` (nix) and what NixOS adds (coreutils, ...), which are not
# bound here: /usr/bin/env.
HELPER = (
    "#!/bin/sh\n# this checkout's model_pull, standing in for the packaged helper\n"
    f"exec /usr/bin/env PYTHONPATH={PROBE_ROOT}/helper:{PROBE_ROOT}/site-packages "
    '/usr/bin/python3 -m model_pull "$@"\n'
)


def settled(world: World, unit: str, timeout: float = 300) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        state = world.unit(unit)
        starting = state["ActiveState"] == "activating" and state["SubState"] != "auto-restart"
        if state["SubState"] != "running" and not starting:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{unit} still running after {timeout}s: {state}")
        time.sleep(0.2)


@pytest.mark.timeout(900)
def test_the_nodes_pull_unit_substitutes_inside_its_sandbox_and_starts_the_server(
    model_pull, devhub, tmp_path: Path
):
    """hosts/fleet-node.nix as NixOS renders it (golden.json): model-pull.service runs in its
    own sandbox (ProtectSystem=strict, the state root writable, PrivateTmp, a system call
    filter), runs the real Nix from its PATH into a chroot store under the state root, and
    starts llama-server-main over D-Bus; the Hub (huggingface.co) is out of reach."""
    for tool in ("nix", "nix-store"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    # The puller: the repo the host declares, a tiny GGUF under the declared file name.
    commit = devhub.hub.add_repo(
        "Qwen/Qwen3-8B-GGUF", {GGUF: write_tiny_gguf(tmp_path / GGUF, seed=21).read_bytes()}
    )
    puller = tmp_path / "puller"
    pulled = model_pull.json(
        "fetch",
        "Qwen/Qwen3-8B-GGUF",
        "--revision",
        commit,
        "--layout",
        "gguf",
        "--include",
        GGUF,
        "--name",
        MODEL,
        "--root",
        str(puller),
    )
    nar = pulled["narHash"]
    world = tmp_path / "world"  # bound into the container at the same path
    cache_dir = world / "cache"
    model_pull.ok("push", MODEL, "--to", f"file://{cache_dir}", "--root", str(puller))
    nix_pkg = package_dir(tmp_path, "nix", {"bin/nix": Path(shutil.which("nix") or "")})
    (nix_pkg / "bin/nix-store").symlink_to("nix")
    pkgs: dict[str, Path] = {
        "model-pull": package_dir(tmp_path, "model-pull", {"bin/model-pull": HELPER}),
        "nix": nix_pkg,
        "llama-cpp": package_dir(
            tmp_path, "llama-cpp", {"bin/llama-server": llama_server_binary()}
        ),
    }
    golden = load_golden()
    placeholder = golden["hosts"][HOST]["manifest"]["models"][MODEL]["narHash"]
    server = "llama-server-main.service"
    # The host pins a narHash nobody can have here: the server's gate takes the real one.
    overrides = {server: {by_hash_name(placeholder): by_hash_name(nar)}}
    with serving_world(world, HOST, pkgs, overrides=overrides) as w:
        cache_url = f"http://127.0.0.1:{CACHE_PORT}"
        w.ct.start_service(
            "cache.service",
            [
                "/usr/bin/python3",
                "-m",
                "http.server",
                str(CACHE_PORT),
                "--bind",
                "127.0.0.1",
                "--directory",
                str(cache_dir),
            ],
        )
        status, _ = w.ct.wait_http(f"{cache_url}/nix-cache-info", timeout=30)
        assert status == 200
        manifest = json.loads(w.ct.run(["cat", MANIFEST]).stdout)
        assert manifest["caches"]["urls"] == ["http://fleet-puller:5000"]
        manifest["caches"]["urls"] = [cache_url]
        manifest["models"][MODEL]["narHash"] = nar
        w.ct.write_file(MANIFEST, json.dumps(manifest))
        w.ct.install_unit("model-pull.service", render(HOST, "model-pull.service"))
        w.ct.run(["systemctl", "start", server])  # as at boot: skipped, nothing to serve
        assert w.unit(server)["ConditionResult"] == "no"
        w.ct.run(["systemctl", "start", "model-pull.service"])
        state = settled(w, "model-pull.service")
        journal = w.ct.journal("model-pull.service")
        assert (state["ActiveState"], state["Result"]) == ("active", "success"), (
            f"{state}\n{journal}"
        )
        assert f"{MODEL}: substituted {store_path(nar, MODEL)} from {cache_url}" in journal
        assert f"{server}: active (running)" in journal, journal
        status, body = w.ct.wait_http("http://127.0.0.1:11435/v1/models")
        assert status == 200, body + w.ct.journal(server)
        assert list((w.state / "staging").iterdir()) == []

"""Pins hold: the same declared content has the same narHash under every model name and with
every version of model-pull; nothing a pin (by-hash/), a models/ link or the history reaches is
collected; a pinned model is rolled back by changing its pin, and `list` and `status` agree on
which narHash an entry has."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from model_pull.datamodel import ENTRY_FORMAT, by_hash_name
from model_pull.tinymodels import tiny_llama_files


def declare(path: Path, root: Path, models: dict[str, dict[str, Any]]) -> dict[str, str]:
    """A NixOS manifest declaring `models` (each one served by its own vLLM unit) under `root`;
    the environment that points model-pull at it."""
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "root": str(root),
                "models": {
                    name: {"layout": "dual", **m, "units": [f"vllm-{name}.service"]}
                    for name, m in models.items()
                },
                "units": {
                    f"vllm-{name}.service": {"runtime": "vllm", "models": [name]} for name in models
                },
            }
        )
    )
    return {"MODEL_PULL_MANIFEST": str(path)}


def test_nar_hash_is_the_content_not_the_name_or_the_version(model_pull, hub_repos, tmp_path):
    repo = hub_repos.tiny_llama.repo
    a = model_pull.json("fetch", repo, "--name", "a", "--root", str(tmp_path / "one"))
    b = model_pull.json("fetch", repo, "--name", "b", "--root", str(tmp_path / "two"))
    assert a["narHash"] == b["narHash"] and a["storeName"] != b["storeName"]
    # another release of model-pull writes the same bytes (its version is nowhere in them)
    other_release = (
        "import sys, model_pull; model_pull.__version__ = '99.1.0'; "
        "from model_pull.cli import main; main()"
    )
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            other_release,
            "fetch",
            repo,
            "--json",
            "--root",
            str(tmp_path / "three"),
        ],
        env=model_pull.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert json.loads(p.stdout)["narHash"] == a["narHash"]
    manifest = json.loads((Path(a["path"]) / "share/model-pull/manifest.json").read_text())
    assert manifest["format"] == ENTRY_FORMAT
    assert not {"tool", "name"} & set(manifest)


def test_a_pin_taken_under_one_name_holds_under_another(model_pull, hub_repos, tmp_path):
    llama = hub_repos.tiny_llama
    probe = model_pull.json(
        "fetch", llama.repo, "--name", "first-try", "--root", str(tmp_path / "probe")
    )
    root = tmp_path / "root"
    env = declare(
        tmp_path / "models.json",
        root,
        {"chat": {"repo": llama.repo, "revision": probe["revision"], "narHash": probe["narHash"]}},
    )
    pulled = model_pull.run("--no-restart", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert "chat: installed" in pulled.stdout
    # the vLLM unit's condition (docs/ARCHITECTURE.md), under the pin's gate
    gate = root / "by-hash" / by_hash_name(probe["narHash"])
    assert (gate / "share/models/hub/models--tiny-org--tiny-llama/refs/main").read_text() == probe[
        "revision"
    ]
    assert gate.resolve().name.endswith("-chat")


def test_gc_keeps_what_a_pin_a_link_or_the_history_reaches(model_pull, new_repo, devhub, tmp_path):
    root = ["--root", str(tmp_path / "root")]
    files = tiny_llama_files(seed=20)
    repo = new_repo(files)
    name = repo.repo.split("/")[1]
    v1 = model_pull.json("fetch", repo.repo, *root)
    devhub.hub.add_repo(repo.repo, {**files, "README.md": b"v2\n"})
    v2 = model_pull.json("fetch", repo.repo, *root)
    assert (
        model_pull.json("fetch", repo.repo, "--nar-hash", v2["narHash"], *root)["changed"] is False
    )  # pinned now: the entry is there, the pin's gate is added
    pin = tmp_path / "root/by-hash" / by_hash_name(v2["narHash"])
    assert pin.resolve() == Path(v2["path"])

    assert model_pull.json("rollback", name, *root)["to"] == v1["path"]
    model_pull.json("gc", *root)
    assert Path(v2["path"]).is_dir(), "gc removed the entry behind a pin"
    assert pin.resolve() == Path(v2["path"])

    devhub.hub.add_repo(repo.repo, {**files, "README.md": b"v3\n"})
    v3 = model_pull.json("fetch", repo.repo, *root)
    model_pull.json("gc", *root)
    assert Path(v1["path"]).is_dir(), "gc removed an entry the history reaches"

    removed = model_pull.json("gc", "--keep", "0", *root)["removed"]
    assert v1["path"] in removed  # forgotten: nothing reaches it any more
    assert Path(v2["path"]).is_dir() and Path(v3["path"]).is_dir()
    pin.unlink()  # the pin is dropped: now nothing reaches v2
    assert v2["path"] in model_pull.json("gc", *root)["removed"]


def test_rolling_back_a_pinned_model_says_the_pin_decides(model_pull, new_repo, devhub, tmp_path):
    files = tiny_llama_files(seed=21)
    repo = new_repo(files)
    root = tmp_path / "root"
    v1 = model_pull.json("fetch", repo.repo, "--name", "m", "--root", str(root))
    devhub.hub.add_repo(repo.repo, {**files, "README.md": b"v2\n"})
    v2 = model_pull.json("fetch", repo.repo, "--name", "m", "--root", str(root))
    env = declare(
        tmp_path / "models.json",
        root,
        {"m": {"repo": repo.repo, "revision": v2["revision"], "narHash": v2["narHash"]}},
    )
    line = model_pull.error(26, "rollback", "m", env=env)
    assert f"m is pinned to narHash {v2['narHash']}" in line
    assert f'services.inference.models.m.narHash = "{v1["narHash"]}"' in line
    assert "nixos-rebuild switch" in line
    assert (root / "models/m").resolve() == Path(v2["path"])  # nothing changed


def test_list_and_status_agree_on_the_nar_hash_after_a_rollback(
    model_pull, new_repo, devhub, tmp_path
):
    files = tiny_llama_files(seed=22)
    repo = new_repo(files)
    root = tmp_path / "root"
    v1 = model_pull.json("fetch", repo.repo, "--name", "m", "--root", str(root))
    devhub.hub.add_repo(repo.repo, {**files, "README.md": b"v2\n"})
    model_pull.json("fetch", repo.repo, "--name", "m", "--root", str(root))
    env = declare(tmp_path / "models.json", root, {"m": {"repo": repo.repo, "revision": "main"}})
    model_pull.json("rollback", "m", env=env)
    (listed,) = model_pull.json("list", env=env)["models"]
    status = model_pull.run("status", "--json", env=env)  # exit 40: no system bus here
    (reported,) = json.loads(status.stdout)["models"]
    assert listed["narHash"] == reported["narHash"] == v1["narHash"]

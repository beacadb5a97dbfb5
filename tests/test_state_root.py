"""One state root for every command: --root, then MODEL_PULL_ROOT, then the manifest's root,
then /var/lib/inference. A NixOS machine with `services.inference.root = "/data/inference"`
must not have `verify` check /var/lib/inference and pass having verified nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

MODEL_PULL = [sys.executable, "-m", "model_pull"]


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MODEL_PULL, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def ok_json(env: dict[str, str], *args: str) -> Any:
    p = run(env, *args, "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.fixture
def declared(hub_repos, tmp_path: Path) -> tuple[dict[str, str], Path, list[dict[str, Any]]]:
    """A machine whose manifest declares root = tmp_path/data-inference, with two entries of
    tiny-llama installed there (main, then v2)."""
    root = tmp_path / "data-inference"
    llama = hub_repos.tiny_llama
    manifest = tmp_path / "models.json"
    manifest.write_text(
        json.dumps(
            {
                "version": 1,
                "root": str(root),
                "models": {
                    "tiny-llama": {
                        "repo": llama.repo,
                        "revision": llama.commit,
                        "layout": "dual",
                        "units": ["vllm-tiny.service"],
                    }
                },
                "units": {"vllm-tiny.service": {"runtime": "vllm", "models": ["tiny-llama"]}},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_PULL")}
    env.update(
        MODEL_PULL_MANIFEST=str(manifest), DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={tmp_path}/no-bus"
    )
    installed = [
        ok_json(env, "fetch", llama.repo, "--revision", rev, "--root", str(root))
        for rev in ("main", hub_repos.tiny_llama_v2.revision)
    ]
    return env, root, installed


def test_every_command_looks_in_the_root_the_manifest_declares(declared):
    env, root, (first, second) = declared
    assert [m["name"] for m in ok_json(env, "list")["models"]] == ["tiny-llama"]
    (verified,) = ok_json(env, "verify")["entries"]
    assert (verified["name"], verified["ok"], verified["entry"]) == (
        "tiny-llama",
        True,
        second["path"],
    )
    checked = run(env, "check", "tiny-llama", "--gpu", "L4", "--json")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["model"] == "tiny-llama"
    back = ok_json(env, "rollback", "tiny-llama")
    assert (back["from"], back["to"]) == (second["path"], first["path"])
    removed = ok_json(env, "gc")["removed"]
    assert second["path"] in removed and not Path(second["path"]).exists()
    status = run(env, "status", "--json")  # exit 40: no system bus here
    report = json.loads(status.stdout)
    assert report["root"] == str(root)
    assert report["models"][0]["entry"] == first["path"]


def test_the_option_then_the_environment_then_the_manifest(declared, tmp_path: Path):
    env, root, _ = declared
    other = tmp_path / "other"
    from_env = run({**env, "MODEL_PULL_ROOT": str(other)}, "list")
    assert from_env.returncode == 20 and f"no state root at {other}" in from_env.stderr
    listed = ok_json({**env, "MODEL_PULL_ROOT": str(other)}, "list", "--root", str(root))
    assert [m["name"] for m in listed["models"]] == ["tiny-llama"]
    before = ok_json({**env, "MODEL_PULL_ROOT": str(other)}, "--root", str(root), "list")
    assert before == listed  # `model-pull --root X list` is `model-pull list --root X`
    p = run(
        {**env, "MODEL_PULL_MANIFEST": str(tmp_path / "absent.json")},
        "verify",
        "--root",
        str(other),
    )
    # The option was taken: a root that does not exist is nothing verified, not success.
    assert p.returncode == 20 and f"no state root at {other}" in p.stderr


@pytest.mark.parametrize("command", [["list"], ["gc"], ["rollback", "tiny-llama"], ["verify"]])
def test_a_root_that_does_not_exist_is_said_and_not_made(tmp_path: Path, command: list[str]):
    """A mistyped --root: one line and exit 20 (NOT_INSTALLED), not an empty listing or a
    collection that made the directory as root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_PULL")}
    env["MODEL_PULL_MANIFEST"] = str(tmp_path / "absent.json")
    typo = tmp_path / "inferenec"
    p = run(env, *command, "--root", str(typo))
    assert p.returncode == 20, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"error: no state root at {typo}: nothing was ever installed there "
        "(check --root and MODEL_PULL_ROOT)"
    ]
    assert not typo.exists()

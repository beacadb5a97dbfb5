"""`model-pull` with no arguments, driven by the manifest the NixOS modules write.

The real-systemd version of this flow (units restarted, llama-server serving) is in
tests/systemd/; here: what gets pulled, what a no-op costs, pins, and the no-bus case.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from model_pull.tinymodels import DRAFT_GGUF_SHAPE, tiny_llama_files, write_tiny_gguf

if TYPE_CHECKING:
    from conftest import ModelPull


@pytest.fixture(scope="module")
def served(devhub, tmp_path_factory):
    """Three repos on the session's loopback Hub, under ids of this module: (hub, commits)."""
    data = tmp_path_factory.mktemp("synchub")
    hub = devhub.hub
    main = write_tiny_gguf(data / "main.gguf", seed=11)
    draft = write_tiny_gguf(data / "draft.gguf", seed=12, shape=DRAFT_GGUF_SHAPE)
    return hub, {
        "sync/main-gguf": hub.add_repo("sync/main-gguf", {"main-Q4_K_M.gguf": main}),
        "sync/draft-gguf": hub.add_repo("sync/draft-gguf", {"draft-Q4_K_M.gguf": draft}),
        "sync/llm": hub.add_repo("sync/llm", tiny_llama_files(seed=13)),
    }


def manifest(path: Path, root: Path, models: dict[str, tuple[Any, ...]]) -> Path:
    data: dict[str, Any] = {
        "version": 1,
        "root": str(root),
        "endpoint": None,
        "tokenFile": None,
        "models": {},
        "units": {
            "llama-server-main.service": {
                "runtime": "llama-server",
                "models": list(models),
                "cudaCapabilities": ["12.0"],
            }
        },
    }
    for name, (repo, revision, include, layout, nar) in models.items():
        data["models"][name] = {
            "repo": repo,
            "revision": revision,
            "include": include,
            "exclude": [],
            "layout": layout,
            "tritonName": None,
            "narHash": nar,
            "engineDefaults": {},
            "patchTokenizer": False,
            "units": ["llama-server-main.service"],
        }
    path.write_text(json.dumps(data))
    return path


def run(model_pull: ModelPull, mpath: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return model_pull.run(
        *args,
        env={
            "MODEL_PULL_MANIFEST": str(mpath),
            "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/system_bus_socket",
        },
    )


def test_pulls_every_declared_model_then_nothing_to_do(served, model_pull, tmp_path):
    hub, commits = served
    root = tmp_path / "root"
    m = manifest(
        tmp_path / "models.json",
        root,
        {
            "main": (
                "sync/main-gguf",
                commits["sync/main-gguf"],
                ["main-Q4_K_M.gguf"],
                "gguf",
                None,
            ),
            "draft": ("sync/draft-gguf", "main", ["draft-Q4_K_M.gguf"], "gguf", None),
        },
    )
    first = run(model_pull, m, "--no-restart")
    assert first.returncode == 0, first.stderr
    for name, file in (("main", "main-Q4_K_M.gguf"), ("draft", "draft-Q4_K_M.gguf")):
        assert (root / "models" / name / "share/models/gguf" / file).is_file()
    assert "follows 'main', not a commit" in first.stderr  # the branch-tracking warning
    hub.reset_counters()
    second = run(model_pull, m, "--no-restart")
    assert second.returncode == 0, second.stderr
    assert sorted(second.stdout.splitlines()) == ["draft: up to date", "main: up to date"]
    assert "NVML" not in second.stderr  # nothing to download: nothing to check
    # a pinned commit costs no request; a branch that did not move costs one (no listing)
    assert hub.api_requests("sync/main-gguf") == []
    assert hub.api_requests("sync/draft-gguf") == ["/api/models/sync/draft-gguf/revision/main"]
    assert hub.requests() == []


def test_no_system_bus_is_exit_40_and_the_pull_still_happened(served, model_pull, tmp_path):
    _, commits = served
    root = tmp_path / "root"
    m = manifest(
        tmp_path / "models.json",
        root,
        {"main": ("sync/main-gguf", commits["sync/main-gguf"], ["main-Q4_K_M.gguf"], "gguf", None)},
    )
    p = run(model_pull, m)
    assert p.returncode == 40, p.stderr
    (line,) = [e for e in p.stderr.splitlines() if e.startswith("error: ")]
    assert "no socket at /nonexistent/system_bus_socket" in line
    assert "the pull itself succeeded" in line
    assert (root / "models/main/share/models/gguf/main-Q4_K_M.gguf").is_file()


def test_a_pin_mismatch_fails_that_model_only(served, model_pull, tmp_path):
    _, commits = served
    root = tmp_path / "root"
    m = manifest(
        tmp_path / "models.json",
        root,
        {
            "llm": (
                "sync/llm",
                commits["sync/llm"],
                [],
                "dual",
                "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
            "main": (
                "sync/main-gguf",
                commits["sync/main-gguf"],
                ["main-Q4_K_M.gguf"],
                "gguf",
                None,
            ),
        },
    )
    p = run(model_pull, m, "--no-restart")
    assert p.returncode == 22, p.stderr
    (line,) = [e for e in p.stderr.splitlines() if e.startswith("error: ")]  # printed once
    assert line.startswith("error: llm: sync/llm@") and "pinned narHash" in line
    assert "error" not in p.stdout and "main: installed" in p.stdout
    assert not (root / "models/llm").exists()
    assert (root / "models/main").exists()


def test_the_pin_is_honoured_and_gates_the_by_hash_path(served, model_pull, tmp_path):
    _, commits = served
    root = tmp_path / "root"
    free = manifest(
        tmp_path / "free.json",
        tmp_path / "probe",
        {"llm": ("sync/llm", commits["sync/llm"], [], "dual", None)},
    )
    assert run(model_pull, free, "--no-restart").returncode == 0
    nar = json.loads((tmp_path / "probe/state/pulls.jsonl").read_text().splitlines()[-1])["narHash"]
    pinned = manifest(
        tmp_path / "pinned.json", root, {"llm": ("sync/llm", commits["sync/llm"], [], "dual", nar)}
    )
    assert run(model_pull, pinned, "--no-restart").returncode == 0
    gate = root / "by-hash" / nar.replace("/", "_").replace("+", "-")
    assert gate.resolve() == (root / "models/llm").resolve()


def test_missing_manifest_is_one_line(model_pull, tmp_path):
    p = run(model_pull, tmp_path / "nope.json")
    assert p.returncode == 23
    assert p.stderr.startswith("error: no manifest at") and len(p.stderr.splitlines()) == 1

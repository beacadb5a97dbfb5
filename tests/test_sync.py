"""`model-pull` with no arguments, driven by the manifest the NixOS modules write.

The real-systemd version of this flow (units restarted, llama-server serving) is in
tests/systemd/; here: what gets pulled, what a no-op costs, pins, and the no-bus case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_pull.devhub import DevHub
from model_pull.tinymodels import DRAFT_GGUF_SHAPE, tiny_llama_files, write_tiny_gguf


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("synchub")
    hub = DevHub(data / "hub")
    main = write_tiny_gguf(data / "main.gguf", seed=11)
    draft = write_tiny_gguf(data / "draft.gguf", seed=12, shape=DRAFT_GGUF_SHAPE)
    commits = {
        "org/main-gguf": hub.add_repo("org/main-gguf", {"main-Q4_K_M.gguf": main}),
        "org/draft-gguf": hub.add_repo("org/draft-gguf", {"draft-Q4_K_M.gguf": draft}),
        "org/llm": hub.add_repo("org/llm", tiny_llama_files(seed=13)),
    }
    with hub.serve() as handle:
        yield hub, handle.url, commits


def manifest(path: Path, root: Path, models: dict) -> Path:
    data = {"version": 1, "root": str(root), "endpoint": None, "tokenFile": None,
            "models": {}, "units": {"llama-server-main.service": {
                "runtime": "llama-server", "models": list(models),
                "cudaCapabilities": ["12.0"]}}}
    for name, (repo, revision, include, layout, nar) in models.items():
        data["models"][name] = {
            "repo": repo, "revision": revision, "include": include, "exclude": [],
            "layout": layout, "tritonName": None, "narHash": nar, "engineDefaults": {},
            "patchTokenizer": False, "units": ["llama-server-main.service"]}
    path.write_text(json.dumps(data))
    return path


def run(url: str, mpath: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODEL_PULL"))}
    env.update(HF_ENDPOINT=url, HF_HUB_DISABLE_TELEMETRY="1", MODEL_PULL_MANIFEST=str(mpath),
               DBUS_SYSTEM_BUS_ADDRESS="unix:path=/nonexistent/system_bus_socket")
    return subprocess.run([sys.executable, "-m", "model_pull", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_pulls_every_declared_model_then_nothing_to_do(served, tmp_path):
    hub, url, commits = served
    root = tmp_path / "root"
    m = manifest(tmp_path / "models.json", root, {
        "main": ("org/main-gguf", commits["org/main-gguf"], ["main-Q4_K_M.gguf"], "gguf", None),
        "draft": ("org/draft-gguf", "main", ["draft-Q4_K_M.gguf"], "gguf", None),
    })
    first = run(url, m, "--no-restart")
    assert first.returncode == 0, first.stderr
    for name, file in (("main", "main-Q4_K_M.gguf"), ("draft", "draft-Q4_K_M.gguf")):
        assert (root / "models" / name / "share/models/gguf" / file).is_file()
    assert "follows 'main', not a commit" in first.stderr  # the branch-tracking warning
    hub.reset_counters()
    second = run(url, m, "--no-restart")
    assert second.returncode == 0, second.stderr
    assert sorted(second.stdout.splitlines()) == ["draft: up to date", "main: up to date"]
    assert "NVML" not in second.stderr  # nothing to download: nothing to check
    # a pinned commit costs no request; a branch that did not move costs one (no listing)
    assert hub.api_requests("org/main-gguf") == []
    assert hub.api_requests("org/draft-gguf") == ["/api/models/org/draft-gguf/revision/main"]
    assert hub.requests() == []


def test_no_system_bus_is_exit_40_and_the_pull_still_happened(served, tmp_path):
    _, url, commits = served
    root = tmp_path / "root"
    m = manifest(tmp_path / "models.json", root, {
        "main": ("org/main-gguf", commits["org/main-gguf"], ["main-Q4_K_M.gguf"], "gguf", None)})
    p = run(url, m)
    assert p.returncode == 40, p.stderr
    (line,) = [e for e in p.stderr.splitlines() if e.startswith("error: ")]
    assert "no socket at /nonexistent/system_bus_socket" in line
    assert "the pull itself succeeded" in line
    assert (root / "models/main/share/models/gguf/main-Q4_K_M.gguf").is_file()


def test_a_pin_mismatch_fails_that_model_only(served, tmp_path):
    _, url, commits = served
    root = tmp_path / "root"
    m = manifest(tmp_path / "models.json", root, {
        "llm": ("org/llm", commits["org/llm"], [], "dual",
                "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        "main": ("org/main-gguf", commits["org/main-gguf"], ["main-Q4_K_M.gguf"], "gguf", None),
    })
    p = run(url, m, "--no-restart")
    assert p.returncode == 22, p.stderr
    (line,) = [e for e in p.stderr.splitlines() if e.startswith("error: ")]  # printed once
    assert line.startswith("error: llm: org/llm@") and "pinned narHash" in line
    assert "error" not in p.stdout and "main: installed" in p.stdout
    assert not (root / "models/llm").exists()
    assert (root / "models/main").exists()


def test_the_pin_is_honoured_and_gates_the_by_hash_path(served, tmp_path):
    _, url, commits = served
    root = tmp_path / "root"
    free = manifest(tmp_path / "free.json", tmp_path / "probe", {
        "llm": ("org/llm", commits["org/llm"], [], "dual", None)})
    assert run(url, free, "--no-restart").returncode == 0
    nar = json.loads((tmp_path / "probe/state/pulls.jsonl").read_text().splitlines()[-1])[
        "narHash"]
    pinned = manifest(tmp_path / "pinned.json", root, {
        "llm": ("org/llm", commits["org/llm"], [], "dual", nar)})
    assert run(url, pinned, "--no-restart").returncode == 0
    gate = root / "by-hash" / nar.replace("/", "_").replace("+", "-")
    assert gate.resolve() == (root / "models/llm").resolve()


def test_missing_manifest_is_one_line(tmp_path):
    p = run("http://127.0.0.1:9", tmp_path / "nope.json")
    assert p.returncode == 23
    assert p.stderr.startswith("error: no manifest at") and len(p.stderr.splitlines()) == 1

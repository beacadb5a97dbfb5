"""Bad declarations and arguments are refused before any download: one line, the exit code of
their kind (2 usage, 23 manifest, 25 input), no request to the Hub, nothing installed, nothing
written in the current directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from model_pull.datamodel import DEFAULT_ROOT


def manifest(tmp_path: Path, hub_repos: Any, *, root: Any = None, **model: Any) -> Path:
    spec = {
        "repo": hub_repos.tiny_gguf.repo,
        "revision": "main",
        "layout": "gguf",
        "units": ["llama-server-main.service"],
    }
    spec.update(model.pop("spec", {}))
    name = model.pop("name", "main")
    units = model.pop(
        "units",
        {"llama-server-main.service": {"runtime": "llama-server", "models": [name]}},
    )
    data = {
        "version": 1,
        "root": str(tmp_path / "root") if root is None else root,
        "models": {name: spec},
        "units": units,
    }
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data))
    return path


def refused(model_pull: Any, devhub: Any, tmp_path: Path, code: int, *args: str, **kw: Any) -> str:
    cwd_before = sorted(os.listdir(Path.cwd()))
    devhub.hub.reset_counters()
    p = model_pull.run(*args, **kw)
    assert p.returncode == code, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert devhub.hub.requests() == [] and devhub.hub.api_requests() == []
    assert sorted(os.listdir(Path.cwd())) == cwd_before
    root = tmp_path / "root"
    assert not (root / "models").exists() or not list((root / "models").iterdir())
    return str(lines[0])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--root", ""], "cannot be the state root"),
        (["--root", "relative/root"], "not an absolute path"),
        (["--name", ""], "cannot be a model name"),
        (["--name", "../x"], "cannot be a model name"),
        (["--nar-hash", "garbage"], "narHash"),
        (["--nar-hash", "sha256-" + "A" * 43 + "="], None),  # well formed: it gets through
        (["--vllm-arg", "x=" + "[" * 100 + "]" * 100], "nests deeper"),
        (["--triton-name", "../up"], "--triton-name"),
    ],
)
def test_bad_fetch_arguments(model_pull, devhub, hub_repos, tmp_path, args, words):
    full = ["fetch", hub_repos.tiny_gguf.repo, "--layout", "gguf", "--gpu", "L4"]
    if "--root" not in args:
        full += ["--root", str(tmp_path / "root")]
    if words is None:  # the control: a well-formed pin is only refused after the download
        p = model_pull.run(*full, *args)
        assert p.returncode == 22, p.stderr
        return
    line = refused(model_pull, devhub, tmp_path, 2, *full, *args)
    assert words in line, line


@pytest.mark.parametrize("repo", ["a/b/c", "../x", "org/..", "org/x--y", "/abs", "", "org/"])
def test_repo_ids_that_are_not_repo_ids(model_pull, devhub, tmp_path, repo):
    line = refused(model_pull, devhub, tmp_path, 2, "fetch", repo, "--root", str(tmp_path / "r"))
    assert "repository id" in line


def test_a_root_that_names_a_file(model_pull, devhub, tmp_path):
    (tmp_path / "afile").write_text("x")
    line = refused(model_pull, devhub, tmp_path, 2, "list", "--root", str(tmp_path / "afile"))
    assert "not a directory" in line


@pytest.mark.parametrize("value", ["", "relative"])
def test_an_empty_or_relative_model_pull_root(model_pull, devhub, hub_repos, tmp_path, value):
    line = refused(
        model_pull,
        devhub,
        tmp_path,
        2,
        "fetch",
        hub_repos.tiny_gguf.repo,
        env={"MODEL_PULL_ROOT": value},
    )
    assert "MODEL_PULL_ROOT" in line


DECLARATIONS: dict[str, dict[str, Any]] = {
    "empty root": {"root": ""},
    "relative root": {"root": "var/lib/inference"},
    "empty model name": {"name": ""},
    "model name with a slash": {"name": "a/b"},
    "garbage narHash": {"spec": {"narHash": "sha256-garbage"}},
    "narHash with a slash trick": {"spec": {"narHash": "../../../etc"}},
    "unknown engine argument": {"spec": {"engineDefaults": {"gpu_memory_utilisation": 0.9}}},
    "deeply nested engine value": {
        "spec": {"engineDefaults": {"hf_overrides": json.loads("[" * 40 + "]" * 40)}}
    },
    "unit that is not a unit": {
        "spec": {"units": ["../../etc/passwd"]},
        "units": {"../../etc/passwd": {"runtime": "llama-server", "models": ["main"]}},
    },
    "unit without .service": {
        "spec": {"units": ["llama"]},
        "units": {"llama": {"runtime": "llama-server", "models": ["main"]}},
    },
    "repo id a/b/c": {"spec": {"repo": "a/b/c"}},
    "repo id ../x": {"spec": {"repo": "../x"}},
    "empty revision": {"spec": {"revision": ""}},
}


@pytest.mark.parametrize("case", sorted(DECLARATIONS))
def test_bad_declarations_are_refused_before_any_download(
    model_pull, devhub, hub_repos, tmp_path, case
):
    path = manifest(tmp_path, hub_repos, **json.loads(json.dumps(DECLARATIONS[case])))
    env = {"MODEL_PULL_MANIFEST": str(path)}
    refused(model_pull, devhub, tmp_path, 23, "--no-restart", env=env)
    assert not DEFAULT_ROOT.joinpath("models", "main").is_symlink()


def test_deeply_nested_manifest_json(model_pull, devhub, tmp_path):
    path = tmp_path / "models.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    line = refused(
        model_pull, devhub, tmp_path, 23, "--no-restart", env={"MODEL_PULL_MANIFEST": str(path)}
    )
    assert "too deeply" in line


def test_hash_of_a_fifo(model_pull, devhub, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    line = refused(model_pull, devhub, tmp_path, 25, "hash", str(fifo))
    assert "not a regular file" in line
    tree = tmp_path / "tree"
    tree.mkdir()
    os.mkfifo(tree / "pipe")
    refused(model_pull, devhub, tmp_path, 25, "hash", str(tree))


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "x" * 212])
def test_hash_with_a_name_nix_would_refuse(model_pull, devhub, tmp_path, name):
    (tmp_path / "tree").mkdir()
    line = refused(model_pull, devhub, tmp_path, 2, "hash", str(tmp_path / "tree"), "--name", name)
    assert "is not a Nix store name" in line


@pytest.mark.parametrize("command", ["check", "fetch"])
def test_a_bad_gpu_spec_is_refused_before_any_request(
    model_pull, devhub, hub_repos, tmp_path, command
):
    repo = hub_repos.tiny_gguf.repo
    args = [command, repo, "--gpu", "Z80", "--root", str(tmp_path / "root")]
    line = refused(model_pull, devhub, tmp_path, 2, *args)
    assert "bad --gpu 'Z80'" in line


def test_verify_of_a_root_that_does_not_exist(model_pull, devhub, tmp_path):
    missing = tmp_path / "no-such-root"
    line = refused(model_pull, devhub, tmp_path, 20, "--root", str(missing), "verify")
    assert f"no state root at {missing}" in line
    assert not missing.exists()

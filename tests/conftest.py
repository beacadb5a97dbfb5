"""Shared test setup: a clean Hugging Face environment and a Hub-compatible server on loopback.

huggingface_hub reads its settings (HF_ENDPOINT, HF_HOME, telemetry, token) when it is first
imported, so this module sets them at import time and starts the DevHub server in
``pytest_configure``, before any test module (which may import huggingface_hub) is collected.

Fixtures (keep this file generic; feature-specific fixtures live in their own test files):

- ``devhub`` (session): :class:`DevHubServer` with ``.hub`` (loopback_hub.TestHub: the package's
  DevHub with fault injection and request recording) and ``.url``: THE loopback Hub of the test
  session. ``HF_ENDPOINT`` already points at it for in-process calls and subprocesses alike.
- ``hub_repos`` (session): :class:`HubRepos`, the standard repos (see its fields).
- ``new_repo`` (function): ``new_repo(files, **add_repo_kwargs) -> HubRepo`` under a fresh,
  unique repo id, for tests that inject faults or move branches.
- ``hf_cache`` (function): an empty ``HF_HUB_CACHE`` directory for one test.
- ``model_pull`` (function): :class:`ModelPull`, the real command line in a subprocess with an
  environment of its own (no NixOS manifest, no system bus, a private HF_HOME), talking to the
  loopback Hub.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# ---- environment hygiene: BEFORE huggingface_hub is imported anywhere ------------------------

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="model-pull-tests-"))
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)

for _var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HUB_CACHE"):
    os.environ.pop(_var, None)
os.environ.update(
    {
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HF_HOME": str(_SESSION_DIR / "hf-home"),
        "HF_HUB_CACHE": str(_SESSION_DIR / "hf-home" / "hub"),
        "HF_TOKEN_PATH": str(_SESSION_DIR / "hf-home" / "token"),
        "HF_XET_CACHE": str(_SESSION_DIR / "hf-home" / "xet"),
    }
)

from loopback_hub import TestHub  # noqa: E402
from model_pull import tinymodels  # noqa: E402
from model_pull.devhub import ServerHandle  # noqa: E402

GATED_TOKEN = "hf_test_token_123"  # a test token, accepted by the loopback server only
MISSING_REVISION = "no-such-revision"
MISSING_REPO = "tiny-org/does-not-exist"
UNSAFE_NAMES = ("/etc/passwd", "../x", "a/../../b", "nul\0name.txt", "back\\slash.txt")


@dataclass(frozen=True)
class DevHubServer:
    """The session's loopback Hub."""

    hub: TestHub
    handle: ServerHandle

    @property
    def url(self) -> str:
        return self.handle.url


_SERVER: DevHubServer | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _SERVER
    hub = TestHub(_SESSION_DIR / "devhub")
    _SERVER = DevHubServer(hub, hub.serve("127.0.0.1", 0))
    os.environ["HF_ENDPOINT"] = _SERVER.url


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SERVER is not None:
        _SERVER.handle.close()


@dataclass(frozen=True)
class HubRepo:
    """A repo on the loopback Hub: id, the revision to ask for, its commit, and its files."""

    repo: str
    commit: str
    files: Mapping[str, bytes] = field(repr=False)
    revision: str = "main"
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class HubRepos:
    """The standard repos every test can use (created once per session).

    - ``tiny_llama``: tiny-org/tiny-llama@main (write_tiny_llama, seed 0)
    - ``tiny_llama_v2``: the same repo, branch ``v2`` (seed 1): a second, different commit
    - ``tiny_gguf``: tiny-org/tiny-gguf: tiny.gguf, tiny-draft.gguf (smaller, same vocab), README.md
    - ``tiny_fp8``: tiny-org/tiny-fp8: config with quantization_config (fp8), fp8 weights
    - ``corrupt``: broken/corrupt: tiny llama whose model.safetensors is served with wrong bytes
      (right size) — the listing's sha256 is the true one
    - ``unsafe``: broken/unsafe: config.json plus UNSAFE_NAMES in the listing
    - ``gated``: gated/tiny: tiny llama, gated; ``.token`` (GATED_TOKEN) is accepted
    - ``missing_revision``/``missing_repo``: names that the hub answers with 404
    """

    tiny_llama: HubRepo
    tiny_llama_v2: HubRepo
    tiny_gguf: HubRepo
    tiny_fp8: HubRepo
    corrupt: HubRepo
    unsafe: HubRepo
    gated: HubRepo
    missing_revision: str = MISSING_REVISION
    missing_repo: str = MISSING_REPO


@pytest.fixture(scope="session")
def devhub() -> DevHubServer:
    assert _SERVER is not None, "pytest_configure did not start the devhub"
    return _SERVER


def _add(
    hub: TestHub, repo: str, files: Mapping[str, bytes], *, branch: str = "main", **kw: object
) -> HubRepo:
    commit = hub.add_repo(repo, files, branch=branch, **kw)  # type: ignore[arg-type]
    token = kw.get("tokens", (None,))[0] if kw.get("gated") else None  # type: ignore[index]
    return HubRepo(repo=repo, commit=commit, files=dict(files), revision=branch, token=token)


@pytest.fixture(scope="session")
def hub_repos(devhub: DevHubServer, tmp_path_factory: pytest.TempPathFactory) -> HubRepos:
    hub = devhub.hub
    work = tmp_path_factory.mktemp("hub-repos")
    llama = tinymodels.tiny_llama_files(seed=0)
    gguf_files = {
        "tiny.gguf": tinymodels.write_tiny_gguf(work / "tiny.gguf", seed=0).read_bytes(),
        "tiny-draft.gguf": tinymodels.write_tiny_gguf(
            work / "tiny-draft.gguf", seed=1, name="tiny-draft", shape=tinymodels.DRAFT_GGUF_SHAPE
        ).read_bytes(),
        "README.md": b"# tiny-gguf\n\nA tiny llama GGUF and its draft model, for tests.\n",
    }
    unsafe_files = {"config.json": llama["config.json"]}
    unsafe_files.update({name: b"must never be written\n" for name in UNSAFE_NAMES})
    repos = HubRepos(
        tiny_llama=_add(hub, "tiny-org/tiny-llama", llama),
        tiny_llama_v2=_add(
            hub, "tiny-org/tiny-llama", tinymodels.tiny_llama_files(seed=1), branch="v2"
        ),
        tiny_gguf=_add(hub, "tiny-org/tiny-gguf", gguf_files),
        tiny_fp8=_add(hub, "tiny-org/tiny-fp8", tinymodels.tiny_llama_files(quantization="fp8")),
        corrupt=_add(hub, "broken/corrupt", llama),
        unsafe=_add(hub, "broken/unsafe", unsafe_files, allow_unsafe_names=True),
        gated=_add(hub, "gated/tiny", llama, gated=True, tokens=(GATED_TOKEN,)),
    )
    hub.inject("broken/corrupt", "model.safetensors", corrupt=True)
    return repos


_REPO_COUNTER = itertools.count()


@pytest.fixture
def new_repo(devhub: DevHubServer, request: pytest.FixtureRequest) -> Callable[..., HubRepo]:
    """``new_repo(files, **add_repo_kwargs)``: a repo under a fresh id (``scratch/<test>-<n>``)."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)
    base = "-".join(part for part in base.split("-") if part)[:60].strip("-")  # no "--"

    def make(files: Mapping[str, bytes], **kw: Any) -> HubRepo:
        repo = f"scratch/{base}-{next(_REPO_COUNTER)}"
        return _add(devhub.hub, repo, files, **kw)

    return make


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty Hugging Face cache for one test (HF_HUB_CACHE set for subprocesses too).

    In-process huggingface_hub calls read HF_HUB_CACHE at import: pass ``cache_dir=`` to them.
    """
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    yield cache


@dataclass
class ModelPull:
    """`python -m model_pull ARGS` as a user runs it: `run` returns the process, `ok` asserts
    exit 0, `json` adds --json and parses stdout, `error` asserts one `error:` line on stderr
    and the exit code, and returns that line."""

    env: dict[str, str]

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "model_pull", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        p = self.run(*args, env=env)
        assert p.returncode == 0, f"model-pull {' '.join(args)} -> {p.returncode}\n{p.stderr}"
        return p

    def json(self, *args: str, env: Mapping[str, str] | None = None) -> Any:
        return json.loads(self.ok(*args, "--json", env=env).stdout)

    def error(self, code: int, *args: str, env: Mapping[str, str] | None = None) -> str:
        p = self.run(*args, env=env)
        assert p.returncode == code, f"exit {p.returncode}, expected {code}\n{p.stderr}"
        lines = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, p.stderr
        return lines[0]


@pytest.fixture
def model_pull(devhub: DevHubServer, hub_repos: HubRepos, tmp_path: Path) -> ModelPull:
    """(The standard repos are there: `hub_repos`.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODEL_PULL"))}
    env.update(
        HF_ENDPOINT=devhub.url,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HOME=str(tmp_path / "hf-home"),
        MODEL_PULL_MANIFEST=str(tmp_path / "no-manifest.json"),  # never the machine's own
        DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={tmp_path}/no-system-bus",
        NIX_STATE_DIR=str(tmp_path / "nix-state"),
        NIX_CONFIG="experimental-features = nix-command",
    )
    return ModelPull(env)

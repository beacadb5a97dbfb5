"""`model-pull demo`: the whole job on an embedded default, with nothing from the internet.

Generates a tiny llama-like model, serves it from a Hub-compatible server on loopback, fetches
it with the real huggingface_hub client into a state root, and shows that the entry resolves
offline exactly as vLLM and SGLang resolve it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model_pull import hub, pull
from model_pull.datamodel import Layout
from model_pull.devhub import DevHub
from model_pull.progress import Progress
from model_pull.store import StateRoot
from model_pull.tinymodels import tiny_llama_files

DEMO_REPO = "tiny-org/tiny-llama"


@dataclass(frozen=True)
class DemoResult:
    installed: pull.Installed
    resolved: Path  # what vLLM's offline snapshot_download call returned
    endpoint: str


def run(root: Path, say: Callable[[str], None]) -> DemoResult:
    hub_dir = root / "demo-hub"
    devhub = DevHub(hub_dir)
    commit = devhub.add_repo(DEMO_REPO, tiny_llama_files(seed=0))
    say(f"generated {DEMO_REPO} (commit {commit}) in a loopback Hub at {hub_dir}")
    with devhub.serve() as server:
        say(f"serving it at {server.url}; fetching with huggingface_hub ...")
        options = pull.Options(
            layout=Layout.DUAL,
            triton_name="tiny_llama",
            engine_defaults={"max_model_len": 512, "dtype": "auto"},
        )
        installed = pull.fetch(
            DEMO_REPO,
            "main",
            options,
            StateRoot(root / "state"),
            hub.Remote(endpoint=server.url),
            progress=Progress(True),
        )
    resolved = resolve_offline(installed.entry.path / "share/models/hub", DEMO_REPO)
    return DemoResult(installed, resolved, server.url)


def resolve_offline(hub_cache: Path, repo: str) -> Path:
    """vLLM's exact offline call (vllm/transformers_utils/repo_utils.py), on the entry."""
    from huggingface_hub import snapshot_download

    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return Path(
            snapshot_download(
                repo_id=repo,
                local_files_only=True,
                ignore_patterns="*",
                revision=None,
                cache_dir=hub_cache,
            )
        )
    finally:
        if previous is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = previous

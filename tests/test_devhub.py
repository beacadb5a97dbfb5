"""The loopback Hub and the tiny models, exercised with the REAL huggingface_hub client."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile

from model_pull import tinymodels
from model_pull.devhub import DevHub, git_blob_sha1_and_sha256

REPO_ROOT = Path(__file__).resolve().parent.parent


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT / "helper"), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.update(extra)
    return env


# ---- downloads -----------------------------------------------------------------------------


def test_snapshot_download_gets_every_file_byte_for_byte(hub_repos, hf_cache):
    repo = hub_repos.tiny_llama
    path = Path(snapshot_download(repo.repo, revision="main", cache_dir=hf_cache))
    assert path.name == repo.commit
    got = {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert got == dict(repo.files)


def test_a_pinned_old_commit_still_resolves_after_the_branch_moves(new_repo, devhub, hf_cache):
    first = new_repo({"config.json": b'{"v": 1}'})
    second_commit = devhub.hub.add_repo(first.repo, {"config.json": b'{"v": 2}'})
    assert second_commit != first.commit
    old = hf_hub_download(first.repo, "config.json", revision=first.commit, cache_dir=hf_cache)
    new = hf_hub_download(first.repo, "config.json", revision="main", cache_dir=hf_cache)
    assert Path(old).read_bytes() == b'{"v": 1}'
    assert Path(new).read_bytes() == b'{"v": 2}'


def test_allow_patterns_select_only_the_gguf_files(hub_repos, hf_cache):
    repo = hub_repos.tiny_gguf
    path = Path(snapshot_download(repo.repo, allow_patterns=["*.gguf"], cache_dir=hf_cache))
    assert sorted(p.name for p in path.iterdir()) == ["tiny-draft.gguf", "tiny.gguf"]


def test_listing_carries_git_sha1_and_lfs_sha256(hub_repos):
    repo = hub_repos.tiny_llama
    entries = {
        e.path: e
        for e in HfApi().list_repo_tree(repo.repo, recursive=True)
        if isinstance(e, RepoFile)
    }
    assert set(entries) == set(repo.files)
    for name, data in repo.files.items():
        git_sha1, sha256, size = git_blob_sha1_and_sha256(data)
        assert entries[name].blob_id == git_sha1
        assert entries[name].size == size
        if name.endswith(".safetensors"):
            lfs = entries[name].lfs
            assert lfs is not None and lfs.sha256 == sha256
        else:
            assert entries[name].lfs is None


def test_model_info_with_files_metadata(hub_repos):
    repo = hub_repos.tiny_llama
    info = HfApi().model_info(repo.repo, revision=repo.revision, files_metadata=True)
    assert info.sha == repo.commit
    siblings = {s.rfilename: s for s in info.siblings or []}
    weights = siblings["model.safetensors"]
    assert weights.lfs is not None
    assert weights.lfs.sha256 == hashlib.sha256(repo.files["model.safetensors"]).hexdigest()
    assert weights.size == len(repo.files["model.safetensors"])
    assert siblings["config.json"].blob_id == git_blob_sha1_and_sha256(repo.files["config.json"])[0]


def test_tree_listing_is_paginated_with_link_headers(devhub, new_repo):
    files = {f"shard-{i:02d}.txt": f"{i}\n".encode() for i in range(7)}
    repo = new_repo(files)
    devhub.hub.page_size = 3
    try:
        url = f"{devhub.url}/api/models/{repo.repo}/tree/main?recursive=true&expand=false"
        with urllib.request.urlopen(url) as resp:
            first_page = json.load(resp)
            link = resp.headers["Link"]
        assert len(first_page) == 3
        assert link is not None and link.endswith('; rel="next"')
        listed = [e.path for e in HfApi().list_repo_tree(repo.repo, recursive=True)]
    finally:
        devhub.hub.page_size = 1000
    assert sorted(listed) == sorted(files)


# ---- errors map to the client's own exceptions -------------------------------------------


def test_unknown_repo_is_repository_not_found(hub_repos, hf_cache):
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(hub_repos.missing_repo, cache_dir=hf_cache)


def test_unknown_revision_is_revision_not_found(hub_repos, hf_cache):
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(
            hub_repos.tiny_llama.repo, revision=hub_repos.missing_revision, cache_dir=hf_cache
        )


def test_missing_file_is_entry_not_found(hub_repos, hf_cache):
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(hub_repos.tiny_llama.repo, "no-such-file.json", cache_dir=hf_cache)


@pytest.mark.parametrize("token", [None, "hf_wrong_token"])
def test_gated_repo_without_the_right_token_is_gated_repo_error(hub_repos, hf_cache, token):
    with pytest.raises(GatedRepoError):
        hf_hub_download(hub_repos.gated.repo, "config.json", cache_dir=hf_cache, token=token)


def test_gated_repo_with_the_token_downloads(hub_repos, hf_cache):
    repo = hub_repos.gated
    path = hf_hub_download(repo.repo, "config.json", cache_dir=hf_cache, token=repo.token)
    assert Path(path).read_bytes() == repo.files["config.json"]


# ---- fault injection ----------------------------------------------------------------------


def test_corrupt_repo_serves_bytes_that_do_not_match_the_listed_hash(hub_repos, hf_cache):
    repo = hub_repos.corrupt
    listed = {
        e.path: e
        for e in HfApi().list_repo_tree(repo.repo, recursive=True)
        if isinstance(e, RepoFile)
    }
    path = Path(hf_hub_download(repo.repo, "model.safetensors", cache_dir=hf_cache))
    # The client only checks the size; the content is wrong.
    assert path.stat().st_size == listed["model.safetensors"].size
    lfs = listed["model.safetensors"].lfs
    assert lfs is not None and _sha256(path) != lfs.sha256
    config = Path(hf_hub_download(repo.repo, "config.json", cache_dir=hf_cache))
    assert config.read_bytes() == repo.files["config.json"]


def test_unsafe_repo_lists_the_unsafe_names_verbatim(hub_repos):
    listed = {e.path for e in HfApi().list_repo_tree(hub_repos.unsafe.repo, recursive=True)}
    assert {"/etc/passwd", "../x", "a/../../b", "nul\0name.txt", "back\\slash.txt"} <= listed


def test_unsafe_names_are_refused_by_add_repo_unless_asked(tmp_path):
    hub = DevHub(tmp_path)
    with pytest.raises(ValueError, match="unsafe file name"):
        hub.add_repo("o/r", {"../x": b"x"})


def test_a_dropped_connection_resumes_with_a_range_request(devhub, new_repo, hf_cache):
    # huggingface_hub reads the body in 10 MiB chunks and resumes from the last whole chunk.
    size = 24 * 1024 * 1024
    data = tinymodels._stream(7, "resume", size)
    repo = new_repo({"weights.bin": data})
    devhub.hub.inject(repo.repo, "weights.bin", drop_after=15 * 1024 * 1024)

    path = Path(hf_hub_download(repo.repo, "weights.bin", cache_dir=hf_cache))

    assert path.read_bytes() == data
    gets = [r for r in devhub.hub.requests(repo.repo, "weights.bin") if r.method == "GET"]
    assert [(g.range, g.status) for g in gets] == [
        (None, 200),
        (f"bytes={10 * 1024 * 1024}-", 206),
    ]
    assert gets[0].body_bytes == 15 * 1024 * 1024
    assert gets[1].body_bytes == size - 10 * 1024 * 1024


def test_huggingface_hub_does_not_resume_after_its_process_is_killed(devhub, new_repo, hf_cache):
    """A canary for model-pull's design: huggingface_hub 2.4 downloads into a per-process
    `<etag>.<uuid>.incomplete` file, so a killed pull leaves that file behind and the next
    process starts again from byte 0. If this starts failing, upstream learned to resume."""
    size = 3 * 1024 * 1024
    data = tinymodels._stream(8, "killed", size)
    repo = new_repo({"weights.bin": data})
    devhub.hub.inject(repo.repo, "weights.bin", throttle_bps=1024 * 1024)
    script = textwrap.dedent(
        f"""
        from huggingface_hub import hf_hub_download
        hf_hub_download({repo.repo!r}, "weights.bin", cache_dir={str(hf_cache)!r})
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], env=_child_env())
    try:
        deadline = time.monotonic() + 60
        while devhub.hub.bytes_served(repo.repo, "weights.bin") < 1024 * 1024:
            assert child.poll() is None, "the download ended before it could be killed"
            assert time.monotonic() < deadline, "the download did not start"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The server records a request when its body ends: wait for the killed one, so that the last
    # GET below is the second download's.
    deadline = time.monotonic() + 30
    while not [r for r in devhub.hub.requests(repo.repo, "weights.bin") if r.method == "GET"]:
        assert time.monotonic() < deadline, "the killed download was never recorded"
        time.sleep(0.05)
    blobs = hf_cache / f"models--{repo.repo.replace('/', '--')}" / "blobs"
    orphans = list(blobs.glob("*.incomplete"))
    assert len(orphans) == 1

    devhub.hub.clear_faults(repo.repo)
    path = Path(hf_hub_download(repo.repo, "weights.bin", cache_dir=hf_cache))
    assert path.read_bytes() == data
    # The killed request is recorded when its thread notices the closed socket, which may be
    # after the new download: look for the new one, not for the last one.
    gets = [r for r in devhub.hub.requests(repo.repo, "weights.bin") if r.method == "GET"]
    assert (None, 200, size) in [(r.range, r.status, r.body_bytes) for r in gets]
    assert all(r.range is None for r in gets)  # never resumed with a Range
    assert orphans[0].exists(), "the orphaned partial file is left for the caller to clean"


def test_range_requests_get_206_and_416(devhub, hub_repos):
    repo = hub_repos.tiny_llama
    data = repo.files["config.json"]
    url = f"{devhub.url}/{repo.repo}/resolve/main/config.json"
    req = urllib.request.Request(url, headers={"Range": "bytes=5-9"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 5-9/{len(data)}"
        assert resp.read() == data[5:10]
    req = urllib.request.Request(url, headers={"Range": f"bytes={len(data)}-"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 416


# ---- the command line serves a saved hub -----------------------------------------------------


def test_command_line_serves_repos_saved_in_the_directory(tmp_path):
    hub = DevHub(tmp_path / "hub")
    commit = hub.add_repo("cli/repo", {"config.json": b"{}"})
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "model_pull.devhub",
            "serve",
            str(tmp_path / "hub"),
            "--port-file",
            str(port_file),
        ],
        env=_child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        api = HfApi(endpoint=f"http://127.0.0.1:{port_file.read_text()}")
        assert api.model_info("cli/repo").sha == commit
        # A repo added while it runs is served too (the JSON on disk is the truth).
        later = hub.add_repo("cli/later", {"a.txt": b"a"})
        assert api.model_info("cli/later").sha == later
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


# ---- the tiny models are real models ---------------------------------------------------------


def test_transformers_loads_tiny_llama_offline_from_the_cache(hub_repos, hf_cache):
    repo = hub_repos.tiny_llama
    snapshot_download(repo.repo, cache_dir=hf_cache)
    script = textwrap.dedent(
        f"""
        from transformers import AutoConfig, AutoTokenizer
        config = AutoConfig.from_pretrained({repo.repo!r})
        tok = AutoTokenizer.from_pretrained({repo.repo!r})
        ids = tok("Hello, world!")["input_ids"]
        assert ids[0] == tok.bos_token_id == 1, ids
        assert tok.decode(ids, skip_special_tokens=True) == "Hello, world!"
        assert config.vocab_size == len(tok), (config.vocab_size, len(tok))
        print(config.model_type, config.num_hidden_layers)
        """
    )
    env = _child_env(
        HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hf_cache), HF_ENDPOINT="http://127.0.0.1:9"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["llama", "2"]


def test_tiny_llama_weights_match_the_config(tmp_path):
    from safetensors import safe_open

    files = tinymodels.write_tiny_llama(tmp_path)
    config = json.loads(files["config.json"].read_text())
    with safe_open(str(files["model.safetensors"]), framework="numpy") as f:
        embed = f.get_slice("model.embed_tokens.weight")
        k_proj = f.get_slice("model.layers.1.self_attn.k_proj.weight")
        assert embed.get_shape() == [config["vocab_size"], config["hidden_size"]]
        assert embed.get_dtype() == "BF16"
        kv_dim = config["num_key_value_heads"] * config["head_dim"]
        assert k_proj.get_shape() == [kv_dim, config["hidden_size"]]


def test_fp8_variant_has_fp8_weights_and_quantization_config(tmp_path):
    from safetensors import safe_open

    files = tinymodels.write_tiny_llama(tmp_path, quantization="fp8")
    config = json.loads(files["config.json"].read_text())
    assert config["quantization_config"]["quant_method"] == "fp8"
    with safe_open(str(files["model.safetensors"]), framework="numpy") as f:
        q = f.get_slice("model.layers.0.self_attn.q_proj.weight")
        assert q.get_dtype() == "F8_E4M3"
        assert "model.layers.0.self_attn.q_proj.weight_scale_inv" in set(f.keys())


def test_gguf_is_readable_with_the_llama_keys(tmp_path):
    import gguf

    reader = gguf.GGUFReader(tinymodels.write_tiny_gguf(tmp_path / "t.gguf"))
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["llama.block_count"].contents() == 2
    assert fields["llama.embedding_length"].contents() == 128
    assert fields["llama.attention.head_count"].contents() == 4
    assert fields["llama.attention.head_count_kv"].contents() == 2
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert "<0xFF>" in tokens
    assert len(tokens) == len(fields["tokenizer.ggml.scores"].contents())
    assert {t.name for t in reader.tensors} >= {"token_embd.weight", "blk.1.ffn_down.weight"}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = tinymodels.write_tiny_llama(tmp_path / "a", seed=3)
    b = tinymodels.write_tiny_llama(tmp_path / "b", seed=3)
    c = tinymodels.write_tiny_llama(tmp_path / "c", seed=4)
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes(), name
    assert a["model.safetensors"].read_bytes() != c["model.safetensors"].read_bytes()
    g1 = tinymodels.write_tiny_gguf(tmp_path / "1.gguf", seed=3)
    g2 = tinymodels.write_tiny_gguf(tmp_path / "2.gguf", seed=3)
    g3 = tinymodels.write_tiny_gguf(tmp_path / "3.gguf", seed=4)
    assert g1.read_bytes() == g2.read_bytes() != g3.read_bytes()


def test_same_files_same_commit_on_any_hub(tmp_path):
    files = tinymodels.tiny_llama_files(seed=0)
    assert DevHub(tmp_path / "x").add_repo("a/b", files) == DevHub(tmp_path / "y").add_repo(
        "a/b", files
    )


def test_synthetic_weights_have_the_requested_size_and_are_valid_safetensors(tmp_path):
    from safetensors import safe_open

    total = 3 * 1024 * 1024 + 5
    files = tinymodels.synthetic_weights(tmp_path, total, files=2)
    shards = sorted(p for n, p in files.items() if n.endswith(".safetensors"))
    assert sum(p.stat().st_size for p in shards) == total
    for shard in shards:
        with safe_open(str(shard), framework="numpy") as f:
            (name,) = f.keys()
            assert f.get_slice(name).get_dtype() == "U8"
    assert shards[0].read_bytes() != shards[1].read_bytes()

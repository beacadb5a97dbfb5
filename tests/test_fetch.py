"""`model-pull fetch/package/hash/verify/list/gc/rollback` as a user runs them.

The real huggingface_hub client (inside model-pull) talks to the DevHub server on loopback; hashes
and store names are checked against Debian's nix-bin; entries are resolved offline with
huggingface_hub's and transformers' own code; config.pbtxt is parsed with tritonclient's schema.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from loopback_hub import TestHub
from model_pull import engine_args
from model_pull.hashing import CHUNK
from model_pull.tinymodels import tiny_llama_files

if TYPE_CHECKING:
    from conftest import ModelPull

MODEL_PULL = [sys.executable, "-m", "model_pull"]
TOKEN = "hf_secret_token_for_tests_42"

needs_nix = pytest.mark.skipif(shutil.which("nix-store") is None, reason="nix-bin not installed")


@dataclass
class Hub:
    hub: TestHub  # the session's loopback Hub (conftest.py)
    llama: str  # commit of tiny-org/tiny-llama main
    gguf: bytes  # tiny-org/tiny-gguf's tiny.gguf


@pytest.fixture
def hub(devhub, hub_repos) -> Hub:
    return Hub(devhub.hub, hub_repos.tiny_llama.commit, hub_repos.tiny_gguf.files["tiny.gguf"])


@pytest.fixture
def env(model_pull: ModelPull) -> dict[str, str]:
    return model_pull.env


def mp(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([*MODEL_PULL, *args], env=env, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"model-pull {' '.join(args)} -> {p.returncode}\n{p.stderr}")
    return p


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def fetch_json(env: dict[str, str], root: Path, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(mp(env, "fetch", *args, "--root", str(root), "--json").stdout)
    return out


def snapshot(root: Path) -> dict[str, str]:
    """What a runtime could see: every path under store/ and models/ (links with targets)."""
    out = {}
    for top in ("store", "models", "by-hash"):
        base = root / top
        if not base.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            for n in dirnames + filenames:
                p = Path(dirpath) / n
                out[str(p.relative_to(root))] = os.readlink(p) if p.is_symlink() else ""
    return out


# --- content addressing against the real Nix ------------------------------------------------


@needs_nix
def test_entry_is_named_and_hashed_exactly_as_nix_would(env, tmp_path):
    info = fetch_json(env, tmp_path / "root", "tiny-org/tiny-llama")
    entry = Path(info["path"])
    nix_hash = subprocess.run(
        ["nix", "hash", "path", str(entry)], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    assert info["narHash"] == nix_hash
    # nix-store --add names the path after the basename: give it a directory called <name>.
    view = tmp_path / "view" / "tiny-llama"
    shutil.copytree(entry, view, symlinks=True)
    added = subprocess.run(
        ["nix-store", "--store", str(tmp_path / "chroot"), "--add", str(view)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(added).name == entry.name == info["storeName"]
    assert (tmp_path / "root" / "models" / "tiny-llama").resolve() == entry


@needs_nix
def test_hash_command_equals_nix_hash_path(env, tmp_path):
    d = tmp_path / "some-dir"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x.bin").write_bytes(os.urandom(2 * CHUNK + 100_003))  # read ahead in chunks
    (d / "sub" / "empty").write_bytes(b"")
    (d / "run").write_text("#!/bin/sh\n")
    (d / "run").chmod(0o755)
    (d / "link").symlink_to("sub/x.bin")
    out = json.loads(mp(env, "hash", str(d), "--json").stdout)
    nix = subprocess.run(
        ["nix", "hash", "path", str(d)], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    added = subprocess.run(
        ["nix-store", "--store", str(tmp_path / "chroot"), "--add", str(d)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert out["narHash"] == nix
    assert Path(out["storePath"]).name == Path(added).name


@needs_nix
def test_store_nix_imports_the_entry_with_a_gc_root(env, tmp_path):
    root = tmp_path / "root"
    chroot = tmp_path / "chroot"
    info = fetch_json(
        env,
        root,
        "tiny-org/tiny-gguf",
        "--layout",
        "gguf",
        "--store",
        "nix",
        "--nix-store",
        str(chroot),
    )
    assert Path(info["nixStorePath"]).name == info["storeName"]
    real = chroot / info["nixStorePath"].lstrip("/")
    assert (real / "share/models/gguf/tiny.gguf").is_file()
    gcroot = root / "gcroots" / "tiny-gguf"
    assert gcroot.is_symlink() and os.readlink(gcroot) == info["nixStorePath"]


# --- layouts --------------------------------------------------------------------------------


def test_dual_entry_resolves_offline_for_vllm_transformers_and_triton(hub, env, tmp_path):
    info = fetch_json(
        env,
        tmp_path / "root",
        "tiny-org/tiny-llama",
        "--triton-name",
        "tiny",
        "--vllm-arg",
        "gpu_memory_utilization=0.85",
        "--vllm-arg",
        "max_model_len=512",
    )
    entry = Path(info["path"])
    hub_dir = entry / "share/models/hub"
    slug = hub_dir / "models--tiny-org--tiny-llama"
    assert (slug / "refs/main").read_bytes() == hub.llama.encode()  # 40 hex, no newline
    assert not (slug / "trees").exists()
    # vLLM's exact call, then transformers, offline, in a clean process.
    probe = """
import json, sys
from huggingface_hub import snapshot_download
p = snapshot_download(repo_id="tiny-org/tiny-llama", local_files_only=True,
                      ignore_patterns="*", revision=None)
from transformers import AutoConfig, AutoTokenizer
cfg = AutoConfig.from_pretrained("tiny-org/tiny-llama")
tok = AutoTokenizer.from_pretrained("tiny-org/tiny-llama")
print(json.dumps({"path": p, "arch": cfg.architectures, "ids": tok("hello world")["input_ids"]}))
"""
    penv = {k: v for k, v in env.items() if k != "HF_ENDPOINT"}
    penv.update(HF_HUB_CACHE=str(hub_dir), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], env=penv, check=True, capture_output=True, text=True
        ).stdout.splitlines()[-1]
    )
    assert out["path"] == str(slug / "snapshots" / hub.llama)
    assert out["arch"] == ["LlamaForCausalLM"] and out["ids"]
    # Triton: the model directory, one copy of the bytes through a relative symlink.
    tdir = entry / "share/models/tiny"
    weights = tdir / "weights"
    assert weights.is_symlink() and not os.readlink(weights).startswith("/")
    assert (weights / "model.safetensors").samefile(
        slug / "snapshots" / hub.llama / "model.safetensors"
    )
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse((tdir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.backend == "vllm" and cfg.max_batch_size == 0
    assert cfg.model_transaction_policy.decoupled
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_MODEL
    assert json.loads((tdir / "model-defaults.json").read_text()) == {
        "gpu_memory_utilization": 0.85,
        "max_model_len": 512,
    }


def test_entry_is_read_only_and_never_names_its_location(env, tmp_path):
    info = fetch_json(env, tmp_path / "root", "tiny-org/tiny-llama")
    entry = Path(info["path"])
    for dirpath, dirnames, filenames in os.walk(entry):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                assert not os.readlink(p).startswith("/")
                continue
            assert not p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), p
            if p.is_file():
                assert str(tmp_path).encode() not in p.read_bytes()
    manifest = json.loads((entry / "share/model-pull/manifest.json").read_text())
    assert manifest["revision"] == info["revision"] and "time" not in json.dumps(manifest)


def test_same_inputs_give_the_same_entry_anywhere(env, tmp_path):
    a = fetch_json(env, tmp_path / "a", "tiny-org/tiny-llama")
    b = fetch_json(env, tmp_path / "b", "tiny-org/tiny-llama")
    assert (a["narHash"], a["storeName"]) == (b["narHash"], b["storeName"])
    c = fetch_json(env, tmp_path / "c", "tiny-org/tiny-llama", "--layout", "hf")
    assert c["narHash"] != a["narHash"]


def test_package_of_an_hf_cache_tree_equals_fetch(hub, env, tmp_path):
    fetched = fetch_json(env, tmp_path / "a", "tiny-org/tiny-llama")
    cache = tmp_path / "hfcache"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from huggingface_hub import snapshot_download; "
            f"snapshot_download('tiny-org/tiny-llama', cache_dir={str(cache)!r})",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    packaged = json.loads(
        mp(
            env,
            "package",
            str(cache / "models--tiny-org--tiny-llama"),
            "--root",
            str(tmp_path / "b"),
            "--json",
        ).stdout
    )
    assert packaged["narHash"] == fetched["narHash"]
    # and a plain directory with the same files, given the repo and revision
    plain = tmp_path / "plain"
    plain.mkdir()
    for name, data in tiny_llama_files(seed=0).items():
        (plain / name).write_bytes(data)
    packaged2 = json.loads(
        mp(
            env,
            "package",
            str(plain),
            "--repo",
            "tiny-org/tiny-llama",
            "--revision",
            hub.llama,
            "--name",
            "tiny-llama",
            "--root",
            str(tmp_path / "c"),
            "--json",
        ).stdout
    )
    assert packaged2["narHash"] == fetched["narHash"]
    assert (plain / "config.json").stat().st_mode & stat.S_IWUSR  # the source is untouched


def test_gguf_single_and_hf_layouts(hub, env, tmp_path):
    root = tmp_path / "root"
    g = fetch_json(env, root, "tiny-org/tiny-gguf", "--layout", "gguf")
    assert [f["path"] for f in g["files"]] == ["tiny-draft.gguf", "tiny.gguf"]  # *.gguf
    assert (Path(g["path"]) / "share/models/gguf/tiny.gguf").read_bytes() == hub.gguf
    s = fetch_json(
        env,
        root,
        "tiny-org/tiny-llama",
        "--layout",
        "single",
        "--name",
        "single",
        "--triton-name",
        "tiny_single",
    )
    tdir = Path(s["path"]) / "share/models/tiny_single"
    assert (tdir / "weights/model.safetensors").is_file() and (tdir / "config.pbtxt").is_file()
    assert not (Path(s["path"]) / "share/models/hub").exists()


def test_patch_tokenizer_for_sglang(new_repo, env, tmp_path):
    files = tiny_llama_files(seed=3)
    cfg = json.loads(files["tokenizer_config.json"])
    cfg["tokenizer_class"] = "TokenizersBackend"
    files["tokenizer_config.json"] = json.dumps(cfg).encode()
    repo = new_repo(files)
    info = fetch_json(env, tmp_path / "root", repo.repo, "--layout", "hf", "--patch-tokenizer")
    snap = next((Path(info["path"]) / "share/models/hub").glob("models--*/snapshots/*"))
    assert (
        json.loads((snap / "tokenizer_config.json").read_text())["tokenizer_class"]
        == "PreTrainedTokenizerFast"
    )


def test_unknown_vllm_argument_is_refused(env, tmp_path):
    p = mp(
        env,
        "fetch",
        "tiny-org/tiny-llama",
        "--vllm-arg",
        "gpu_memory_utilisation=0.9",
        "--root",
        str(tmp_path / "root"),
        check=False,
    )
    assert p.returncode == 25
    assert "gpu_memory_utilization" in p.stderr and len(error_lines(p.stderr)) == 1
    assert not (tmp_path / "root" / "models" / "tiny-llama").exists()


@pytest.mark.parametrize(
    "key",
    [
        "rope_theta",
        "swap_space",
        "calculate_kv_scales",
        "disable_log_requests",
        "max_num_partial_prefills",
        "max_seq_len_to_capture",
        "rope_scaling",
    ],
)
def test_engine_argument_vllm_no_longer_has_is_refused_naming_the_version(env, tmp_path, key):
    """Keys of the old hand-kept list that vLLM's AsyncEngineArgs refuses (Triton's backend
    would die loading model.json): refused before anything is written."""
    p = mp(
        env,
        "fetch",
        "tiny-org/tiny-llama",
        "--vllm-arg",
        f"{key}=1",
        "--root",
        str(tmp_path / "root"),
        check=False,
    )
    assert p.returncode == 25, p.stderr
    (line,) = error_lines(p.stderr)
    assert f"'{key}' is not an engine argument of vLLM {engine_args.known().version}" in line
    assert not (tmp_path / "root" / "models").exists()


# --- bad input: one line, its own exit code, nothing installed --------------------------------


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["tiny-org/does-not-exist"], 10, "not found"),
        (["tiny-org/tiny-llama", "--revision", "no-such-branch"], 11, "revision"),
        (["gated/tiny"], 12, "--token-file"),
        (["tiny-org/tiny-llama", "--include", "*.onnx"], 13, "no file matches"),
    ],
)
def test_bad_input_one_line_distinct_code_nothing_installed(env, tmp_path, args, code, words):
    root = tmp_path / "root"
    p = mp(env, "fetch", *args, "--root", str(root), check=False)
    assert p.returncode == code, p.stderr
    lines = error_lines(p.stderr)
    assert len(lines) == 1 and words in lines[0]
    assert p.stderr.strip().splitlines()[-1] == lines[0]
    assert snapshot(root) == {}


def test_unreachable_hub(env, tmp_path):
    env = {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    p = mp(env, "fetch", "tiny-org/tiny-llama", "--root", str(tmp_path / "r"), check=False)
    assert p.returncode == 18 and "cannot reach" in p.stderr


def test_gated_repo_with_token_file_and_the_token_leaks_nowhere(env, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    root = tmp_path / "root"
    # The DevHub accepts the token it was told about; tell it this one.
    wrong = mp(
        env,
        "fetch",
        "gated/tiny",
        "--token-file",
        str(token_file),
        "--root",
        str(root),
        check=False,
    )
    assert wrong.returncode == 12 and TOKEN not in wrong.stderr + wrong.stdout
    good = mp(
        {**env, "HF_TOKEN": "hf_test_token_123"},
        "-v",
        "fetch",
        "gated/tiny",
        "--root",
        str(root),
        "--json",
    )
    assert json.loads(good.stdout)["name"] == "tiny"
    for base in (root,):
        for dirpath, _, filenames in os.walk(base):
            for n in filenames:
                p = Path(dirpath) / n
                if p.is_file() and not p.is_symlink():
                    data = p.read_bytes()
                    assert b"hf_test_token_123" not in data and TOKEN.encode() not in data, p
    assert "hf_test_token_123" not in good.stderr + good.stdout


def test_corrupt_download_is_refused_and_the_old_entry_stays(hub, new_repo, env, tmp_path):
    root = tmp_path / "root"
    files = tiny_llama_files(seed=4)
    flip = new_repo(files).repo
    first = fetch_json(env, root, flip, "--name", "flip")
    before = snapshot(root)
    files2 = dict(files, **{"model.safetensors": files["model.safetensors"][:-8] + b"\x01" * 8})
    hub.hub.add_repo(flip, files2)
    hub.hub.inject(flip, "model.safetensors", corrupt=True)
    try:
        p = mp(env, "fetch", flip, "--name", "flip", "--root", str(root), check=False)
    finally:
        hub.hub.clear_faults(flip)
    assert p.returncode == 14, p.stderr
    assert "model.safetensors" in p.stderr and "expected" in p.stderr and "got" in p.stderr
    assert snapshot(root) == before
    assert (root / "models/flip").resolve() == Path(first["path"])
    # the bad bytes were not kept: the next pull downloads again and succeeds
    again = fetch_json(env, root, flip, "--name", "flip")
    assert again["narHash"] != first["narHash"]


def test_unsafe_listing_is_refused_before_anything_is_written(hub, env, tmp_path):
    root = tmp_path / "root"
    for bad in ("../escape.txt", "/etc/passwd-copy", "a/../../b", "sub\\win.txt"):
        repo = f"broken/unsafe{abs(hash(bad)) % 10000}"
        hub.hub.add_repo(repo, {"config.json": b"{}", bad: b"x"}, allow_unsafe_names=True)
        p = mp(env, "fetch", repo, "--root", str(root), check=False)
        assert p.returncode == 15, (bad, p.stderr)
        assert "unsafe" in p.stderr
        slug = "models--" + repo.replace("/", "--")
        assert not (root / "cache" / slug).exists()
    assert snapshot(root) == {}


def test_disk_full_is_one_line_and_leaves_nothing(env, tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a tiny tmpfs")
    root = tmp_path / "small"
    root.mkdir()
    cmd = (
        f"mount -t tmpfs -o size=160k,mode=0755 none {root} && "
        f"exec {' '.join(MODEL_PULL)} fetch tiny-org/tiny-llama --root {root}"
    )
    p = subprocess.run(
        ["unshare", "-m", "sh", "-c", cmd], env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 16, p.stderr
    assert [line for line in p.stderr.splitlines() if "no space left" in line] == error_lines(
        p.stderr
    )


def test_no_permission_says_sudo(env, tmp_path):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE")
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    caps = "-dac_override,-dac_read_search,-fowner"
    p = subprocess.run(
        [
            "setpriv",
            f"--inh-caps={caps}",
            f"--bounding-set={caps}",
            *MODEL_PULL,
            "fetch",
            "tiny-org/tiny-llama",
            "--root",
            str(root),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 17, p.stderr
    assert "sudo" in p.stderr


# --- atomic and resumable ----------------------------------------------------------------------


def partial_bytes(cache: Path) -> int:
    """Bytes in the downloads under way: allocated blocks, since ranges are written into a
    sparse file at their offsets. A file listed may be renamed (complete) before its size is
    read: it is no longer partial, and counts for nothing."""
    total = 0
    for part in cache.glob("*.incomplete"):
        with contextlib.suppress(FileNotFoundError):
            total += part.stat().st_blocks * 512
    return total


def test_kill_9_mid_download_changes_nothing_and_the_next_pull_resumes(
    hub, new_repo, env, tmp_path
):
    root = tmp_path / "root"
    base = tiny_llama_files(seed=5)
    resume = new_repo(base).repo
    first = fetch_json(env, root, resume, "--name", "resume")
    before = snapshot(root)
    # Kill once more than 10 MiB have arrived (over two ranges: 16 MiB and 8 MiB).
    big = os.urandom(24 << 20)
    hub.hub.add_repo(resume, dict(base, **{"extra.safetensors": big}))
    hub.hub.inject(resume, "extra.safetensors", throttle_bps=12 << 20)
    hub.hub.reset_counters()
    proc = subprocess.Popen(
        [*MODEL_PULL, "fetch", resume, "--name", "resume", "--root", str(root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    partial = root / "cache" / ("models--" + resume.replace("/", "--"))
    while partial_bytes(partial) < (10 << 20):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert snapshot(root) == before
    assert (root / "models/resume").resolve() == Path(first["path"])
    hub.hub.clear_faults(resume)
    served_before = hub.hub.bytes_served(resume, "extra.safetensors")
    second = fetch_json(env, root, resume, "--name", "resume")
    served_after = hub.hub.bytes_served(resume, "extra.safetensors")
    assert served_after - served_before < len(big)  # resumed: the first bytes were not resent
    assert any(r.range for r in hub.hub.requests(resume, "extra.safetensors") if r.method == "GET")
    assert second["previous"] == first["path"]
    assert (root / "models/resume").resolve() == Path(second["path"])
    assert not list((root / "staging").iterdir())


def test_one_pull_at_a_time(env, tmp_path):
    from model_pull.store import StateRoot

    root = tmp_path / "root"
    state = StateRoot(root)
    with state.lock():
        p = mp(
            env,
            "fetch",
            "tiny-org/tiny-gguf",
            "--layout",
            "gguf",
            "--no-wait",
            "--root",
            str(root),
            check=False,
        )
        assert p.returncode == 19 and "another pull" in p.stderr
        waiting = subprocess.Popen(
            [*MODEL_PULL, "fetch", "tiny-org/tiny-gguf", "--layout", "gguf", "--root", str(root)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        assert waiting.poll() is None
    _, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0 and "waiting for another pull" in err


# --- life cycle: list, verify, rollback, gc ----------------------------------------------------


def test_verify_rollback_gc(hub, new_repo, env, tmp_path):
    root = tmp_path / "root"
    files = tiny_llama_files(seed=6)
    cycle = new_repo(files).repo
    one = fetch_json(env, root, cycle, "--name", "cycle")
    hub.hub.add_repo(cycle, dict(files, **{"README.md": b"v2\n"}))
    two = fetch_json(env, root, cycle, "--name", "cycle")
    assert one["revision"] != two["revision"] and two["previous"] == one["path"]
    listed = json.loads(mp(env, "list", "--root", str(root), "--json").stdout)["models"]
    assert [(m["name"], m["revision"], m["narHash"]) for m in listed] == [
        ("cycle", two["revision"], two["narHash"])
    ]
    assert mp(env, "verify", "cycle", "--root", str(root)).returncode == 0
    back = json.loads(mp(env, "rollback", "cycle", "--root", str(root), "--json").stdout)
    assert back["to"] == one["path"]
    assert (root / "models/cycle").resolve() == Path(one["path"])
    removed = json.loads(mp(env, "gc", "--root", str(root), "--json").stdout)["removed"]
    assert two["path"] in removed and not Path(two["path"]).exists()
    assert Path(one["path"]).exists()
    # corrupt the live entry: verify names the file and fails with its own code
    victim = (
        Path(one["path"])
        / "share/models/hub"
        / ("models--" + cycle.replace("/", "--"))
        / "snapshots"
        / one["revision"]
        / "config.json"
    )
    victim.chmod(0o644)
    victim.write_text('{"tampered": true}')
    bad = mp(env, "verify", "--root", str(root), check=False)
    assert bad.returncode == 21 and "config.json" in bad.stdout


def test_pinned_nar_hash_refuses_anything_else(env, tmp_path):
    p = mp(
        env,
        "fetch",
        "tiny-org/tiny-gguf",
        "--layout",
        "gguf",
        "--nar-hash",
        "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "--root",
        str(tmp_path / "r"),
        check=False,
    )
    assert p.returncode == 22 and "pinned" in p.stderr
    assert snapshot(tmp_path / "r") == {}


def test_piped_output_has_no_progress_bars(env, tmp_path):
    p = mp(env, "fetch", "tiny-org/tiny-llama", "--root", str(tmp_path / "root"))
    assert "\r" not in p.stderr and "narHash" in p.stdout
    # without a driver the GPU check warns and the pull goes on (a build host may package);
    # with one, the tiny model passes it
    assert all(line.startswith("warning: ") for line in p.stderr.splitlines()), p.stderr


# --- the GPU check before any weight is downloaded -------------------------------------------


def test_fetch_refuses_a_model_the_gpu_cannot_run_before_downloading(hub, new_repo, env, tmp_path):
    files = tiny_llama_files(seed=8)
    files["hf_quant_config.json"] = json.dumps(
        {
            "producer": {"name": "modelopt", "version": "0.35.0"},
            "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8", "group_size": 16},
        }
    ).encode()
    nvfp4 = new_repo(files).repo
    hub.hub.reset_counters()
    root = tmp_path / "root"
    p = mp(env, "fetch", nvfp4, "--gpu", "L4", "--root", str(root), check=False)
    assert p.returncode == 31, p.stderr
    assert "NVFP4" in error_lines(p.stderr)[0] and "--force" in p.stderr
    assert hub.hub.bytes_served(nvfp4, "model.safetensors") == 0
    assert snapshot(root) == {}
    ok = mp(env, "fetch", nvfp4, "--gpu", "RTX 5090", "--root", str(root))
    assert "installed" in ok.stdout
    forced = mp(
        env, "fetch", nvfp4, "--gpu", "L4", "--force", "--name", "forced", "--root", str(root)
    )
    assert "installed" in forced.stdout and "--force" in forced.stderr


def test_fetch_refuses_a_model_that_does_not_fit(env, tmp_path):
    p = mp(
        env,
        "fetch",
        "tiny-org/tiny-llama",
        "--gpu",
        "8.9:1MiB",
        "--root",
        str(tmp_path / "root"),
        check=False,
    )
    assert p.returncode == 32, p.stderr
    assert len(error_lines(p.stderr)) == 1

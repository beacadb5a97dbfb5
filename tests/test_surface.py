"""One surface: every failure is one `error:` line on stderr with its own exit code, printed once,
whatever raised it (our errors, click's usage errors, a bug); a traceback only with
MODEL_PULL_DEBUG=1."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

# A bug planted in the real command line: `list` divides by zero where it reads the models.
BUGGY = (
    "import sys; from model_pull import store; "
    "store.StateRoot.names = lambda self: [1 / 0]; "
    "from model_pull.cli import main; main()"
)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["fetch", "org/x", "--no-such-option"],
            "no such option '--no-such-option' (see model-pull fetch --help)",
        ),
        (["fetch"], "missing argument 'REPO' (see model-pull fetch --help)"),
        (
            ["fetch", "org/x", "--layout", "zip"],
            "invalid value for '--layout': 'zip' is not one of",
        ),
        (["gc", "--keep", "-1"], "invalid value for '--keep'"),
        (["no-such-command"], "no such command 'no-such-command' (see model-pull --help)"),
    ],
)
def test_usage_errors_are_one_line_exit_2(model_pull, args, says):
    p = model_pull.run(*args)
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    (line,) = p.stderr.splitlines()
    assert line.startswith("error: ") and says in line, line


def test_an_unexpected_exception_is_one_line_and_a_traceback_only_when_debugging(
    model_pull, tmp_path
):
    argv = [sys.executable, "-c", BUGGY, "list", "--root", str(tmp_path)]
    p = subprocess.run(argv, env=model_pull.env, capture_output=True, text=True, check=False)
    assert p.returncode == 1
    (line,) = p.stderr.splitlines()
    assert line == (
        "error: unexpected ZeroDivisionError: division by zero (a bug in "
        "model-pull: run it again with MODEL_PULL_DEBUG=1 for the traceback, and "
        "report it)"
    )
    debug = subprocess.run(
        argv,
        env={**model_pull.env, "MODEL_PULL_DEBUG": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.splitlines()[-1] == line


def test_a_check_that_fails_says_why_on_stderr_once(model_pull, hub_repos):
    p = model_pull.run("check", hub_repos.tiny_llama.repo, "--gpu", "8.9:1MiB")
    assert p.returncode == 32
    (line,) = p.stderr.splitlines()
    assert line.startswith(f"error: {hub_repos.tiny_llama.repo}@") and "does not fit" in line
    assert "verdict:" in p.stdout and "error:" not in p.stdout  # the report is on stdout


CAMEL = re.compile(r"[a-z][a-zA-Z0-9]*")
USER_DATA = {"engineDefaults", "details"}  # keys there are the model's or vLLM's, not ours


def keys(value: Any, where: str = "") -> list[str]:
    """Every object key in `value`, with where it is, skipping user data."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            found.append(f"{where}.{k}")
            if k not in USER_DATA:
                found += keys(v, f"{where}.{k}")
    elif isinstance(value, list):
        for v in value:
            found += keys(v, f"{where}[]")
    return found


def test_every_json_output_is_camel_case(model_pull, hub_repos, tmp_path):
    root = ["--root", str(tmp_path / "root")]
    llama = hub_repos.tiny_llama
    manifest = tmp_path / "models.json"
    manifest.write_text(
        json.dumps(
            {
                "version": 1,
                "root": str(tmp_path / "root"),
                "models": {
                    "tiny-llama": {
                        "repo": llama.repo,
                        "revision": "main",
                        "layout": "dual",
                        "units": ["vllm-tiny.service"],
                    }
                },
                "units": {"vllm-tiny.service": {"runtime": "vllm", "models": ["tiny-llama"]}},
            }
        )
    )
    outputs = {
        "fetch": model_pull.json("fetch", llama.repo, "--vllm-arg", "max_model_len=64", *root),
        "fetch v2": model_pull.json("fetch", llama.repo, "--revision", "v2", *root),
        "prefetch": model_pull.json("prefetch", llama.repo, *root),
        "hash": model_pull.json("hash", str(tmp_path / "root/models/tiny-llama/")),
        "verify": model_pull.json("verify", *root),
        "list": model_pull.json("list", *root),
        "rollback": model_pull.json("rollback", "tiny-llama", *root),
        "gc": model_pull.json("gc", *root),
        "check": model_pull.json("check", "tiny-llama", "--gpu", "L4", "--context", "64", *root),
        "status": json.loads(
            model_pull.run("status", "--json", env={"MODEL_PULL_MANIFEST": str(manifest)}).stdout
        ),
    }
    for command, out in outputs.items():
        bad = [k for k in keys(out) if not CAMEL.fullmatch(k.rsplit(".", 1)[1])]
        assert bad == [], f"{command} --json: {bad}"

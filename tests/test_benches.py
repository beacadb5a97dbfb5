"""The benchmarks in bench/ still run: each, at a size that takes seconds, ends with exit 0 and
prints the figures its docstring promises. Their figures are not judged here (timings belong in
the benchmarks' own runs); a refactor that breaks a benchmark is.

bench/hostile.py (its hung-server cases wait out the real timeouts, about 70 s) and
bench/pull_to_serving_vllm.py (a real vLLM start, minutes) are left out: what they measure is
tested by tests/test_hostile_server.py and tests/systemd/test_pull_to_serving_l4_box.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "systemd"))
from container import unavailable_reason

from real_runtimes import llama_server_binary

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def bench(*argv: str, extra_env: dict[str, str] | None = None) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "helper"), **(extra_env or {}))
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / argv[0]), *argv[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert p.returncode == 0, f"{argv[0]} exited {p.returncode}: {p.stderr[-3000:]}"
    return p.stdout


def figures(*argv: str, extra_env: dict[str, str] | None = None) -> Any:
    """The last JSON document the benchmark printed (some print each case as it ends first)."""
    out = bench(*argv, extra_env=extra_env).strip()
    decoder, at, last = json.JSONDecoder(), 0, None
    while at < len(out):
        last, end = decoder.raw_decode(out, at)
        at = end + len(out[end:]) - len(out[end:].lstrip())
    return last


def test_devhub_download() -> None:
    out = bench("devhub_download.py", "--size-mb", "8")
    assert "hf_hub_download:" in out and "curl:" in out


def test_fetch_and_hash() -> None:
    got = figures("fetch_and_hash.py", "--gb", "0.01", "--hash-gb", "0.01", "--runs", "1")
    assert got["hash"]["same_hash"] is True
    assert got["hash"]["ratio_median"] > 0


def test_line_rate() -> None:
    got = figures(
        "line_rate.py", "--gib", "0.02", "--tail-gib", "0.02", "--runs", "1", "--mbps", "256"
    )
    for case in (
        "1_one_file_throttled",
        "2_four_shards_throttled",
        "4_unthrottled_one_file",
        "4_unthrottled_four_shards",
    ):
        assert got[case]["ratio_median"] > 0
        (run,) = got[case]["model_pull"]
        assert run["rss_mib"] > 0 and run["connections"] >= 1
    assert all(t is not None for t in got["3_tail"]["0.02_gib"])


def test_substitute() -> None:
    got = figures("substitute.py", "--gib", "0.01", "--runs", "1")
    case = got["0.01 GiB"]
    for ratio in ("substitute_vs_curl", "substitute_vs_hub_pull", "push_vs_nix_copy"):
        assert case[ratio] > 0


@pytest.mark.systemd
@pytest.mark.parametrize(
    "argv",
    [("on_demand.py", "--runs", "1", "--requests", "5"), ("pull_to_serving.py", "--runs", "1")],
)
def test_serving_benchmarks(argv: tuple[str, ...]) -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    got = figures(*argv, extra_env={"LLAMA_SERVER": str(llama_server_binary())})
    if argv[0] == "on_demand.py":
        assert set(got["socket_results"].values()) == {"success"}
    else:
        assert got["added_by_model_pull_s"] is not None

"""model-pull.service (services.inference.autoPull) of host h100-server, as NixOS renders it
(tests/nix/golden.json), run by a real systemd in a container.

The unit starts model-pull in the background with its own hardening (ProtectHome with HF_HOME
in its CacheDirectory, ProtectSystem=strict with the state root writable, a closed device
policy); model-pull pulls the declared model from the loopback Hub and starts the waiting
units over D-Bus from inside that sandbox; the unit then stays active (RemainAfterExit), so
only a changed manifest (its restart trigger) pulls again on a switch. A failure a retry
cannot change ends in `failed`; one it can (the Hub unreachable) waits to restart.

The runtimes are placeholders that stay up (this test is about model-pull.service starting
them; test_pull_to_serving_gpu_units.py runs the real vLLM and the probes in these units);
the packages on the units' PATH are bound as NixOS renders them. The helper in the unit is
this checkout's model_pull on Debian's /usr/bin/python3 with the test venv's site-packages,
bound outside /root (the unit's ProtectHome hides it). This systemd may be older than NixOS's:
RestartSteps/RestartMaxDelaySec (254+) are then ignored, and the retry delay stays
RestartSec=30s, which no assertion here waits for.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from container import PROJECT, unavailable_reason
from serving_world import (
    HUB_URL,
    MANIFEST,
    PROBE_ROOT,
    World,
    package_dir,
    path_packages,
    placeholder,
    serving_world,
    shell_application,
)

from model_pull.devhub import DevHub
from model_pull.tinymodels import tiny_llama_files

sys.path.insert(0, str(PROJECT / "tests" / "nix"))
from render_units import load_golden, render, store_paths

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

HOST = "h100-server"
UNIT = "model-pull.service"
MODEL = "qwen3_5-2b"
RUNTIMES = ["vllm-qwen.service", "triton.service", "sglang-qwen.service"]
REAL = "test_pull_to_serving_gpu_units.py"
HELPER = (
    "#!/bin/sh\n# this checkout's model_pull, standing in for the packaged helper\n"
    f"exec env PYTHONPATH={PROBE_ROOT}/helper:{PROBE_ROOT}/site-packages "
    '/usr/bin/python3 -m model_pull "$@"\n'
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("auto-pull")
    golden = load_golden()
    declared = golden["hosts"][HOST]["manifest"]["models"][MODEL]
    commit = DevHub(base / "hub").add_repo(declared["repo"], tiny_llama_files(seed=7))
    pkgs: dict[str, Path] = {
        "model-pull": package_dir(base, "model-pull", {"bin/model-pull": HELPER}),
        "vllm": package_dir(base, "vllm", {"bin/vllm": placeholder("vllm", REAL)}),
        "triton-inference-server": package_dir(
            base, "triton", {"bin/tritonserver": placeholder("tritonserver", REAL)}
        ),
        "sglang-env": package_dir(base, "sglang-env", {"bin/python": placeholder("sglang", REAL)}),
        **path_packages(base),
    }
    (assemble,) = [
        p for p in store_paths(render(HOST, "triton.service")) if p.endswith("-triton-assemble")
    ]
    pkgs[assemble] = shell_application(
        base,
        "triton-assemble",
        (PROJECT / "nixos" / "triton-assemble.sh").read_text(),
        [golden["packages"]["coreutils"], golden["packages"]["jq"]],
    )
    with serving_world(base, HOST, pkgs, revisions={MODEL: commit}) as w:
        # The host pulls from huggingface.co; here from the loopback Hub (one more line).
        home = 'Environment="HF_HOME=/var/cache/model-pull"'
        text = render(HOST, UNIT, {home: f'{home}\nEnvironment="HF_ENDPOINT={HUB_URL}"'})
        w.ct.install_unit(UNIT, text)
        yield w


def settled(world: World, timeout: float = 300) -> dict[str, str]:
    """The unit's state once it is no longer running model-pull."""
    deadline = time.monotonic() + timeout
    while True:
        state = world.unit(UNIT)
        starting = state["ActiveState"] == "activating" and state["SubState"] != "auto-restart"
        if state["SubState"] != "running" and not starting:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{UNIT} still running after {timeout}s: {state}")
        time.sleep(0.2)


def manifest(world: World) -> dict[str, object]:
    data: dict[str, object] = json.loads(world.ct.run(["cat", MANIFEST]).stdout)
    return data


def test_1_the_unit_pulls_and_starts_the_waiting_units(world: World) -> None:
    for unit in RUNTIMES:
        world.ct.run(["systemctl", "start", unit])  # as at boot: skipped, nothing to serve
        assert world.unit(unit)["ConditionResult"] == "no"
    world.ct.run(["systemctl", "start", UNIT])
    state = settled(world)
    journal = world.ct.journal(UNIT)
    assert (state["ActiveState"], state["SubState"], state["Result"]) == (
        "active",
        "exited",
        "success",
    ), f"{state}\n{journal}"
    assert f"{MODEL}: installed" in journal, journal
    assert world.link(MODEL), "models/<name> was not switched"
    for unit in RUNTIMES:  # started by model-pull, over D-Bus, from inside the unit
        assert world.unit(unit)["ActiveState"] == "active", f"{unit}\n{world.ct.journal(unit)}"
    # huggingface_hub's home is the unit's cache directory, not root's hidden home.
    assert world.ct.run(["test", "-d", "/var/cache/model-pull"], check=False).returncode == 0


def test_2_a_failure_a_retry_cannot_change_fails_at_once(world: World) -> None:
    data = manifest(world)
    models = data["models"]
    assert isinstance(models, dict)
    models[MODEL]["revision"] = "0" * 40  # not a commit of the repo: exit 11
    world.ct.write_file(MANIFEST, json.dumps(data))
    world.ct.run(["systemctl", "restart", UNIT])
    state = settled(world)
    status = world.ct.unit_property(UNIT, "ExecMainStatus")
    assert (state["ActiveState"], state["SubState"], status) == ("failed", "failed", "11"), (
        f"{state} status={status}\n{world.ct.journal(UNIT)}"
    )


def test_3_an_unreachable_hub_is_retried(world: World) -> None:
    world.ct.run(["systemctl", "stop", "devhub.service"])
    world.ct.run(["systemctl", "reset-failed", UNIT], check=False)
    world.ct.run(["systemctl", "start", UNIT])
    state = settled(world)
    status = world.ct.unit_property(UNIT, "ExecMainStatus")
    # Waiting RestartSec before the next try (Restart=on-failure), not failed for good.
    assert (state["ActiveState"], state["SubState"], status) == (
        "activating",
        "auto-restart",
        "18",
    ), f"{state} status={status}\n{world.ct.journal(UNIT)}"
    world.ct.run(["systemctl", "stop", UNIT])

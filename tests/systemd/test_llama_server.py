"""A real llama-server, gated on its GGUF, started over D-Bus once the model is installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from container import SystemdContainer

from model_pull import systemd, units
from model_pull.tinymodels import write_tiny_gguf
from real_runtimes import llama_server_binary

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

PORT = 18080
UNIT = "llama-server-tiny.service"


@pytest.fixture(scope="session")
def llama_server() -> Path:
    return llama_server_binary()


def llama_unit(binary: Path, gguf: Path) -> str:
    return f"""[Unit]
Description=llama-server serving the tiny model
ConditionPathExists={gguf}

[Service]
Type=exec
ExecStart={binary} -m {gguf} -a tiny --host 127.0.0.1 --port {PORT} -c 256 --parallel 1

[Install]
WantedBy=multi-user.target
"""


def install_entry(root: Path, name: str, hash_: str, files: dict[str, bytes]) -> Path:
    """An entry under store/ and the models/<name> link swapped by rename, as a pull leaves it."""
    entry = root / "store" / f"{hash_}-{name}"
    for rel, data in files.items():
        (entry / rel).parent.mkdir(parents=True, exist_ok=True)
        (entry / rel).write_bytes(data)
    (root / "models").mkdir(parents=True, exist_ok=True)
    tmp = root / "models" / f".{name}.tmp"
    tmp.symlink_to(Path("..", "store", entry.name))
    tmp.rename(root / "models" / name)
    return entry


@pytest.mark.timeout(1500)
def test_llama_server_starts_when_its_model_arrives(
    make_container, llama_server: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    ct: SystemdContainer = make_container(binds=[(str(llama_server.parent),) * 2 + (True,)])
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", ct.bus_address)
    root = tmp_path / "inference"
    gguf = root / "models" / "tiny" / "share" / "models" / "gguf" / "tiny.gguf"
    ct.install_unit(UNIT, llama_unit(llama_server, gguf))
    ct.run(["systemctl", "start", UNIT])  # as at boot, before any pull

    assert systemd.unit_states([UNIT])[UNIT].waiting
    assert f"unmet condition check (ConditionPathExists={gguf})" in ct.journal(UNIT)

    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    entry = install_entry(
        root, "tiny", "0" * 32, {"share/models/gguf/tiny.gguf": model.read_bytes()}
    )
    (outcome,) = systemd.restart_waiting_units([UNIT])
    assert (outcome.active_state, outcome.sub_state) == ("active", "running"), outcome
    units.raise_for_failed([outcome])

    status, body = ct.wait_http(f"http://127.0.0.1:{PORT}/v1/models")
    assert status == 200, body
    assert [m["id"] for m in json.loads(body)["data"]] == ["tiny"]

    status, body = ct.post_json(
        f"http://127.0.0.1:{PORT}/v1/completions",
        json.dumps({"prompt": "Hello", "max_tokens": 6, "ignore_eos": True, "temperature": 0}),
    )
    assert status == 200, body
    answer = json.loads(body)
    assert answer["usage"]["completion_tokens"] == 6
    assert answer["choices"][0]["text"]

    # it serves the entry the link points at
    main_pid = systemd.unit_states([UNIT])[UNIT].main_pid
    cmdline = ct.run(["cat", f"/proc/{main_pid}/cmdline"]).stdout.split("\0")
    assert str(gguf) in cmdline
    assert Path(gguf).resolve().is_relative_to(entry)

    # `systemctl stop` frees it, and it stays stopped
    ct.run(["systemctl", "stop", UNIT])
    stopped = systemd.unit_states([UNIT])[UNIT]
    assert (stopped.active_state, stopped.pids) == ("inactive", ())
    probe = ct.python(
        "import urllib.request\n"
        f"urllib.request.urlopen('http://127.0.0.1:{PORT}/health', timeout=2)\n",
        check=False,
    )
    assert probe.returncode != 0 and "Connection refused" in probe.stderr

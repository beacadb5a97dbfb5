"""restart_waiting_units and unit_states against a real systemd (PID 1 of a container).

The client runs on the host and reaches the container's system bus through
DBUS_SYSTEM_BUS_ADDRESS=unix:path=/proc/LEADER/root/run/dbus/system_bus_socket.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from container import SystemdContainer

from model_pull import journal, systemd, units
from model_pull.errors import ExitCode, ModelPullError

pytestmark = pytest.mark.systemd


def gated_unit(
    ready: Path,
    *,
    install: bool = True,
    exec_start: str = "/usr/bin/sleep infinity",
    extra: str = "",
) -> str:
    text = (
        "[Unit]\nDescription=model server waiting for its weights\n"
        f"ConditionPathExists={ready}\n\n"
        f"[Service]\nExecStart={exec_start}\n{extra}\n"
    )
    if install:
        text += "\n[Install]\nWantedBy=multi-user.target\n"
    return text


@pytest.fixture
def bus(container: SystemdContainer, monkeypatch: pytest.MonkeyPatch) -> SystemdContainer:
    """The container, with this process's system bus pointed at it."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", container.bus_address)
    return container


def test_waiting_unit_is_started_once_its_model_exists(bus: SystemdContainer, tmp_path: Path):
    ready = tmp_path / "models" / "tiny" / "ready"
    bus.install_unit("model-a.service", gated_unit(ready))
    bus.run(["systemctl", "start", "model-a.service"])  # as at boot: the model is not there yet

    before = systemd.unit_states(["model-a.service"])["model-a.service"]
    assert (before.active_state, before.condition_result) == ("inactive", False)
    assert before.waiting
    assert before.failed_conditions == (f"ConditionPathExists={ready}",)
    assert before.unit_file_state == "enabled"

    # restarting without the model: still skipped, and that is an error for the caller
    (still,) = systemd.restart_waiting_units(["model-a.service"])
    assert still.waiting and not still.failed
    with pytest.raises(ModelPullError) as err:
        units.raise_for_failed([still])
    assert err.value.code is ExitCode.UNIT_FAILED
    assert str(ready) in str(err.value)

    ready.parent.mkdir(parents=True)
    ready.touch()
    (outcome,) = systemd.restart_waiting_units(["model-a.service"])
    assert outcome.skipped_reason is None
    assert (outcome.active_state, outcome.sub_state) == ("active", "running")
    assert outcome.condition_result is True
    assert outcome.job_result == "done"
    assert not outcome.failed and not outcome.waiting
    units.raise_for_failed([outcome])  # nothing to raise
    assert bus.run(["systemctl", "is-active", "model-a.service"]).stdout.strip() == "active"

    after = systemd.unit_states(["model-a.service"])["model-a.service"]
    assert after.main_pid > 0
    assert after.main_pid in after.pids

    # `systemctl stop` (to free the GPU) leaves it stopped: status reports it, nothing restarts it
    bus.run(["systemctl", "stop", "model-a.service"])
    stopped = systemd.unit_states(["model-a.service"])["model-a.service"]
    assert (stopped.active_state, stopped.pids) == ("inactive", ())


def test_only_running_or_enabled_units_are_touched(bus: SystemdContainer, tmp_path: Path):
    ready = tmp_path / "ready"
    ready.touch()
    bus.install_unit("off.service", gated_unit(ready), enable=False)  # disabled, inactive
    bus.install_unit("dep-only.service", gated_unit(ready, install=False), enable=False)  # static
    bus.install_unit("manual.service", gated_unit(ready), enable=False)  # disabled but running
    bus.run(["systemctl", "start", "manual.service"])
    old_pid = int(bus.unit_property("manual.service", "MainPID"))

    off, dep_only, manual, missing = systemd.restart_waiting_units(
        ["off.service", "dep-only.service", "manual.service", "nosuch.service"]
    )

    assert off.skipped_reason == "disabled and not running"
    assert dep_only.skipped_reason == "static and not running"
    assert missing.skipped_reason == "no such unit"
    for left in (off, dep_only):
        assert left.active_state == "inactive"
        assert (
            bus.run(["systemctl", "is-active", left.unit], check=False).stdout.strip() == "inactive"
        )
    assert manual.skipped_reason is None
    assert manual.active_state == "active"
    new_pid = int(bus.unit_property("manual.service", "MainPID"))
    assert new_pid not in (0, old_pid)  # restarted: a new process loads the new entry
    units.raise_for_failed([off, dep_only, manual, missing])


@pytest.mark.parametrize("restart_policy", ["", "Restart=on-failure\nRestartSec=30"])
def test_unit_that_fails_is_reported_with_its_journal(
    bus: SystemdContainer, tmp_path: Path, restart_policy: str
):
    ready = tmp_path / "ready"
    ready.touch()
    starts = tmp_path / "starts"
    script = (
        f"echo >> {starts}; echo start $(wc -l < {starts}): "
        "cannot load model: tensor blk.0 has wrong shape >&2; sleep 0.2; exit 3"
    )
    bus.install_unit(
        "broken.service",
        gated_unit(ready, exec_start=f"/bin/sh -c '{script}'", extra=restart_policy),
    )

    (first,) = systemd.restart_waiting_units(["broken.service"])
    assert any("start 1: cannot load model" in line for line in first.journal), first.journal
    (outcome,) = systemd.restart_waiting_units(["broken.service"])

    assert outcome.failed
    assert outcome.exec_main_status == 3
    assert outcome.result == "exit-code"
    assert any(
        "start 2: cannot load model: tensor blk.0 has wrong shape" in line
        for line in outcome.journal
    ), outcome.journal
    # only this restart's lines: the first start's failure is not reported again
    assert not any("start 1:" in line for line in outcome.journal), outcome.journal
    with pytest.raises(ModelPullError) as err:
        units.raise_for_failed([outcome])
    assert err.value.code is ExitCode.UNIT_FAILED
    assert "broken.service failed to start (exit-code, status 3)" in str(err.value)
    assert "wrong shape" in err.value.message  # the server's own words, not systemd's
    assert "journalctl -u broken.service" in str(err.value)


def test_no_bus_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-such-socket")
    assert systemd.restart_waiting_units([]) == []  # no unit waits: the bus is not needed
    for call in (
        lambda: systemd.restart_waiting_units(["model-a.service"]),
        lambda: systemd.unit_states(["model-a.service"]),
    ):
        with pytest.raises(ModelPullError) as err:
            call()
        assert err.value.code is ExitCode.NO_BUS
        assert err.value.message == (
            f"cannot reach systemd on the system bus: no socket at {tmp_path}/no-such-socket"
        )
        assert err.value.hint is not None and "is D-Bus running?" in err.value.hint


def test_not_root_is_no_bus_with_the_sudo_hint(container: SystemdContainer, tmp_path: Path):
    """A user without the right to manage units: systemd refuses, we say "run as root"."""
    ready = tmp_path / "ready"
    ready.touch()
    container.install_unit("model-a.service", gated_unit(ready))
    # `nobody` must reach the venv's Python under /root/.pyenv: open the container's own /root
    # (a tmpfs of the container, never the host's /root)
    assert (container.root / "root").stat().st_dev != Path("/root").stat().st_dev
    container.run(["chmod", "0711", "/root"])
    code = (
        "from model_pull import systemd\n"
        "from model_pull.errors import ModelPullError\n"
        "try:\n"
        "    systemd.restart_waiting_units(['model-a.service'])\n"
        "except ModelPullError as e:\n"
        "    print(int(e.code), e)\n"
    )
    proc = container.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        env=container.python_env(),
    )
    code_, _, message = proc.stdout.strip().partition(" ")
    assert int(code_) == ExitCode.NO_BUS, proc.stdout + proc.stderr
    assert "sudo model-pull" in message
    assert (
        container.run(["systemctl", "is-active", "model-a.service"], check=False).stdout.strip()
        == "inactive"
    )


def test_journal_root_follows_the_bus_address():
    assert journal.journal_root("unix:path=/run/dbus/system_bus_socket") == "/"
    assert journal.journal_root("unix:path=/var/run/dbus/system_bus_socket") == "/"
    assert (
        journal.journal_root("unix:path=/proc/42/root/run/dbus/system_bus_socket")
        == "/proc/42/root"
    )
    assert journal.journal_root("tcp:host=10.0.0.1,port=5555") is None


def test_container_does_not_leak(make_container):
    """Teardown removes the container's init, cgroups and propagate directory."""
    ct = make_container()
    leader, name = ct.leader, ct.name
    ct.stop()
    assert not Path(f"/proc/{leader}").exists()
    assert not Path("/run/systemd/nspawn/propagate", name).exists()
    assert not any(
        Path(root, name).exists()
        for root in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")
    )


def test_background_service_for_phase_two(container: SystemdContainer, tmp_path: Path):
    """start_service runs a server under the container's systemd (as the devhub will run)."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello.txt").write_text("hello from the container\n")
    container.start_service(
        "webroot.service",
        [
            sys.executable,
            "-m",
            "http.server",
            "18099",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(tmp_path / "www"),
        ],
    )
    status, body = container.wait_http("http://127.0.0.1:18099/hello.txt")
    assert (status, body) == (200, "hello from the container\n")
    container.run(["systemctl", "stop", "webroot.service"])
    assert "GET /hello.txt" in container.journal("webroot.service")


def test_slow_start_is_reported_as_still_starting(bus: SystemdContainer, tmp_path: Path):
    """A server that loads for longer than we wait (Type=notify, not ready yet) is not failed."""
    ready = tmp_path / "ready"
    ready.touch()
    bus.install_unit(
        "slow.service", gated_unit(ready, extra="Type=notify\nTimeoutStartSec=infinity")
    )

    (outcome,) = systemd.restart_waiting_units(["slow.service"], timeout=1)

    assert outcome.timed_out and not outcome.failed
    assert (outcome.active_state, outcome.sub_state) == ("activating", "start")
    assert outcome.describe() == "still starting (activating/start)"
    units.raise_for_failed([outcome])


def test_every_new_entry_gets_a_fresh_start_budget(bus: SystemdContainer, tmp_path: Path):
    """StartLimitBurst counts restarts by earlier pulls and by hand; a new entry is not refused."""
    ready = tmp_path / "ready"
    ready.touch()
    bus.install_unit(
        "limited.service",
        gated_unit(ready, extra="", exec_start="/usr/bin/sleep infinity").replace(
            "[Unit]\n", "[Unit]\nStartLimitBurst=2\nStartLimitIntervalSec=600\n"
        ),
    )
    for _ in range(2):  # the budget, spent by hand
        bus.run(["systemctl", "restart", "limited.service"])
    refused = bus.run(["systemctl", "restart", "limited.service"], check=False)
    assert refused.returncode != 0  # systemd's own limit is real
    for _ in range(3):  # three pulls in a row, each with a new entry
        (outcome,) = systemd.restart_waiting_units(["limited.service"], settle=0.2)
        assert (outcome.active_state, outcome.job_result) == ("active", "done"), outcome

"""When D-Bus cannot be used, `model-pull` says what is really missing, in one line with its hint:
PyGObject, GLib's GObject-introspection data (the NixOS case: a wrapper without the typelibs),
the bus socket, a listener on it, or the permission to connect. `status` is the client here:
it shows what it can, then exits 40 (NO_BUS) with that line.

Each case is made real where root allows it: the typelib directory hidden by a tmpfs in a
private mount namespace, a socket nobody listens on, a socket that root without
CAP_DAC_OVERRIDE may not open. PyGObject's absence is Python's own ImportError for a module
blocked in sys.modules (uninstalling it would break the other tests)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
TYPELIB_DIRS = sorted(
    {
        str(Path(p).parent)
        for pattern in (
            "/usr/lib/girepository-1.0/Gio-2.0.typelib",
            "/usr/lib/*/girepository-1.0/Gio-2.0.typelib",
            "/usr/lib64/girepository-1.0/Gio-2.0.typelib",
        )
        for p in glob.glob(pattern)
    }
)


@pytest.fixture
def declared(tmp_path: Path) -> dict[str, str]:
    manifest = tmp_path / "models.json"
    manifest.write_text(
        json.dumps(
            {
                "version": 1,
                "root": str(tmp_path / "root"),
                "models": {
                    "tiny": {
                        "repo": "org/tiny",
                        "revision": "main",
                        "layout": "gguf",
                        "units": ["llama-server-main.service"],
                    }
                },
                "units": {
                    "llama-server-main.service": {"runtime": "llama-server", "models": ["tiny"]}
                },
            }
        )
    )
    return {"MODEL_PULL_MANIFEST": str(manifest)}


@pytest.fixture
def socket_file(tmp_path: Path) -> Iterator[Path]:
    """A unix socket nobody accepts on (bound, not listening)."""
    path = tmp_path / "system_bus_socket"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    try:
        yield path
    finally:
        s.close()


def status_error(model_pull, env: dict[str, str], prefix: list[str] | None = None) -> str:
    if prefix:
        import subprocess

        p = subprocess.run(
            [*prefix, sys.executable, "-m", "model_pull", "status"],
            env={**model_pull.env, **env},
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    else:
        p = model_pull.run("status", env=env)
    assert p.returncode == 40, p.stderr
    assert "tiny  missing" in p.stdout  # the rest is still shown
    (line,) = p.stderr.splitlines()
    return line


def test_no_socket(model_pull, declared, tmp_path):
    line = status_error(
        model_pull, {**declared, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/nothing-here"}
    )
    assert line == (
        f"error: cannot reach systemd on the system bus: no socket at "
        f"{tmp_path}/nothing-here (is D-Bus running? systemctl status dbus.socket; "
        "DBUS_SYSTEM_BUS_ADDRESS names another bus)"
    )


def test_nobody_listens(model_pull, declared, socket_file):
    line = status_error(
        model_pull, {**declared, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={socket_file}"}
    )
    assert line.startswith(
        f"error: cannot reach systemd on the system bus: nothing answers at "
        f"{socket_file} (is D-Bus running?"
    )


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_no_permission_on_the_socket(model_pull, declared, socket_file):
    socket_file.chmod(0)
    caps = "-dac_override,-dac_read_search,-fowner"
    line = status_error(
        model_pull,
        {**declared, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={socket_file}"},
        prefix=["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"],
    )
    assert line == (
        f"error: cannot reach systemd on the system bus: permission denied on "
        f"{socket_file} (run as root: sudo model-pull ...)"
    )


@needs_root
@pytest.mark.skipif(
    not TYPELIB_DIRS or shutil.which("unshare") is None,
    reason="needs unshare and the system's GObject-introspection typelibs",
)
def test_no_gio_typelib(model_pull, declared):
    hide = " && ".join(f"mount -t tmpfs none {d}" for d in TYPELIB_DIRS)
    line = status_error(
        model_pull, declared, prefix=["unshare", "-m", "sh", "-c", f'{hide} && exec "$0" "$@"']
    )
    assert line == (
        "error: cannot use D-Bus: GLib's GObject-introspection data is missing "
        "(cannot import name Gio, introspection typelib not found) (set "
        "GI_TYPELIB_PATH to the directory holding Gio-2.0.typelib (since GLib 2.80 "
        "it comes with glib: <glib>/lib/girepository-1.0))"
    )


def test_no_pygobject(model_pull, declared):
    import subprocess

    without_gi = "import sys; sys.modules['gi'] = None; from model_pull.cli import main; main()"
    p = subprocess.run(
        [sys.executable, "-c", without_gi, "status"],
        env={**model_pull.env, **declared},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert p.returncode == 40, p.stderr
    (line,) = p.stderr.splitlines()
    assert line.startswith("error: cannot use D-Bus: PyGObject is not installed (")
    assert line.endswith(
        "(install PyGObject and pydbus: pip install 'model-pull[dbus]' (the "
        "NixOS package brings them))"
    )

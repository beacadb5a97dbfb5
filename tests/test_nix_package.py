"""The packaged helper (nix/model-pull.nix) and its flake check (nix/model-pull-gio.nix).

pydbus needs PyGObject AND the GLib/Gio typelibs, which a Python wrapper does not put on
GI_TYPELIB_PATH on NixOS (https://github.com/NixOS/nixpkgs/issues/420899). nixpkgs cannot be
built here, so: the package's wrapper arguments are read with nixpkgs' lib, and the check's
own script is run against this checkout's model-pull, once as it is and once with the system's
typelibs hidden (the NixOS failure), to show that the check tells the two apart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NIXPKGS_LIB = os.environ.get("NIXPKGS_LIB", "")
GLIB = "/nix/store/00000000000000000000000000000000-glib-2.88.3"

pytestmark = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None, reason="nix-instantiate not installed"
)


def nix_eval(expr: str, tmp_path: Path) -> object:
    result = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        capture_output=True,
        text=True,
        env={**os.environ, "NIX_STATE_DIR": str(tmp_path / "nix-state")},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(
    not (NIXPKGS_LIB and Path(NIXPKGS_LIB, "lib/default.nix").is_file()),
    reason="NIXPKGS_LIB is not set to a checkout of nixpkgs' lib",
)
def test_the_wrapper_puts_glibs_typelibs_on_the_path(tmp_path: Path) -> None:
    lib = f"import {Path(NIXPKGS_LIB).resolve()}/lib"
    # buildPythonPackage's arguments as the package gives them; glib as nixpkgs' (outputs bin,
    # out, dev, devdoc; the typelibs are in out's lib/girepository-1.0).
    args = nix_eval(
        f"""let lib = {lib};
          glib = {{ outPath = "{GLIB}"; out = glib; outputs = [ "bin" "out" ]; }};
        in (import {ROOT}/nix/model-pull.nix ({{ inherit lib glib; buildPythonPackage = a: a; }}
          // lib.genAttrs [ "setuptools" "huggingface-hub" "hf-xet" "click" "tqdm" "gguf"
               "nvidia-ml-py" "pydbus" "pygobject3" ] (n: {{ }}))).makeWrapperArgs""",
        tmp_path,
    )
    assert args == ["--prefix", "GI_TYPELIB_PATH", ":", f"{GLIB}/lib/girepository-1.0"]


def gio_check_script(tmp_path: Path) -> str:
    script = nix_eval(
        f"import {ROOT}/nix/model-pull-gio.nix "
        "{ runCommand = name: env: script: script; model-pull = null; }",
        tmp_path,
    )
    assert isinstance(script, str)
    return script


def run_check(
    script: str, where: Path, hide: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The check's script as the Nix builder runs it (bash, $out, the helper on PATH)."""
    where.mkdir()
    (where / "check.sh").write_text(script)
    env = {
        **os.environ,
        "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}",
        "out": str(where / "out"),
    }
    command = ["bash", "-eu", "check.sh"]
    if hide is not None:  # an empty directory over the typelibs, in a private mount namespace
        (where / "empty").mkdir()
        command = [
            "unshare",
            "-m",
            "sh",
            "-c",
            f'mount --bind {where / "empty"} {hide} && exec "$@"',
            "sh",
            *command,
        ]
    return subprocess.run(command, cwd=where, env=env, capture_output=True, text=True, check=False)


def system_typelibs() -> Path | None:
    for d in ("/usr/lib/x86_64-linux-gnu/girepository-1.0", "/usr/lib/girepository-1.0"):
        if Path(d, "Gio-2.0.typelib").is_file():
            return Path(d)
    return None


@pytest.mark.skipif(
    not (ROOT / ".venv/bin/model-pull").exists(), reason="no .venv (scripts/setup.sh)"
)
def test_the_gio_check_tells_a_missing_typelib_from_a_missing_bus(tmp_path: Path) -> None:
    script = gio_check_script(tmp_path)
    ok = run_check(script, tmp_path / "as-packaged")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (tmp_path / "as-packaged/out").exists()
    assert "cannot reach systemd on the system bus: no socket at" in ok.stderr

    typelibs = system_typelibs()
    if os.geteuid() != 0 or typelibs is None or shutil.which("unshare") is None:
        pytest.skip("hiding the typelibs needs root, unshare and the system's Gio typelib")
    broken = run_check(script, tmp_path / "gio-hidden", hide=typelibs)
    assert broken.returncode != 0, broken.stdout + broken.stderr
    assert "introspection typelib not found" in broken.stderr
    assert not (tmp_path / "gio-hidden/out").exists()

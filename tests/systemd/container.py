"""A throwaway container that boots the real systemd (as its PID 1), for tests.

The machine these tests run on has no systemd as PID 1 and no system bus, so each test boots one:

    with SystemdContainer("sdt", binds=[(str(tmp_path), str(tmp_path), False)]) as ct:
        ct.install_unit("demo.service", UNIT_TEXT)
        ct.run(["systemctl", "start", "demo.service"])
        env = {"DBUS_SYSTEM_BUS_ADDRESS": ct.bus_address}   # host-side clients reach its bus

It follows a recipe known to work on machines without systemd as PID 1:

- `systemd-nspawn -D / --volatile=yes --boot`: the host's /usr read-only on a tmpfs root, so
  nothing the container's systemd does (tmpfiles, presets) can touch the host. Never boot
  systemd on the host root.
- a preset machine-id (bound read-only) avoids first boot, which would enable every unit of every
  host package; `systemd.firstboot=off` and two masks keep the boot small.
- `--keep-unit --register=no` (there is no host systemd or machined to talk to),
  `--private-network` (only `lo`: ports never clash between containers or with the host).
- its own cgroup in every process-tracking hierarchy (without a host systemd, nspawn would put
  every container under `<caller cgroup>/payload`, and two containers would share one tree).
- wrapped in `unshare --pid --fork --kill-child --mount-proc`, and that `unshare` dies with the
  test process (PR_SET_PDEATHSIG): a killed test takes its container down with it.
- teardown: SIGTERM to nspawn (a clean halt of the container), SIGKILL as the fallback, then
  removes the cgroups and `/run/systemd/nspawn/propagate/NAME`.

The project checkout, the virtual environment the tests run from (`sys.prefix`) and the Python
it is built on (pyenv lives under /root, which the container does not otherwise see) are bound
read-only at the same paths, so `model-pull` can run inside the container against the
container's own bus (`.model_pull([...])`), and so can any Python helper (`.python(code)`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parents[2]
PROJECT_HELPER = PROJECT / "helper"
SYSTEMD_EXE = "/usr/lib/systemd/systemd"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 60.0
_PR_SET_PDEATHSIG = 1


def unavailable_reason() -> str | None:
    """Why a container cannot be booted here, or None when it can."""
    if os.geteuid() != 0:
        return "booting systemd in a container needs root"
    for tool in ("systemd-nspawn", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install systemd-container util-linux)"
    if not Path(SYSTEMD_EXE).exists():
        return f"{SYSTEMD_EXE} is missing (apt-get install systemd)"
    if not Path("/usr/bin/dbus-daemon").exists() and not Path("/usr/bin/dbus-broker").exists():
        return "no D-Bus daemon for the container's system bus (apt-get install dbus)"
    return None


def _cgroup_roots() -> list[Path]:
    """The hierarchies that track processes: hybrid (name=systemd v1 + unified v2) or pure v2."""
    roots = [
        Path(h)
        for h in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")
        if Path(h, "cgroup.procs").exists()
    ]
    return roots or [Path("/sys/fs/cgroup")]


def _remove_cgroup_tree(top: Path) -> None:
    """rmdir a cgroup and its children, deepest first (a non-empty one fails harmlessly)."""
    if not top.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -t[0].count("/")):
        with contextlib.suppress(OSError):
            Path(dirpath).rmdir()


def _children(pid: int) -> list[int]:
    """Host PIDs whose parent is pid."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive for our purposes
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class ContainerError(RuntimeError):
    """The container could not be booted or a command inside it failed."""


class SystemdContainer:
    """Real systemd as PID 1 in a throwaway nspawn container. Use as a context manager.

    binds: (host path, container path, read_only) triples, in addition to the defaults
    (the project checkout, the test venv and its base Python, all read-only, same paths).
    """

    def __init__(
        self,
        name_prefix: str = "ct",
        binds: Sequence[tuple[str, str, bool]] = (),
        *,
        boot_timeout: float = BOOT_TIMEOUT,
    ) -> None:
        # every name starts with "sdt-", so debris of killed runs can be found and swept
        # (a machine name is a host name: letters, digits and '-' only; 64 at most)
        prefix = re.sub(r"[^A-Za-z0-9-]+", "-", name_prefix).strip("-")[:24] or "ct"
        self.name = f"sdt-{prefix}-{uuid.uuid4().hex[:8]}"
        self.binds = list(binds)
        self.boot_timeout = boot_timeout
        self.scratch = Path(tempfile.mkdtemp(prefix=f"{self.name}.", dir=_scratch_base()))
        self.boot_log = self.scratch / "boot.log"
        self.boot_seconds: float | None = None
        self.system_state: str | None = None
        self._wrapper: subprocess.Popen[bytes] | None = None
        self._nspawn: int | None = None
        self._leader: int | None = None
        self._cgroups = [root / self.name for root in _cgroup_roots()]

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> SystemdContainer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(keep_scratch=exc_type is not None)

    def _default_binds(self) -> list[tuple[str, str, bool]]:
        wanted = [str(PROJECT), sys.prefix]
        if Path("/root/.pyenv").is_dir():
            wanted.append("/root/.pyenv")
        # the Python the venv is built on (pyenv under /root, which the container lacks)
        wanted += [sys.base_prefix, str(Path(sys.executable).resolve().parents[1])]
        binds: list[tuple[str, str, bool]] = []
        for path in wanted:
            # /usr is the container's own (the host's, read-only); skip paths already covered
            if Path(path).is_relative_to("/usr") or any(
                Path(path).is_relative_to(b[0]) for b in binds
            ):
                continue
            binds.append((path, path, True))
        return binds

    def _nspawn_argv(self) -> list[str]:
        machine_id = self.scratch / "machine-id"
        machine_id.write_text(uuid.uuid4().hex + "\n")
        argv = [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--",
            "systemd-nspawn",
            "-D",
            "/",
            "--volatile=yes",
            "--boot",
            f"--machine={self.name}",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--console=read-only",
            f"--bind-ro={machine_id}:/etc/machine-id",
        ]
        seen: set[str] = set()
        for host, inside, read_only in self._default_binds() + self.binds:
            if inside in seen:
                continue
            seen.add(inside)
            opt = "--bind-ro" if read_only else "--bind"
            argv.append(f"{opt}={host}:{inside}")
        argv += [
            "systemd.firstboot=off",
            "systemd.mask=systemd-machine-id-commit.service",
            "systemd.mask=console-getty.service",
        ]
        return argv

    def start(self) -> None:
        _sweep_debris()
        for cg in self._cgroups:
            cg.mkdir(exist_ok=True)
        cgroup_procs = [str(cg / "cgroup.procs") for cg in self._cgroups]
        argv = self._nspawn_argv()
        logger.info("booting %s: %s", self.name, " ".join(argv))
        t0 = time.monotonic()
        with self.boot_log.open("wb") as log:
            self._wrapper = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_make_preexec(cgroup_procs),
            )
        self._leader = self._find_leader(t0)
        self._wait_booted(t0)
        self.boot_seconds = time.monotonic() - t0
        logger.info(
            "%s booted in %.2fs (state %s)", self.name, self.boot_seconds, self.system_state
        )

    def _find_leader(self, t0: float) -> int:
        """The container's systemd as a host PID: wrapper(unshare) -> nspawn -> systemd."""
        assert self._wrapper is not None
        while time.monotonic() - t0 < self.boot_timeout:
            if self._wrapper.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited early:\n{self._boot_log_tail()}")
            for nspawn in _children(self._wrapper.pid):
                self._nspawn = nspawn
                for child in _children(nspawn):
                    with contextlib.suppress(OSError):
                        if str(Path(f"/proc/{child}/exe").readlink()) == SYSTEMD_EXE:
                            return child
            time.sleep(0.02)
        raise ContainerError(
            f"no container init after {self.boot_timeout}s:\n{self._boot_log_tail()}"
        )

    def _wait_booted(self, t0: float) -> None:
        private = Path(f"/proc/{self.leader}/root/run/systemd/private")
        while not private.is_socket():
            if time.monotonic() - t0 > self.boot_timeout:
                raise ContainerError(f"systemd never listened:\n{self._boot_log_tail()}")
            if not _alive(self.leader):
                raise ContainerError(f"container init died:\n{self._boot_log_tail()}")
            time.sleep(0.02)
        left = max(1.0, self.boot_timeout - (time.monotonic() - t0))
        proc = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=left)
        self.system_state = proc.stdout.strip()
        if self.system_state == "degraded":
            failed = self.run(
                ["systemctl", "--failed", "--no-legend", "--no-pager"], check=False
            ).stdout
            logger.warning("%s is degraded: %s", self.name, failed.strip())
        elif self.system_state != "running":
            raise ContainerError(
                f"systemd is not usable: {self.system_state!r}\n{self._boot_log_tail()}"
            )
        if not Path(f"/proc/{self.leader}/root/run/dbus/system_bus_socket").is_socket():
            raise ContainerError("the container has no system bus socket")

    def stop(self, *, keep_scratch: bool = False) -> None:
        """Halt the container (clean, then forced) and remove everything it left on the host."""
        if self._nspawn is not None and _alive(self._nspawn):
            os.kill(self._nspawn, signal.SIGTERM)  # nspawn asks systemd to halt (SIGRTMIN+3)
            deadline = time.monotonic() + 10
            while _alive(self._nspawn) and time.monotonic() < deadline:
                time.sleep(0.05)
        if self._leader is not None and _alive(self._leader):
            logger.warning("force-killing container init %d", self._leader)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._leader, signal.SIGKILL)
        if self._nspawn is not None and _alive(self._nspawn):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._nspawn, signal.SIGKILL)
        if self._wrapper is not None:
            try:
                self._wrapper.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._wrapper.kill()
                self._wrapper.wait()
        for cg in self._cgroups:
            _remove_cgroup_tree(cg)
        with contextlib.suppress(OSError):
            Path("/run/systemd/nspawn/propagate", self.name).rmdir()
        leaked = self._leader if self._leader is not None and _alive(self._leader) else None
        self._leader = self._nspawn = self._wrapper = None  # stop() again is a no-op
        if keep_scratch or leaked:
            logger.warning("scratch kept for debugging: %s", self.scratch)
        elif self.scratch.exists():
            shutil.rmtree(self.scratch, ignore_errors=True)
        if leaked:
            raise ContainerError(f"container init {leaked} survived teardown")

    def _boot_log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.boot_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no boot log)"

    # ------------------------------------------------------------------ inside
    @property
    def leader(self) -> int:
        """Host PID of the container's systemd (PID 1 inside)."""
        if self._leader is None:
            raise ContainerError("the container is not running")
        return self._leader

    @property
    def root(self) -> Path:
        """The container's root file system, seen from the host."""
        return Path(f"/proc/{self.leader}/root")

    @property
    def bus_address(self) -> str:
        """DBUS_SYSTEM_BUS_ADDRESS for a host-side client of the container's system bus."""
        return f"unix:path=/proc/{self.leader}/root/run/dbus/system_bus_socket"

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout: float | None = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the container (all its namespaces) with a clean environment."""
        clean = [f"PATH={CONTAINER_PATH}", "LANG=C.UTF-8"]
        clean += [f"{k}={v}" for k, v in (env or {}).items()]
        full = ["nsenter", "-t", str(self.leader), "-a", "--", "env", "-i", *clean, *argv]
        proc = subprocess.run(
            full,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"PATH": CONTAINER_PATH},
        )
        if check and proc.returncode != 0:
            raise ContainerError(
                f"{' '.join(argv)} exited {proc.returncode} in {self.name}\n"
                f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
            )
        return proc

    def python_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment that imports this checkout's model_pull inside the container."""
        env = {"PYTHONPATH": str(PROJECT_HELPER), "PYTHONDONTWRITEBYTECODE": "1"}
        env.update(extra or {})
        return env

    def python(
        self,
        code: str,
        *,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run Python code inside the container with the test venv and this checkout."""
        return self.run(
            [sys.executable, "-c", code], check=check, env=self.python_env(env), timeout=timeout
        )

    def model_pull(
        self,
        args: Sequence[str],
        *,
        check: bool = False,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 300,
    ) -> subprocess.CompletedProcess[str]:
        """`model-pull ARGS` inside the container (talks to the container's own bus)."""
        return self.run(
            [sys.executable, "-m", "model_pull", *args],
            check=check,
            env=self.python_env(env),
            timeout=timeout,
        )

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        """Create a file inside the container (its tmpfs root, or a bind)."""
        self.run(["install", "-D", "-m", f"{mode:o}", "/dev/stdin", path], input=text)

    def install_unit(self, name: str, text: str, *, enable: bool = True) -> None:
        """Put a unit into /etc/systemd/system, reload, and enable it when asked."""
        self.write_file(f"/etc/systemd/system/{name}", text)
        self.run(["systemctl", "daemon-reload"])
        if enable:
            self.run(["systemctl", "enable", name])

    def start_service(
        self, unit: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> None:
        """Start argv in the background as a transient service (phase 2: the devhub server).

        It runs under the container's systemd: its output is in `.journal(unit)`, it is
        stopped with `systemctl stop UNIT` or with the container.
        """
        setenv = [f"--setenv={k}={v}" for k, v in (env or {}).items()]
        self.run(
            [
                "systemd-run",
                f"--unit={unit}",
                "--property=Type=exec",
                "--collect",
                *setenv,
                "--",
                *argv,
            ]
        )

    def wait_http(self, url: str, *, timeout: float = 60) -> tuple[int, str]:
        """GET url from inside the container until it answers; returns (status, body)."""
        code = (
            "import sys, time, urllib.request, urllib.error\n"
            f"deadline = time.monotonic() + {timeout!r}\n"
            "while True:\n"
            "    try:\n"
            f"        with urllib.request.urlopen({url!r}, timeout=5) as r:\n"
            "            print(r.status); sys.stdout.write(r.read().decode()); break\n"
            "    except urllib.error.HTTPError as e:\n"
            "        if e.code != 503 or time.monotonic() > deadline:\n"
            "            print(e.code); sys.stdout.write(e.read().decode()); break\n"
            "    except OSError:\n"
            "        if time.monotonic() > deadline: raise\n"
            "    time.sleep(0.1)\n"
        )
        out = self.python(code, timeout=timeout + 30).stdout
        status, _, body = out.partition("\n")
        return int(status), body

    def post_json(self, url: str, payload: str, *, timeout: float = 120) -> tuple[int, str]:
        """POST a JSON body from inside the container; returns (status, body)."""
        code = (
            "import sys, urllib.request, urllib.error\n"
            f"req = urllib.request.Request({url!r}, data=sys.stdin.buffer.read(),\n"
            "    headers={'Content-Type': 'application/json'})\n"
            "try:\n"
            f"    with urllib.request.urlopen(req, timeout={timeout!r}) as r:\n"
            "        print(r.status); sys.stdout.write(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code); sys.stdout.write(e.read().decode())\n"
        )
        out = self.run(
            [sys.executable, "-c", code], input=payload, env=self.python_env(), timeout=timeout + 30
        ).stdout
        status, _, body = out.partition("\n")
        return int(status), body

    def unit_property(self, unit: str, prop: str) -> str:
        """`systemctl show UNIT -p PROP --value` inside the container."""
        return self.run(["systemctl", "show", unit, "-p", prop, "--value"]).stdout.strip()

    def journal(self, unit: str, lines: int = 200) -> str:
        """The unit's journal inside the container, message text only."""
        return self.run(
            ["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"], check=False
        ).stdout


def _scratch_base() -> Path:
    base = Path(os.environ.get("SDT_DIR", Path(tempfile.gettempdir()) / "model-pull-sdt"))
    base.mkdir(parents=True, exist_ok=True)
    return base


def _sweep_debris() -> None:
    """Remove cgroups and propagate dirs left by tests SIGKILLed more than 2 minutes ago."""
    cutoff = time.time() - 120
    for root in _cgroup_roots():
        for cg in root.glob("sdt-*"):
            with contextlib.suppress(OSError):
                if cg.stat().st_mtime < cutoff:
                    _remove_cgroup_tree(cg)
    for prop in Path("/run/systemd/nspawn/propagate").glob("sdt-*"):
        with contextlib.suppress(OSError):
            if prop.stat().st_mtime < cutoff:
                prop.rmdir()


def _make_preexec(cgroup_procs: Sequence[str]):  # type: ignore[no-untyped-def]
    """In the child before exec: join the container's own cgroups, die with the test."""
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        for procs in cgroup_procs:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return preexec

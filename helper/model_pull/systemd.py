"""Restart the units that wait for a model, and read their states: the only D-Bus code.

Talks to systemd (PID 1) over the system bus with pydbus + GLib. The bus address comes from
the environment (`DBUS_SYSTEM_BUS_ADDRESS`, default `unix:path=/run/dbus/system_bus_socket`),
so a client can be pointed at another systemd's bus, e.g. a test container's
(`unix:path=/proc/LEADER/root/run/dbus/system_bus_socket`). Each call opens its own private
connection and closes it, so changing the variable between calls takes effect.

Which units are restarted (`restart_waiting_units`):
- a unit that is running (ActiveState active, activating or reloading): restarted, so it
  loads the new entry;
- a unit that is not running but is enabled (UnitFileState `enabled`, `enabled-runtime` or
  `generated`): started. On NixOS a unit with `wantedBy` reads as `enabled` (systemd finds it
  in a `.wants/` directory), which is how the inference modules install theirs;
- anything else is left alone with a reason: `disabled`, `static` and `indirect` units only
  start when something else pulls them in, `linked` ones were made available but not enabled,
  `masked` ones must not start, and a unit systemd cannot find or load is reported as such.
  Starting those would run a server that nobody asked to run.

A unit served on demand (`start_on_demand`) is not started: its sockets are, so that the next
request starts it on the new entry; it is restarted only when it runs (it serves the old
entry). Its failed state and start-rate counter are cleared first, on the runtime and on its
sockets, as for any restart.

All restart jobs are queued at once (JobRemoved is connected before the first RestartUnit),
then one GLib main loop runs until every job is removed or `timeout` passes. A unit whose job
finished with the unit active is then watched for `settle` seconds (PropertiesChanged): a
server that exits right after its start (a bad flag, a missing library, a model file it
cannot read) fails there, after systemd already called its start `done`. Finally each unit's
state is read with ONE `org.freedesktop.DBus.Properties.GetAll`.

A unit that failed carries the last lines of its journal since the restart was asked for (not
the lines of earlier starts), read with `journalctl -u UNIT` through `process.run`. When the
bus is another root's (the address is `unix:path=ROOT/run/dbus/system_bus_socket`, as for a
container seen through /proc), the journal is read from that root (`journalctl --root=ROOT`);
a bus that is not a local socket (tcp, abstract) gives no journal lines, only the unit's Result
and exit status.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from model_pull import process
from model_pull.errors import ExitCode, ModelPullError

logger = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"

ENABLED_FILE_STATES = frozenset({"enabled", "enabled-runtime", "generated"})
RUNNING_STATES = frozenset({"active", "activating", "reloading"})
# JobRemoved results that mean the start did not happen ("done" and "skipped" are fine:
# a failed condition still gives "done", see UnitOutcome.waiting)
# "refused" is ours: systemd answered RestartUnit with an error (the message is in the journal
# lines of the outcome)
FAILED_JOB_RESULTS = frozenset(
    {"failed", "timeout", "dependency", "canceled", "invalid", "refused"}
)
DENIED_ERRORS = frozenset({
    "org.freedesktop.DBus.Error.AccessDenied",
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
    "org.freedesktop.DBus.Error.AuthFailed",
})
NO_BUS_HINT = "run as root: sudo model-pull ..."
JOURNAL_LINES = 20
_SOCKET_SUFFIX = "/run/dbus/system_bus_socket"


@dataclass(frozen=True)
class UnitState:
    """A unit as systemd sees it now (one GetAll), plus its processes."""

    unit: str
    load_state: str  # loaded, not-found, masked, bad-setting, error
    active_state: str  # active, inactive, failed, activating, deactivating, reloading
    sub_state: str  # running, dead, exited, auto-restart, ...
    unit_file_state: str  # enabled, disabled, static, linked, masked, "" (no file)
    condition_result: bool
    failed_conditions: tuple[str, ...]  # "ConditionPathExists=/path" of the last check
    result: str  # a service's Result (success, exit-code, signal, ...); "" for other types
    exec_main_status: int
    main_pid: int
    pids: tuple[int, ...] = ()  # every process in the unit's cgroup (unit_states only)

    @classmethod
    def from_properties(cls, unit: str, props: Mapping[str, Any]) -> UnitState:
        return cls(
            unit=unit,
            load_state=str(props.get("LoadState", "")),
            active_state=str(props.get("ActiveState", "")),
            sub_state=str(props.get("SubState", "")),
            unit_file_state=str(props.get("UnitFileState", "")),
            condition_result=bool(props.get("ConditionResult", False)),
            failed_conditions=_failed_conditions(props.get("Conditions", [])),
            result=str(props.get("Result", "")),
            exec_main_status=int(props.get("ExecMainStatus", 0)),
            main_pid=int(props.get("MainPID", 0)),
        )

    @property
    def running(self) -> bool:
        return self.active_state in RUNNING_STATES

    @property
    def waiting(self) -> bool:
        """Skipped on a failed condition (its model is not there): inactive, ConditionResult=no."""
        return self.active_state == "inactive" and bool(self.failed_conditions)

    def describe(self) -> str:
        """One short phrase for humans: 'active (running)', 'waiting: ConditionPathExists=...'."""
        if self.load_state not in ("loaded", ""):
            return self.load_state
        if self.waiting:
            return "waiting: " + ", ".join(self.failed_conditions)
        text = f"{self.active_state} ({self.sub_state})"
        if self.active_state == "failed" or self.sub_state == "auto-restart":
            text += f", {self.result}, status {self.exec_main_status}"
        return text


@dataclass(frozen=True)
class UnitOutcome:
    """What `restart_waiting_units` did to one unit, and the state the unit ended in."""

    unit: str
    skipped_reason: str | None  # why it was left alone; None when it was (re)started
    active_state: str
    sub_state: str
    condition_result: bool
    job_result: str | None  # JobRemoved's result; None if skipped or still queued at timeout
    result: str = ""
    exec_main_status: int = 0
    failed_conditions: tuple[str, ...] = ()
    journal: tuple[str, ...] = field(default=())  # last journal lines, for failed units

    @property
    def failed(self) -> bool:
        """Restarted, and the unit did not come up (or went down again while settling)."""
        if self.skipped_reason is not None:
            return False
        return (
            self.active_state == "failed"
            or self.sub_state == "auto-restart"
            or self.job_result in FAILED_JOB_RESULTS
        )

    @property
    def waiting(self) -> bool:
        """Restarted, but its condition still fails: it cannot see the model that was installed."""
        return (
            self.skipped_reason is None
            and not self.failed
            and self.active_state == "inactive"
            and not self.condition_result
        )

    @property
    def timed_out(self) -> bool:
        """The restart job was still queued or running when we stopped waiting."""
        return self.skipped_reason is None and self.job_result is None

    def describe(self) -> str:
        if self.skipped_reason is not None:
            return f"left alone: {self.skipped_reason}"
        if self.failed:
            return f"failed ({self.result or self.job_result}, status {self.exec_main_status})"
        if self.waiting:
            return "still waiting: " + (", ".join(self.failed_conditions) or "condition failed")
        if self.timed_out:
            return f"still starting ({self.active_state}/{self.sub_state})"
        return f"{self.active_state} ({self.sub_state})"


def restart_waiting_units(
    units: Sequence[str], *, timeout: float = 60, settle: float = 2.0
) -> list[UnitOutcome]:
    """Restart (or start) each unit that runs or is enabled; return every unit's final state.

    Raises ModelPullError(NO_BUS) when systemd cannot be reached or refuses (not root).
    Failed units are reported in the outcomes, not raised: see `raise_for_failed`.
    """
    names = list(dict.fromkeys(units))
    if not names:
        return []  # nothing waits: no need for a bus (a pull without units must not fail)
    with _connect() as sd:
        return _run_jobs(sd, [(unit, "RestartUnit", _skip_reason) for unit in names],
                         timeout=timeout, settle=settle)


def start_on_demand(
    units: Mapping[str, Sequence[str]], *, timeout: float = 60, settle: float = 2.0
) -> list[UnitOutcome]:
    """For each on-demand runtime (unit -> its socket units) whose model changed: clear its
    failed state and start limit, restart it if it runs, and start its sockets.

    The outcomes are those of the sockets (listening, or still waiting for the model) and of
    each runtime that was restarted. Raises like `restart_waiting_units`.
    """
    if not units:
        return []
    with _connect() as sd:
        ops: list[tuple[str, str, Callable[[UnitState], str | None]]] = []
        for unit, sockets in units.items():
            state = UnitState.from_properties(unit, sd.get_all(sd.load_unit(unit)))
            sd.reset_failed(unit)  # a new entry is a new chance: the start limit starts over
            if state.running:
                ops.append((unit, "RestartUnit", _skip_reason))
            # enabled (WantedBy=sockets.target) or listening: started (a no-op when listening)
            ops += [(socket, "StartUnit", _skip_reason) for socket in sockets]
        return _run_jobs(sd, ops, timeout=timeout, settle=settle)


def raise_for_failed(outcomes: Sequence[UnitOutcome]) -> None:
    """ModelPullError(UNIT_FAILED) if a restarted unit failed or still cannot see its model.

    The journal lines of each failed unit are logged (at error level) before raising.
    """
    bad = [o for o in outcomes if o.failed or o.waiting]
    if not bad:
        return
    for o in bad:
        for line in o.journal:
            logger.error("%s: %s", o.unit, line)
    first = bad[0]
    if first.failed:
        detail = f"{first.unit} failed to start ({first.result or first.job_result}, " \
                 f"status {first.exec_main_status})"
        telling = _telling_line(first.journal)
        if telling:
            detail += f": {telling}"
    else:
        conds = ", ".join(first.failed_conditions) or "its condition"
        detail = f"{first.unit} still does not start: {conds} not met after the install"
    if len(bad) > 1:
        detail = f"{len(bad)} units did not come up; {detail}"
    raise ModelPullError(ExitCode.UNIT_FAILED, detail,
                         hint=f"journalctl -u {first.unit}; systemctl status {first.unit}")


def unit_states(units: Sequence[str]) -> dict[str, UnitState]:
    """Each unit's current state (one GetAll each) and the PIDs in its cgroup.

    PIDs are as the bus's systemd numbers them: for a container's bus, its PID namespace.
    """
    states: dict[str, UnitState] = {}
    with _connect() as sd:
        for unit in dict.fromkeys(units):
            state = UnitState.from_properties(unit, sd.get_all(sd.load_unit(unit)))
            if state.active_state != "inactive" and state.load_state == "loaded":
                pids = sd.unit_processes(unit)
                state = replace(state, pids=pids)
            states[unit] = state
    return states


# ---------------------------------------------------------------------------- internals


def _run_jobs(
    sd: _Systemd, ops: Sequence[tuple[str, str, Callable[[UnitState], str | None]]], *,
    timeout: float, settle: float,
) -> list[UnitOutcome]:
    """Queue each (unit, job method) that its skip rule lets through, wait for the jobs, let
    the started units settle, and read every unit's outcome."""
    outcomes: dict[str, UnitOutcome] = {}
    todo: dict[str, str] = {}  # unit -> object path
    methods: dict[str, str] = {}
    for unit, method, skip in ops:
        path = sd.load_unit(unit)
        state = UnitState.from_properties(unit, sd.get_all(path))
        reason = skip(state)
        if reason is None:
            todo[unit] = path
            methods[unit] = method
        else:
            logger.info("%s: left alone (%s)", unit, reason)
            outcomes[unit] = _outcome(state, skipped_reason=reason, job_result=None)
    since = time.time()
    jobs, refusals = sd.run_jobs(methods, timeout=timeout) if todo else ({}, {})
    started = [todo[u] for u, res in jobs.items() if res == "done"]
    if started and settle > 0:
        sd.settle(started, seconds=settle)
    for unit, path in todo.items():
        state = UnitState.from_properties(unit, sd.get_all(path))
        outcome = _outcome(state, skipped_reason=None, job_result=jobs.get(unit))
        if outcome.failed:
            lines = refusals.get(unit, ()) + journal_tail(unit, sd.address, since=since)
            outcome = replace(outcome, journal=lines)
        logger.info("%s: %s", unit, outcome.describe())
        outcomes[unit] = outcome
    return [outcomes[u] for u, _method, _skip in ops]


def _skip_reason(state: UnitState) -> str | None:
    if state.load_state == "not-found":
        return "no such unit"
    if state.load_state == "masked" or state.unit_file_state.startswith("masked"):
        return "masked"
    if state.load_state not in ("loaded", ""):
        return f"its unit file cannot be loaded ({state.load_state})"
    if state.running or state.unit_file_state in ENABLED_FILE_STATES:
        return None
    return f"{state.unit_file_state or 'not enabled'} and not running"


def _failed_conditions(raw: Any) -> tuple[str, ...]:
    """Conditions (a(sbbsi): type, trigger, negate, parameter, state) whose last check failed."""
    failed = []
    for cond in raw or ():
        kind, _trigger, negate, param, result = cond
        if int(result) < 0:
            failed.append(f"{kind}={'!' if negate else ''}{param}")
    return tuple(failed)


def _outcome(state: UnitState, *, skipped_reason: str | None, job_result: str | None
             ) -> UnitOutcome:
    return UnitOutcome(
        unit=state.unit,
        skipped_reason=skipped_reason,
        active_state=state.active_state,
        sub_state=state.sub_state,
        condition_result=state.condition_result,
        job_result=job_result,
        result=state.result,
        exec_main_status=state.exec_main_status,
        failed_conditions=state.failed_conditions,
    )


def journal_root(address: str) -> str | None:
    """The file system root whose journal belongs to the systemd behind this bus address.

    "/" for the standard socket, ROOT for unix:path=ROOT/run/dbus/system_bus_socket,
    None when the address is not a local socket path (no journal we can read).
    """
    for part in address.split(";"):
        m = re.fullmatch(r"unix:(?:.*,)?path=([^,]+)(?:,.*)?", part)
        if m is None:
            continue
        path = m.group(1)
        if path in (_SOCKET_SUFFIX, "/var" + _SOCKET_SUFFIX):
            return "/"
        if path.endswith(_SOCKET_SUFFIX):
            return path[: -len(_SOCKET_SUFFIX)]
    return None


def journal_tail(unit: str, address: str, lines: int = JOURNAL_LINES,
                 since: float | None = None) -> tuple[str, ...]:
    """The last lines of a unit's journal as "ident[pid]: message", or one line saying why not.

    With `since` (seconds since the epoch), only lines logged from then on.
    """
    root = journal_root(address)
    if root is None:
        return (f"(no journal: the bus {address} is not a local socket)",)
    argv = ["journalctl"]
    if root != "/":
        argv.append(f"--root={root}")
    argv += ["-u", unit, "-n", str(lines), "--no-pager", "--output=json"]
    if since is not None:
        argv.append(f"--since=@{int(since)}")  # whole seconds: the exact cut is made below
    result = process.run(argv, check=False, timeout=30)
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        return (f"(journalctl failed: {why})",)
    records = [_journal_record(line) for line in result.stdout.splitlines() if line.strip()]
    if since is not None:
        cut = int(since * 1_000_000)
        records = [r for r in records if int(r.get("__REALTIME_TIMESTAMP", cut)) >= cut]
    return tuple(_journal_line(r) for r in records)


def _journal_record(raw: str) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except ValueError:
        return {"MESSAGE": raw}
    return record if isinstance(record, dict) else {"MESSAGE": raw}


def _journal_line(record: Mapping[str, Any]) -> str:
    message = record.get("MESSAGE", "")
    if isinstance(message, list):  # not UTF-8: journalctl gives the bytes
        message = bytes(message).decode("utf-8", "replace")
    ident = record.get("SYSLOG_IDENTIFIER") or record.get("_COMM") or "?"
    pid = record.get("_PID") or record.get("SYSLOG_PID")
    return f"{ident}[{pid}]: {message}" if pid else f"{ident}: {message}"


def _telling_line(journal: Sequence[str]) -> str | None:
    """The last line the unit's own processes wrote (systemd's "Failed with result" says less)."""
    own = [line for line in journal if not line.startswith("systemd[")]
    candidates = own or list(journal)
    return candidates[-1] if candidates else None


class _Systemd:
    """Typed calls on systemd's manager over one private connection."""

    def __init__(self, bus: Any, address: str) -> None:
        self.bus = bus
        self.address = address
        self.manager = bus.get(SYSTEMD, MANAGER_PATH)

    def load_unit(self, unit: str) -> str:
        return str(_call(lambda: self.manager.LoadUnit(unit)))

    def get_all(self, path: str) -> dict[str, Any]:
        """Every property of every interface of the object, in one call."""
        from gi.repository import GLib

        reply = _call(lambda: self.bus.con.call_sync(
            SYSTEMD, path, PROPERTIES_IFACE, "GetAll", GLib.Variant("(s)", ("",)),
            None, 0, -1, None,
        ))
        return dict(reply.unpack()[0])

    def unit_processes(self, unit: str) -> tuple[int, ...]:
        try:
            procs = _call(lambda: self.manager.GetUnitProcesses(unit))
        except ModelPullError as exc:
            if exc.code is ExitCode.NO_BUS:
                raise
            return ()
        return tuple(int(pid) for _cgroup, pid, _cmdline in procs)

    def reset_failed(self, unit: str) -> None:
        """ResetFailedUnit: clear a failed state and the start rate counter."""
        try:
            _call(lambda: self.manager.ResetFailedUnit(unit))
        except ModelPullError as exc:
            if exc.code is ExitCode.NO_BUS:
                raise
            logger.debug("ResetFailedUnit(%s): %s", unit, exc.message)

    def restart_unit(self, unit: str, method: str = "RestartUnit") -> str:
        """Queue a restart job (starts the unit when it is not running), or the job of
        `method` ("StartUnit"); its job path.

        A new entry is a new chance: ResetFailedUnit first clears a failed state and the start
        rate counter (StartLimitBurst counts restarts by earlier pulls and by hand too), so the
        unit is not refused with start-limit-hit for what happened to the old entry.
        """
        self.reset_failed(unit)
        return str(_call(lambda: getattr(self.manager, method)(unit, "replace")))

    def run_jobs(self, methods: Mapping[str, str], *, timeout: float
                 ) -> tuple[dict[str, str | None], dict[str, tuple[str, ...]]]:
        """METHOD(unit, "replace") for each unit -> METHOD, then wait for their JobRemoved.

        Returns unit -> job result (None: not finished within timeout; "refused": systemd
        answered the call with an error) and unit -> the refusal's message.
        """
        removed: dict[str, str] = {}  # job path -> result
        jobs: dict[str, str] = {}  # unit -> job path
        refusals: dict[str, tuple[str, ...]] = {}
        _call(self.manager.Subscribe)
        with _loop(timeout, lambda: all(j in removed for j in jobs.values())) as (run, kick):

            def on_removed(_id: int, job: str, _unit: str, result: str) -> None:
                removed[str(job)] = str(result)
                kick()

            sub = self.manager.JobRemoved.connect(on_removed)  # BEFORE the first RestartUnit
            try:
                for unit, method in methods.items():
                    logger.debug("%s(%s, replace)", method, unit)
                    try:
                        jobs[unit] = self.restart_unit(unit, method)
                    except ModelPullError as exc:
                        if exc.code is ExitCode.NO_BUS:
                            raise
                        refusals[unit] = (exc.message,)
                run()
            finally:
                sub.disconnect()
        results: dict[str, str | None] = {unit: "refused" for unit in refusals}
        for unit, job in jobs.items():
            results[unit] = removed.get(job)
            if job not in removed:
                logger.warning("%s: job %s not finished after %ss", unit, job, timeout)
        return results, refusals

    def settle(self, paths: Sequence[str], *, seconds: float) -> None:
        """Watch started units for `seconds`; stop early once all of them went down again."""
        down: set[str] = set()

        def on_changed(_sender: str, path: str, _iface: str, _signal: str, params: Any) -> None:
            iface, changed, _invalidated = params
            if path in paths and iface == UNIT_IFACE:
                active = changed.get("ActiveState")
                if active in ("failed", "inactive", "deactivating") or \
                        changed.get("SubState") == "auto-restart":
                    down.add(path)

        with _loop(seconds, lambda: down >= set(paths)) as (run, kick):

            def on_fired(sender: str, path: str, iface: str, signal: str, params: Any) -> None:
                on_changed(sender, path, iface, signal, params)
                kick()

            sub = self.bus.subscribe(sender=SYSTEMD, iface=PROPERTIES_IFACE,
                                     signal="PropertiesChanged", signal_fired=on_fired)
            try:
                run()
            finally:
                sub.unsubscribe()


@contextmanager
def _loop(timeout: float, done: Callable[[], bool]
          ) -> Iterator[tuple[Callable[[], None], Callable[[], None]]]:
    """A GLib main loop that runs until done() or timeout.

    Yields (run, kick): run() runs the loop; signal callbacks call kick() after recording
    what they saw, which ends the loop once done() holds.
    """
    from gi.repository import GLib

    main = GLib.MainLoop()
    timed_out = [False]

    def on_timeout() -> bool:
        timed_out[0] = True
        main.quit()
        return False  # one-shot

    def kick() -> None:
        if main.is_running() and done():
            main.quit()

    def run() -> None:
        if done():
            return
        source = GLib.timeout_add(max(1, int(timeout * 1000)), on_timeout)
        try:
            main.run()
        finally:
            if not timed_out[0]:
                GLib.source_remove(source)

    yield run, kick


@contextmanager
def _connect() -> Iterator[_Systemd]:
    """A private connection to the system bus, closed afterwards; NO_BUS when that fails."""
    try:
        import pydbus
        from gi.repository import Gio
    except ImportError as exc:
        raise ModelPullError(
            ExitCode.NO_BUS, f"cannot reach systemd on the system bus: {exc}",
            hint="install pydbus and PyGObject (pip install 'model-pull[dbus]')",
        ) from exc
    address = str(_call(lambda: Gio.dbus_address_get_for_bus_sync(Gio.BusType.SYSTEM, None)))
    logger.debug("connecting to the system bus at %s", address)
    bus = _call(lambda: pydbus.connect(address))
    try:
        yield _Systemd(bus, address)
    finally:
        try:
            bus.con.close_sync(None)
        except Exception:
            logger.debug("closing the bus connection failed", exc_info=True)


def _call(fn: Callable[[], Any]) -> Any:
    """Call into GLib/D-Bus; map unreachable bus and denied access to NO_BUS."""
    from gi.repository import Gio, GLib

    try:
        return fn()
    except GLib.Error as exc:
        remote = Gio.DBusError.get_remote_error(exc)
        message = re.sub(r"^GDBus\.Error:[\w.]+:\s*", "", exc.message)
        if remote is None or remote in DENIED_ERRORS:
            raise ModelPullError(
                ExitCode.NO_BUS, f"cannot reach systemd on the system bus: {message}",
                hint=NO_BUS_HINT,
            ) from exc
        raise ModelPullError(
            ExitCode.UNIT_FAILED, f"systemd refused: {message}",
            hint="systemctl status for the unit named above",
        ) from exc

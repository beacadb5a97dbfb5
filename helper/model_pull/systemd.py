"""Restart the units that wait for a model, and read their states: the only D-Bus code.

Talks to systemd (PID 1) over the system bus with pydbus + GLib. The bus address comes from
the environment (`DBUS_SYSTEM_BUS_ADDRESS`, default `unix:path=/run/dbus/system_bus_socket`),
so a client can be pointed at another systemd's bus, e.g. a test container's
(`unix:path=/proc/LEADER/root/run/dbus/system_bus_socket`). Each call opens its own private
connection and closes it, so changing the variable between calls takes effect. When D-Bus
cannot be used, the error (NO_BUS) says what is missing: PyGObject, GLib's
GObject-introspection data (typelibs), pydbus, the bus socket, or the permission.

Which units are restarted is units.py's policy; for a unit served on demand
(`start_on_demand`) that is its sockets, and the unit only if it runs, after its failed state
and start limit are cleared. All restart jobs are queued at once
(JobRemoved is connected before the first RestartUnit), then one GLib main loop runs until
every job is removed or `timeout` passes. A unit whose job finished with the unit active is then
watched for `settle` seconds (PropertiesChanged): a server that exits right after its start (a
bad flag, a missing library, a model file it cannot read) fails there, after systemd already
called its start `done`. Finally each unit's state is read with ONE
`org.freedesktop.DBus.Properties.GetAll`; a unit that failed carries the last lines of its
journal since the restart was asked for (journal.py).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from model_pull.errors import ExitCode, ModelPullError
from model_pull.journal import journal_tail
from model_pull.units import UnitOutcome, UnitState, on_demand_jobs, outcome_of, skip_reason

logger = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
DENIED_ERRORS = frozenset(
    {
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
        "org.freedesktop.DBus.Error.AuthFailed",
    }
)
ROOT_HINT = "run as root: sudo model-pull ..."
NOT_RUNNING_HINT = (
    "is D-Bus running? systemctl status dbus.socket; DBUS_SYSTEM_BUS_ADDRESS names another bus"
)
INSTALL_HINT = (
    "install PyGObject and pydbus: pip install 'model-pull[dbus]' (the NixOS package brings them)"
)
TYPELIB_HINT = (
    "set GI_TYPELIB_PATH to the directory holding Gio-2.0.typelib (since GLib 2.80 "
    "it comes with glib: <glib>/lib/girepository-1.0)"
)


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
        return _run_jobs(
            sd, [(unit, "RestartUnit") for unit in names], timeout=timeout, settle=settle
        )


def start_on_demand(
    units: Mapping[str, Sequence[str]], *, timeout: float = 60, settle: float = 2.0
) -> list[UnitOutcome]:
    """For each on-demand unit (unit -> its socket units) whose model changed: clear its failed
    state and start limit, restart it if it runs, start its sockets (units.on_demand_jobs).

    The outcomes are those of the sockets (listening, or still waiting for the model) and of
    each unit that was restarted. Raises like `restart_waiting_units`.
    """
    if not units:
        return []
    with _connect() as sd:
        jobs: list[tuple[str, str]] = []
        for unit, sockets in units.items():
            state = UnitState.from_properties(unit, sd.get_all(sd.load_unit(unit)))
            sd.reset_failed(unit)  # a new entry is a new chance: the start limit starts over
            jobs += on_demand_jobs(state, sockets)
        return _run_jobs(sd, jobs, timeout=timeout, settle=settle)


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
    sd: _Systemd, ops: Sequence[tuple[str, str]], *, timeout: float, settle: float
) -> list[UnitOutcome]:
    """Queue each (unit, job method) that units.skip_reason lets through, wait for the jobs,
    let the started units settle, and read every unit's outcome (in the order of `ops`)."""
    outcomes: dict[str, UnitOutcome] = {}
    todo: dict[str, str] = {}  # unit -> object path
    methods: dict[str, str] = {}
    for unit, method in ops:
        path = sd.load_unit(unit)
        state = UnitState.from_properties(unit, sd.get_all(path))
        reason = skip_reason(state)
        if reason is None:
            todo[unit] = path
            methods[unit] = method
        else:
            logger.info("%s: left alone (%s)", unit, reason)
            outcomes[unit] = outcome_of(state, skipped_reason=reason, job_result=None)
    since = time.time()
    jobs, refusals = sd.run_jobs(methods, timeout=timeout) if todo else ({}, {})
    started = [todo[u] for u, res in jobs.items() if res == "done"]
    if started and settle > 0:
        sd.settle(started, seconds=settle)
    for unit, path in todo.items():
        state = UnitState.from_properties(unit, sd.get_all(path))
        outcome = outcome_of(state, skipped_reason=None, job_result=jobs.get(unit))
        if outcome.failed:
            lines = refusals.get(unit, ()) + journal_tail(unit, sd.address, since=since)
            outcome = replace(outcome, journal=lines)
        logger.info("%s: %s", unit, outcome.describe())
        outcomes[unit] = outcome
    return [outcomes[u] for u in dict.fromkeys(u for u, _method in ops)]


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

        reply = _call(
            lambda: self.bus.con.call_sync(
                SYSTEMD,
                path,
                PROPERTIES_IFACE,
                "GetAll",
                GLib.Variant("(s)", ("",)),
                None,
                0,
                -1,
                None,
            )
        )
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

    def run_jobs(
        self, methods: Mapping[str, str], *, timeout: float
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
                if (
                    active in ("failed", "inactive", "deactivating")
                    or changed.get("SubState") == "auto-restart"
                ):
                    down.add(path)

        with _loop(seconds, lambda: down >= set(paths)) as (run, kick):

            def on_fired(sender: str, path: str, iface: str, signal: str, params: Any) -> None:
                on_changed(sender, path, iface, signal, params)
                kick()

            sub = self.bus.subscribe(
                sender=SYSTEMD,
                iface=PROPERTIES_IFACE,
                signal="PropertiesChanged",
                signal_fired=on_fired,
            )
            try:
                run()
            finally:
                sub.unsubscribe()


@contextmanager
def _loop(
    timeout: float, done: Callable[[], bool]
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
    """A private connection to the system bus, closed afterwards; NO_BUS, saying what is missing
    (PyGObject, GLib's typelibs, pydbus, the bus socket, the permission), when that fails."""
    gio = _gio()
    import pydbus  # after _gio(), which says what is missing when this would fail

    address = str(_call(lambda: gio.dbus_address_get_for_bus_sync(gio.BusType.SYSTEM, None)))
    logger.debug("connecting to the system bus at %s", address)
    try:
        bus = pydbus.connect(address)
    except Exception as exc:
        raise _no_bus(exc, address) from exc
    try:
        yield _Systemd(bus, address)
    finally:
        try:
            bus.con.close_sync(None)
        except Exception:
            logger.debug("closing the bus connection failed", exc_info=True)


def _gio() -> Any:
    """GLib's Gio through PyGObject, and pydbus; NO_BUS naming the part that is missing."""
    try:
        import gi  # noqa: F401
    except ImportError as exc:
        raise ModelPullError(
            ExitCode.NO_BUS,
            f"cannot use D-Bus: PyGObject is not installed ({exc})",
            hint=INSTALL_HINT,
        ) from exc
    try:
        from gi.repository import Gio
    except ImportError as exc:
        raise ModelPullError(
            ExitCode.NO_BUS,
            f"cannot use D-Bus: GLib's GObject-introspection data is missing ({exc})",
            hint=TYPELIB_HINT,
        ) from exc
    try:
        import pydbus  # noqa: F401
    except ImportError as exc:
        raise ModelPullError(
            ExitCode.NO_BUS, f"cannot use D-Bus: pydbus is not installed ({exc})", hint=INSTALL_HINT
        ) from exc
    return Gio


def _no_bus(exc: Exception, address: str) -> ModelPullError:
    """Why connecting to the bus at `address` failed: no socket, nobody listening, no right."""
    from gi.repository import Gio, GLib

    path = _socket_path(address)
    where = path or address
    if isinstance(exc, GLib.Error) and exc.domain == "g-io-error-quark":
        if exc.code == Gio.IOErrorEnum.NOT_FOUND:
            return ModelPullError(
                ExitCode.NO_BUS,
                f"cannot reach systemd on the system bus: no socket at {where}",
                hint=NOT_RUNNING_HINT,
            )
        if exc.code == Gio.IOErrorEnum.CONNECTION_REFUSED:
            return ModelPullError(
                ExitCode.NO_BUS,
                f"cannot reach systemd on the system bus: nothing answers at {where}",
                hint=NOT_RUNNING_HINT,
            )
        if exc.code == Gio.IOErrorEnum.PERMISSION_DENIED:
            return ModelPullError(
                ExitCode.NO_BUS,
                f"cannot reach systemd on the system bus: permission denied on {where}",
                hint=ROOT_HINT,
            )
    message = re.sub(r"^GDBus\.Error:[\w.]+:\s*", "", getattr(exc, "message", str(exc)))
    return ModelPullError(
        ExitCode.NO_BUS,
        f"cannot reach systemd on the system bus at {where}: {message}",
        hint=NOT_RUNNING_HINT,
    )


def _socket_path(address: str) -> str | None:
    for part in address.split(";"):
        m = re.fullmatch(r"unix:(?:.*,)?path=([^,]+)(?:,.*)?", part)
        if m is not None:
            return m.group(1)
    return None


def _call(fn: Callable[[], Any]) -> Any:
    """Call into GLib/D-Bus; map denied access to NO_BUS, other refusals to UNIT_FAILED."""
    from gi.repository import Gio, GLib

    try:
        return fn()
    except GLib.Error as exc:
        remote = Gio.DBusError.get_remote_error(exc)
        message = re.sub(r"^GDBus\.Error:[\w.]+:\s*", "", exc.message)
        if remote in DENIED_ERRORS:
            raise ModelPullError(
                ExitCode.NO_BUS, f"systemd refused the request: {message}", hint=ROOT_HINT
            ) from exc
        if remote is None:
            raise ModelPullError(
                ExitCode.NO_BUS,
                f"cannot reach systemd on the system bus: {message}",
                hint=NOT_RUNNING_HINT,
            ) from exc
        raise ModelPullError(
            ExitCode.UNIT_FAILED,
            f"systemd refused: {message}",
            hint="systemctl status for the unit named above",
        ) from exc

"""Which units a new entry restarts, and what became of them: pure policy, no D-Bus.

Which units are restarted (`skip_reason`):
- a unit that is running (ActiveState active, activating or reloading): restarted, so it
  loads the new entry;
- a unit that is not running but is enabled (UnitFileState `enabled`, `enabled-runtime` or
  `generated`): started. On NixOS a unit with `wantedBy` reads as `enabled` (systemd finds it
  in a `.wants/` directory), which is how the inference modules install theirs;
- anything else is left alone with a reason: `disabled`, `static` and `indirect` units only
  start when something else pulls them in, `linked` ones were made available but not enabled,
  `masked` ones must not start, and a unit systemd cannot find or load is reported as such.
  Starting those would run a server that nobody asked to run.

A unit served on demand (`on_demand_jobs`) is not started: its sockets are (each unless
`skip_reason` says otherwise), so that the next request starts it on the new entry; it is
restarted only when it runs (it serves the old entry).

`UnitState` is a unit as systemd's properties describe it (systemd.py reads them over D-Bus);
`UnitOutcome` what a restart did to it; `raise_for_failed` turns outcomes into the one error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from model_pull.errors import ExitCode, ModelPullError

ENABLED_FILE_STATES = frozenset({"enabled", "enabled-runtime", "generated"})
RUNNING_STATES = frozenset({"active", "activating", "reloading"})
# JobRemoved results that mean the start did not happen ("done" and "skipped" are fine:
# a failed condition still gives "done", see UnitOutcome.waiting)
# "refused" is ours: systemd answered RestartUnit with an error (the message is in the journal
# lines of the outcome)
FAILED_JOB_RESULTS = frozenset(
    {"failed", "timeout", "dependency", "canceled", "invalid", "refused"}
)


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
    since_usec: int = 0  # StateChangeTimestamp: when it entered its state (µs of the epoch)

    @classmethod
    def from_properties(cls, unit: str, props: Mapping[str, Any]) -> UnitState:
        return cls(
            unit=unit,
            load_state=str(props.get("LoadState", "")),
            active_state=str(props.get("ActiveState", "")),
            sub_state=str(props.get("SubState", "")),
            unit_file_state=str(props.get("UnitFileState", "")),
            condition_result=bool(props.get("ConditionResult", False)),
            failed_conditions=failed_conditions(props.get("Conditions", [])),
            result=str(props.get("Result", "")),
            exec_main_status=int(props.get("ExecMainStatus", 0)),
            main_pid=int(props.get("MainPID", 0)),
            since_usec=int(props.get("StateChangeTimestamp", 0)),
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


def raise_for_failed(outcomes: Sequence[UnitOutcome]) -> None:
    """ModelPullError(UNIT_FAILED) if a restarted unit failed or still cannot see its model.

    The journal lines of failed units are in the outcomes, for the caller to show.
    """
    bad = [o for o in outcomes if o.failed or o.waiting]
    if not bad:
        return
    first = bad[0]
    if first.failed:
        detail = (
            f"{first.unit} failed to start ({first.result or first.job_result}, "
            f"status {first.exec_main_status})"
        )
        telling = telling_line(first.journal)
        if telling:
            detail += f": {telling}"
    else:
        conds = ", ".join(first.failed_conditions) or "its condition"
        detail = f"{first.unit} still does not start: {conds} not met after the install"
    if len(bad) > 1:
        detail = f"{len(bad)} units did not come up; {detail}"
    raise ModelPullError(
        ExitCode.UNIT_FAILED,
        detail,
        hint=f"journalctl -u {first.unit}; systemctl status {first.unit}",
    )


def skip_reason(state: UnitState) -> str | None:
    if state.load_state == "not-found":
        return "no such unit"
    if state.load_state == "masked" or state.unit_file_state.startswith("masked"):
        return "masked"
    if state.load_state not in ("loaded", ""):
        return f"its unit file cannot be loaded ({state.load_state})"
    if state.running or state.unit_file_state in ENABLED_FILE_STATES:
        return None
    return f"{state.unit_file_state or 'not enabled'} and not running"


def on_demand_jobs(state: UnitState, sockets: Sequence[str]) -> list[tuple[str, str]]:
    """The jobs (unit, D-Bus method) a new entry gives an on-demand unit: RestartUnit on the
    unit if it runs, StartUnit on each of its sockets (a no-op for one that listens)."""
    jobs = [(state.unit, "RestartUnit")] if state.running else []
    return jobs + [(socket, "StartUnit") for socket in sockets]


def failed_conditions(raw: Any) -> tuple[str, ...]:
    """Conditions (a(sbbsi): type, trigger, negate, parameter, state) whose last check failed."""
    failed = []
    for cond in raw or ():
        kind, _trigger, negate, param, result = cond
        if int(result) < 0:
            failed.append(f"{kind}={'!' if negate else ''}{param}")
    return tuple(failed)


def outcome_of(
    state: UnitState, *, skipped_reason: str | None, job_result: str | None
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


def telling_line(journal: Sequence[str]) -> str | None:
    """The last line the unit's own processes wrote (systemd's "Failed with result" says less)."""
    own = [line for line in journal if not line.startswith("systemd[")]
    candidates = own or list(journal)
    return candidates[-1] if candidates else None

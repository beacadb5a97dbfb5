"""`model-pull status` per unit: always on or on demand, and `serving` in one word since when.

Pure: unit states as systemd's properties give them (the real systemd version is in
tests/systemd/test_on_demand.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from model_pull.manifest import OnDemand
from model_pull.render import serving_text
from model_pull.status import UnitReport
from model_pull.units import UnitState

T0 = 1_800_000_000_000_000  # µs of the epoch
ON_DEMAND = OnDemand(idle_timeout=900, sockets=("m.socket",))


def state(unit: str, active: str, sub: str = "dead", *, waiting: bool = False, at: int = T0):
    conditions = [("ConditionPathExists", False, False, "/m", -1)] if waiting else []
    return UnitState.from_properties(
        unit,
        {
            "LoadState": "loaded",
            "ActiveState": active,
            "SubState": sub,
            "UnitFileState": "static",
            "Conditions": conditions,
            "StateChangeTimestamp": at,
        },
    )


@pytest.mark.parametrize(
    ("runtime", "socket", "serving"),
    [
        (("active", "running"), ("active", "running"), "running"),
        (("activating", "start-post"), ("active", "running"), "starting"),  # loading, or queued
        (("inactive", "dead"), ("active", "listening"), "idle"),
        (("failed", "failed"), ("active", "listening"), "idle"),  # the next request retries
        (("inactive", "dead"), ("inactive", "dead"), "stopped"),  # systemctl stop m.socket
        (("failed", "failed"), ("failed", "failed"), "failed"),
    ],
)
def test_on_demand_serving(runtime, socket, serving):
    report = UnitReport(
        "m.service",
        state("m.service", *runtime),
        None,
        on_demand=ON_DEMAND,
        sockets=(state("m.socket", *socket),),
    )
    assert report.serving == serving


def test_on_demand_without_its_model_is_waiting_since_the_socket_checked():
    report = UnitReport(
        "m.service",
        state("m.service", "inactive", at=0),
        None,
        on_demand=ON_DEMAND,
        sockets=(state("m.socket", "inactive", waiting=True, at=T0),),
    )
    assert report.serving == "waiting"
    assert report.since == datetime.fromtimestamp(T0 / 1e6, UTC)
    assert report.to_json()["since"] == "2027-01-15T08:00:00Z"
    assert serving_text(report) == (
        "on demand, idle timeout 900 s: waiting since 2027-01-15 08:00:00 UTC"
    )


@pytest.mark.parametrize(
    ("runtime", "serving"),
    [
        (("active", "running"), "running"),
        (("inactive", "dead"), "stopped"),
        (("failed", "failed"), "failed"),
    ],
)
def test_always_on_serving(runtime, serving):
    report = UnitReport("a.service", state("a.service", *runtime), 0)
    assert report.serving == serving
    data = report.to_json()
    assert (data["onDemand"], data["idleTimeout"], data["sockets"]) == (False, None, [])
    assert serving_text(report).startswith(f"always on: {serving} since ")


def test_without_a_bus_nothing_is_guessed():
    report = UnitReport("m.service", None, None, on_demand=ON_DEMAND)
    assert (report.serving, report.since) == (None, None)
    assert serving_text(report) == "on demand, idle timeout 900 s"

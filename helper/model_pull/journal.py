"""The last lines a unit wrote to its journal, for the report of a unit that failed to start.

Read with `journalctl -u UNIT` through `process.run`. When the bus is another root's (the
address is `unix:path=ROOT/run/dbus/system_bus_socket`, as for a container seen through /proc),
the journal is read from that root (`journalctl --root=ROOT`); a bus that is not a local socket
(tcp, abstract) gives no journal lines, only the unit's Result and exit status.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from model_pull import process

JOURNAL_LINES = 20
_SOCKET_SUFFIX = "/run/dbus/system_bus_socket"


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


def journal_tail(
    unit: str, address: str, lines: int = JOURNAL_LINES, since: float | None = None
) -> tuple[str, ...]:
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

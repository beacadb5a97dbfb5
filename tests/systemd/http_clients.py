"""HTTP clients to run inside a test container: several requests at given times, concurrently.

    python3 http_clients.py < SPEC.json > RESULTS.json

SPEC is a list of requests: {"port": 11435, "at": 0.5 (seconds after the first), "path":
"/v1/completions", "body": {...} (POST as JSON; absent: GET), "pause": 0.2 and "read": 4096
(a slow reader: reads of `read` bytes, `pause` seconds apart), "hold": "/run/PATH" (a reader
that reads nothing of the answer until PATH exists), "timeout": 120}.
Each result: {"status": 200 or null, "error": "ConnectionRefusedError: ..." or null,
"start"/"end": time.monotonic() of the container, "body": the answer, "chunks": reads of the
answer}. Standard library only: it runs on any Python in the container.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import time
from typing import Any


def one(spec: dict[str, Any], t0: float, out: dict[str, Any]) -> None:
    delay = t0 + float(spec.get("at", 0)) - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    out.update(status=None, error=None, start=time.monotonic(), body="", chunks=0)
    try:
        conn = http.client.HTTPConnection(
            "127.0.0.1", int(spec["port"]), timeout=float(spec.get("timeout", 120))
        )
        body = spec.get("body")
        if body is None:
            conn.request("GET", spec.get("path", "/health"))
        else:
            conn.request(
                "POST",
                spec.get("path", "/v1/completions"),
                json.dumps(body),
                {"Content-Type": "application/json"},
            )
        if spec.get("hold"):
            deadline = time.monotonic() + float(spec.get("timeout", 120))
            while not os.path.exists(spec["hold"]):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{spec['hold']} did not appear")
                time.sleep(0.05)
        response = conn.getresponse()
        out["status"] = response.status
        parts = []
        pause, size = float(spec.get("pause", 0)), int(spec.get("read", 4096))
        while True:
            chunk = response.read(size) if pause else response.read()
            if not chunk:
                break
            parts.append(chunk)
            out["chunks"] += 1
            if not pause:
                break
            time.sleep(pause)
        out["body"] = b"".join(parts).decode(errors="replace")
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["end"] = time.monotonic()


def main() -> None:
    specs = json.load(sys.stdin)
    results: list[dict[str, Any]] = [{} for _ in specs]
    t0 = time.monotonic()
    threads = [
        threading.Thread(target=one, args=(spec, t0, result))
        for spec, result in zip(specs, results, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()

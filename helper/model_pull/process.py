"""The only place that runs other programs.

Each call names its argv exactly, says `check=` explicitly, and never passes secrets on the
command line (tokens travel in the environment of our own process only).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from model_pull.errors import ExitCode, ModelPullError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def which(program: str) -> str | None:
    return shutil.which(program)


def run(
    argv: Sequence[str],
    *,
    check: bool,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    error_code: ExitCode = ExitCode.ERROR,
) -> Result:
    """Run argv, capture text output. With check=True a non-zero exit is a ModelPullError."""
    logger.debug("running %s", " ".join(argv))
    try:
        proc = subprocess.run(
            list(argv),
            check=False,
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        raise ModelPullError(error_code, f"{argv[0]} is not installed", hint=str(exc)) from exc
    result = Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise ModelPullError(error_code, f"{argv[0]} failed: {last[0]}")
    return result

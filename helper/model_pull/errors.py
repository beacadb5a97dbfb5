"""The one error type users see, and the exit code of each kind of failure.

Every module raises `ModelPullError(ExitCode.X, "what is wrong", hint="what to do")`;
`cli.main` prints it as one line on stderr (`error: what is wrong (what to do)`) and exits
with the code. Tracebacks only with MODEL_PULL_DEBUG=1.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Distinct exit codes, stable for scripts and for the NixOS units that call model-pull."""

    OK = 0
    ERROR = 1  # anything without a more specific code
    USAGE = 2  # click's own code for bad arguments

    # fetch / package (issue: fetch, verify and package)
    REPO_NOT_FOUND = 10
    REVISION_NOT_FOUND = 11
    AUTH = 12  # gated repo, missing or bad token
    NO_MATCH = 13  # include/exclude patterns select no file
    HASH_MISMATCH = 14
    UNSAFE_LISTING = 15  # absolute, '..', or otherwise unsafe file names
    DISK_FULL = 16
    PERMISSION = 17  # no write access to the state root: sudo
    UNREACHABLE = 18  # the Hub (or HF_ENDPOINT) cannot be reached
    LOCKED = 19  # another pull holds the lock and --no-wait was given
    NOT_INSTALLED = 20  # no such model in the state root
    VERIFY_FAILED = 21  # an installed entry no longer matches its manifest
    PIN_MISMATCH = 22  # content hash differs from the declared narHash
    BAD_MANIFEST = 23  # /etc/inference/models.json unreadable or malformed
    NIX = 24  # nix-store / nix failed in --store nix mode
    BAD_INPUT = 25  # a local source directory or argument that cannot be packaged
    PINNED = 26  # the NixOS manifest pins this model: the pin, not models/NAME, decides
    UNSAFE_ROOT = 27  # a link, a foreign owner or a writable-by-others directory in the state root

    # check (issue: will this model run on this GPU)
    EMULATED = 30  # only with --strict
    UNSUPPORTED = 31
    DOES_NOT_FIT = 32
    NO_GPU_INFO = 33

    # restarts over D-Bus (issue: from pull to serving)
    NO_BUS = 40  # no system bus or permission denied; the pull itself succeeded
    UNIT_FAILED = 41  # a waiting unit failed to start on the new entry


class ModelPullError(Exception):
    """A failure the user can act on: one line of what is wrong, and what to do."""

    def __init__(self, code: ExitCode, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message

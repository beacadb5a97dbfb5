"""Fixtures that boot real systemd in throwaway containers (see container.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest
from container import SystemdContainer, unavailable_reason

logger = logging.getLogger(__name__)

MakeContainer = Callable[..., SystemdContainer]


@pytest.fixture
def make_container(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MakeContainer]:
    """Factory: boot a container with tmp_path bound read-write at the same path.

    make_container(binds=[(host, inside, read_only), ...]) -> a running SystemdContainer,
    torn down after the test. Skips when this machine cannot boot one.
    """
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with ExitStack() as stack:

        def make(binds: Sequence[tuple[str, str, bool]] = ()) -> SystemdContainer:
            all_binds = [(str(tmp_path), str(tmp_path), False), *binds]
            ct = stack.enter_context(SystemdContainer(request.node.name, all_binds))
            logger.info("%s booted in %.2fs", ct.name, ct.boot_seconds or 0)
            return ct

        yield make


@pytest.fixture
def container(make_container: MakeContainer) -> SystemdContainer:
    """A running container with tmp_path bound read-write at the same path."""
    return make_container()

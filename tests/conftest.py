"""Shared fixtures. `daemon` is a real daemon subprocess with private directories; teardown
fails the test if any agent process it started outlived it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import DaemonProcess


@pytest.fixture
def daemon_factory() -> Iterator[type[DaemonProcess]]:
    """Make extra daemons (or daemons with a config) whose cleanup is guaranteed."""
    made: list[DaemonProcess] = []

    class Tracked(DaemonProcess):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)
            made.append(self)

    yield Tracked
    problems = []
    for daemon in made:
        leaked = daemon.cleanup()
        if leaked and not daemon.allow_leftovers:
            problems.append(f"agent processes outlived the daemon: {leaked}\n"
                            f"{daemon.log_text()[-3000:]}")
        daemon.remove()
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def daemon(daemon_factory: type[DaemonProcess]) -> DaemonProcess:
    """A running daemon with the default config."""
    proc = daemon_factory()
    proc.start()
    return proc

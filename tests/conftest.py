"""Shared fixtures. `daemon` is a real daemon subprocess with private directories; teardown
fails the test if the daemon did not stop on SIGTERM or any agent process it started
outlived it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import DaemonFactory, DaemonProcess


@pytest.fixture
def daemon_factory() -> Iterator[DaemonFactory]:
    """Make extra daemons (or daemons with a config) whose cleanup is guaranteed."""
    made: list[DaemonProcess] = []

    class Tracked(DaemonProcess):
        def __init__(self, base: Path | None = None, config: str = "",
                     env: dict[str, str] | None = None) -> None:
            super().__init__(base, config, env)
            made.append(self)

    yield Tracked
    problems = []
    for daemon in made:
        try:
            daemon.stop()  # a no-op if the test stopped (or killed) it already
        except AssertionError as exc:  # it was killed; the leftovers check still runs
            problems.append(str(exc))
        leaked = daemon.cleanup()
        if leaked:
            problems.append(f"agent processes outlived the daemon: {leaked}\n"
                            f"{daemon.log_text()[-3000:]}")
        daemon.remove()
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    """A running daemon with the default config."""
    proc = daemon_factory()
    proc.start()
    return proc

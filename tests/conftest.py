"""Shared fixtures. `daemon` is a real daemon subprocess with private directories; teardown
fails the test if the daemon did not stop on SIGTERM or any agent process it started
outlived it.

Bytecode: where the environment says `PYTHONDONTWRITEBYTECODE` (the development sessions
do), nothing writes bytecode, and every Python process the tests start (a daemon, each
`stoker` command, ...) compiles its imports from source: trio, msgspec, psutil and the
daemon's own modules, ~0.45 s of CPU per process, thousands of times in a run. For the
processes the tests start, `pytest_configure` lifts it and points `PYTHONPYCACHEPREFIX` at
`.cache/pycache` (ignored by git) instead, so the sources stay clean and the second start of
anything loads bytecode. A `PYTHONPYCACHEPREFIX` set by the user is kept."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import ROOT, DaemonFactory, DaemonProcess


def pytest_configure(config: pytest.Config) -> None:
    """Bytecode for the processes the tests start (see the module docstring)."""
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        os.environ.setdefault("PYTHONPYCACHEPREFIX", str(ROOT / ".cache" / "pycache"))


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

"""Optional parts of the daemon that plug into the supervision tree.

Each entry names a module with `async def setup(daemon: Daemon, nursery: trio.Nursery)`,
called once the pool has loaded and before the Unix listener accepts clients. A subsystem
starts its own tasks in `nursery`, serves its requests by adding handlers to
`daemon.extra_handlers` (keyed by request type), and registers cleanup in
`daemon.on_shutdown` / reactions to reloads in `daemon.on_reload`.

A subsystem may also define `async def prepare(daemon, nursery)`, called earlier: before the
pool loads its chats. That is where executors of remote computers are registered
(`daemon.executors[name]`), because loading rebuilds actors on them and reclaims their
orphaned agents.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import trio

    from daemon.service.root import Daemon

Setup = Callable[["Daemon", "trio.Nursery"], Awaitable[Any]]

SUBSYSTEMS: list[str] = [
    "daemon.listeners.websocket.auth",
    "daemon.workspaces.service",
    "daemon.ssh",
]


def load() -> list[Setup]:
    setups: list[Setup] = []
    for name in SUBSYSTEMS:
        module = importlib.import_module(name)
        setups.append(module.setup)
    return setups


def load_prepare() -> list[Setup]:
    """The `prepare` hooks of the subsystems that have one, in `SUBSYSTEMS` order."""
    hooks: list[Setup] = []
    for name in SUBSYSTEMS:
        hook = getattr(importlib.import_module(name), "prepare", None)
        if hook is not None:
            hooks.append(hook)
    return hooks

"""The supervision tree as data: child specs, started in order and stopped in reverse.

As in an OTP supervisor, a reader finds the whole tree in one list (`root.children`): each
`ChildSpec` names the child, how it starts (given the root nursery, for the tasks it runs)
and how it stops. Order is the contract: a child may rely on every child before it having
started, and on every child after it having stopped before its own `stop` runs. That is how
shutdown gets its order (stop accepting clients, end every turn and stop the agents, close
remote connections, say goodbye to clients) without a hook list anyone may append to.

A child's `routes` are registered with the router when the tree is built, before anything
starts, so no request type can be answered twice and the router is complete before the
first client connects. A child's `reload` is called, in start order, when the daemon
re-reads its config.

Restart policy lives below, with the children that restart (the pool and its actors): the
root's children are not restarted, and one that fails to start fails the daemon.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from daemon.config.file import Config
from daemon.log import Log
from daemon.router import Route, Router

Start = Callable[[trio.Nursery], Awaitable[None]]
Stop = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One child of the root: its id, start and stop, and what it adds to the daemon."""

    id: str
    start: Start
    """Runs the child's setup and starts its tasks in the nursery; returns once it is up."""
    stop: Stop | None = None
    """Ends the child's work, under a shield, during shutdown; None: nothing to end (its
    tasks are cancelled with the root nursery)."""
    reload: Callable[[Config], None] | None = None
    """Applies a re-read config (SIGHUP, `stoker reload`); None: reads it live."""
    routes: tuple[Route, ...] = field(default=())
    """The requests this child answers, bound to its object (`Routes.bind`)."""


@dataclass(frozen=True, slots=True)
class TreeStatistics:
    children: tuple[str, ...]
    started: tuple[str, ...]


class Tree:
    """Starts the children in order, stops the started ones in reverse."""

    def __init__(self, children: Sequence[ChildSpec], router: Router) -> None:
        ids = [child.id for child in children]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"child ids must be unique: {', '.join(duplicates)}")
        self.children = tuple(children)
        self.router = router
        for child in self.children:
            router.include(child.routes)
        self._started: list[ChildSpec] = []
        self._log = Log("daemon")

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every child, in order. A child that raises ends the start; `stop` then
        stops only the children that started. (The daemon does not call it then: a child
        that cannot start fails the daemon, and the root nursery cancels the others.)"""
        for child in self.children:
            await child.start(nursery)
            self._started.append(child)

    async def stop(self) -> None:
        """Stop the started children in reverse order, shielded from cancellation (a
        shutdown must finish). A failing stop is logged and the next child still stops."""
        with trio.CancelScope(shield=True):
            while self._started:
                child = self._started.pop()
                if child.stop is None:
                    continue
                try:
                    await child.stop()
                except Exception:
                    self._log.exception("stopping a child failed", child=child.id)

    def reload(self, config: Config) -> None:
        """Hand a re-read config to each started child that applies one, in start order."""
        for child in list(self._started):
            if child.reload is not None:
                child.reload(config)

    def statistics(self) -> TreeStatistics:
        return TreeStatistics(children=tuple(c.id for c in self.children),
                              started=tuple(c.id for c in self._started))

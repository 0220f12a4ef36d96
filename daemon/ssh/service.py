"""The SSH subsystem: its actor, its wiring into the daemon, and config reloads.

Two children of the supervision tree. `start` (child `ssh`, before the pool loads chats)
creates one `Computer` and one `SshExecutor` per `[computers.NAME]` and adds the executors
to the daemon's executor map, so that the pool can rebuild actors of remote chats and queue
the reclaim of their orphaned agents; its stop closes the connections. `attach_workspaces`
(child `computers`, after the workspaces child) registers a `SshWorktreeHost` per computer
with the workspace service, so remote worktrees are created, diffed and reaped like local
ones; that child also answers `computers` (`ROUTES`).

The subsystem owns the one trio-asyncio loop (`Bridge`), opened the first time a computer is
configured; nothing of asyncssh is imported before that. Reloads apply at once: a new
computer is usable, a changed one gets a new connection for new work while agents on the old
one are recycled (hibernated: they come back on the new connection with their next prompt),
and a removed one refuses new work.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import trio

from daemon.config.file import ComputerConfig, Config
from daemon.errors import UnknownChat
from daemon.log import Log
from daemon.router import Routes
from daemon.ssh.bridge import Bridge
from protocol import messages as m

if TYPE_CHECKING:
    from daemon.actors.pool import Pool
    from daemon.actors.settings import Settings
    from daemon.execution.local import Executor
    from daemon.ssh.computer import Computer
    from daemon.ssh.executor import SshExecutor
    from daemon.workspaces.service import WorkspaceService


class SshService:
    """The computers, their executors and (once attached) their worktree hosts.

    Given what it changes rather than the daemon: the daemon's executor map (by computer
    name), the pool (to recycle agents of a reconfigured computer) and the live settings."""

    def __init__(self, *, executors: MutableMapping[str | None, Executor], instance: str,
                 pool: Pool, settings: Settings) -> None:
        self.daemon_executors = executors
        self.instance = instance
        self.pool = pool
        self.settings = settings
        self.nursery: trio.Nursery | None = None
        self.bridge = Bridge()
        self.computers: dict[str, Computer] = {}
        self.executors: dict[str, SshExecutor] = {}
        self.workspaces: WorkspaceService | None = None
        self.log = Log("ssh")

    async def start(self, nursery: trio.Nursery) -> None:
        """Before the pool loads: executors for every configured computer."""
        self.nursery = nursery
        self.apply(self.settings.config.computers)

    # ------------------------------------------------------------------ config

    def apply(self, wanted: Mapping[str, ComputerConfig]) -> set[str]:
        """Make the computers match the config. Returns the names whose connection
        changed (reconfigured or removed)."""
        from daemon.ssh.computer import Computer
        from daemon.ssh.executor import SshExecutor

        nursery = self.nursery
        assert nursery is not None, "apply before start"
        if wanted:
            self.bridge.start(nursery)
        changed: set[str] = set()
        for name, config in wanted.items():
            computer = self.computers.get(name)
            if computer is None:
                computer = Computer(name, config, bridge=self.bridge, nursery=nursery)
                self.computers[name] = computer
                self.executors[name] = SshExecutor(computer, self.instance)
            elif computer.removed or computer.config != config:
                computer.reconfigure(config)
                changed.add(name)
            self._register(name)
        for name, computer in self.computers.items():
            if name not in wanted and not computer.removed:
                computer.remove()
                changed.add(name)
                self.daemon_executors.pop(name, None)
                if self.workspaces is not None:
                    self.workspaces.hosts.pop(name, None)
        return changed

    def _register(self, name: str) -> None:
        executor = self.executors[name]
        self.daemon_executors[name] = executor
        if self.workspaces is not None:
            from daemon.ssh.worktree import SshWorktreeHost

            self.workspaces.hosts[name] = SshWorktreeHost(executor)

    def attach_workspaces(self, workspaces: WorkspaceService) -> None:
        """After the workspaces child started: remote worktrees on every computer."""
        self.workspaces = workspaces
        for name, computer in self.computers.items():
            if not computer.removed:
                self._register(name)

    def reload(self, config: Config) -> None:
        changed = self.apply(config.computers)
        if not changed:
            return
        pool = self.pool
        agents = self.settings.agents

        def on_changed(actor: Any) -> bool:
            try:
                chat = pool.get_chat(actor.chat)
            except UnknownChat:
                return False
            spec = agents.get(actor.agent)
            where = chat.computer or (spec.computer if spec else None)
            return where in changed

        recycled = pool.apply_settings(on_changed)
        self.log.info("computers changed", computers=",".join(sorted(changed)),
                      recycled=recycled)

    # ------------------------------------------------------------------ forwards

    async def forward(self, computer: str, local_port: int) -> int:
        """The port on `computer`'s loopback that reaches `local_port` here (the daemon's
        MCP endpoint, for agents there). Raises `ComputerError` naming why not."""
        from daemon.ssh.login import ComputerError

        found = self.computers.get(computer)
        if found is None or found.removed:
            raise ComputerError(f"computer {computer!r} is not configured")
        return await found.forward(local_port)

    # ------------------------------------------------------------------ requests

    async def list(self, probe: bool) -> m.ComputerList:
        computers = list(self.computers.values())
        if probe:
            async with trio.open_nursery() as nursery:
                for computer in computers:
                    nursery.start_soon(computer.probe)
        out = []
        for c in computers:
            cfg = c.config
            out.append(m.ComputerInfo(
                name=c.name, host=cfg.host, port=cfg.port, user=cfg.user, state=c.state,
                latency_ms=None if c.latency is None else round(c.latency * 1000, 2),
                last_error=c.last_error, connected_since=c.connected_since,
                processes=c.processes, connects=c.connects, losses=c.losses,
                connections=c.channels))
        return m.ComputerList(computers=out)

    async def close(self) -> None:
        async with trio.open_nursery() as nursery:
            for computer in self.computers.values():
                nursery.start_soon(computer.close)


ROUTES: Routes[SshService] = Routes("computers")


@ROUTES.handles(m.ListComputers, slow=True)
async def list_computers(ssh: SshService, req: m.ListComputers, client: str
                         ) -> m.ComputerList:
    return await ssh.list(req.probe)

"""The core requests: chats, prompts, agents, status and reload, answered by the pool.

The pool's child in the supervision tree registers these (`ROUTES`), bound to a `Core`: the
pool and the live settings, plus the few things of the daemon a reply reports (paths, start
time, the WebSocket URL) or does (reload). Opening a chat in a workspace is still this
request (`open_chat`); it is handed to the workspace service.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from daemon.actors.pool import Pool
from daemon.actors.settings import Settings
from daemon.config.paths import Paths
from daemon.listeners.connection import Limits
from daemon.router import Routes
from daemon.tasks.service import TaskService
from daemon.version import VERSION
from daemon.workspaces.service import WorkspaceService
from protocol import messages as m
from protocol.messages import TextBlock


@dataclass(slots=True)
class Core:
    """What the core handlers work with."""

    paths: Paths
    settings: Settings
    pool: Pool
    workspaces: WorkspaceService
    reload: Callable[[], m.ReloadResult]
    """Re-read the config (the root's `Service.reload`)."""
    websocket_url: Callable[[], str | None]
    mcp_http_url: Callable[[], str | None] = lambda: None
    started_at: float = field(default_factory=time.time)
    tasks: TaskService | None = None
    """Adds a chat's parent and tasks to `inspect`."""

    def welcome(self, encoding: str) -> m.Welcome:
        return m.Welcome(protocol=m.PROTOCOL_VERSION, version=VERSION, pid=os.getpid(),
                         encoding=encoding,
                         max_frame=int(self.settings.config.daemon.max_frame))

    def limits(self) -> Limits:
        """A new connection's limits, from the live config."""
        ch = self.settings.config.channels
        return Limits(subscriber_queue=ch.subscriber_queue,
                      subscriber_bytes=int(ch.subscriber_bytes),
                      heartbeat=float(ch.heartbeat),
                      max_frame=int(self.settings.config.daemon.max_frame),
                      hello_timeout=float(self.settings.config.daemon.hello_timeout),
                      idle_timeout=float(self.settings.config.daemon.idle_timeout))

    def list_agents(self) -> m.AgentsResult:
        agents = []
        for spec in self.settings.agents.values():
            ok, why = spec.available()
            agents.append(m.AgentInfo(name=spec.name, command=list(spec.command), available=ok,
                                      source="config" if spec.source == "config" else "builtin",
                                      reason=why, computer=spec.computer,
                                      process="shared" if spec.shared else "per-chat"))
        return m.AgentsResult(agents=agents, default=self.settings.config.daemon.default_agent)

    async def status(self) -> m.StatusResult:
        import psutil

        daemon_rss = int(psutil.Process().memory_info().rss)
        return m.StatusResult(
            pid=os.getpid(), version=VERSION, started_at=self.started_at,
            uptime=time.time() - self.started_at, socket=str(self.paths.socket),
            state_dir=str(self.paths.state_dir), chats=self.pool.chat_count,
            actors=self.pool.counts(), memory_rss=await self.pool.memory_used(),
            daemon_rss=daemon_rss,
            restarts_last_hour=await self.pool.restarts_since(time.time() - 3600),
            websocket=self.websocket_url(), mcp_http=self.mcp_http_url(),
            config=str(self.paths.config))


ROUTES: Routes[Core] = Routes("core")
"""Slow ones are declared in the order the protocol document lists them."""


@ROUTES.handles(m.Prompt)
async def prompt(core: Core, req: m.Prompt, client: str) -> m.PromptAccepted:
    content = list(req.content) or [TextBlock(text=req.text)]
    return await core.pool.prompt(chat_id=req.chat, content=content, agent=req.agent,
                                  by=client)


@ROUTES.handles(m.OpenChat)
async def open_chat(core: Core, req: m.OpenChat, client: str) -> m.ChatInfo:
    if req.workspace is not None or req.project is not None:
        return await core.workspaces.open_chat(req, "")
    return await core.pool.open_chat(
        chat_id=req.chat, agent=req.agent, cwd=req.cwd, policy=req.policy,
        title=req.title, computer=req.computer, create=req.create,
        require_cwd=req.require_cwd, mcp=req.mcp_servers)


@ROUTES.handles(m.Ping)
async def ping(core: Core, req: m.Ping, client: str) -> m.Pong:
    return m.Pong(time=time.time())


@ROUTES.handles(m.ListAgents)
async def list_agents(core: Core, req: m.ListAgents, client: str) -> m.AgentsResult:
    return core.list_agents()


@ROUTES.handles(m.SetPolicy)
async def set_policy(core: Core, req: m.SetPolicy, client: str) -> m.Ok:
    await core.pool.set_policy(req.chat, req.policy)
    return m.Ok()


@ROUTES.handles(m.SetMode, slow=True)
async def set_mode(core: Core, req: m.SetMode, client: str) -> m.Ok:
    await core.pool.set_mode(req.chat, req.mode)
    return m.Ok()


@ROUTES.handles(m.SetConfig, slow=True)
async def set_config(core: Core, req: m.SetConfig, client: str) -> m.Ok:
    await core.pool.set_config(req.chat, req.option, req.value)
    return m.Ok()


@ROUTES.handles(m.Authenticate, slow=True)
async def authenticate(core: Core, req: m.Authenticate, client: str) -> m.Ok:
    await core.pool.authenticate(req.chat, req.method)
    return m.Ok()


@ROUTES.handles(m.CloseChat, slow=True)
async def close_chat(core: Core, req: m.CloseChat, client: str) -> m.Ok:
    await core.pool.close(req.chat, reason=f"closed by {client}")
    if core.tasks is not None:
        core.tasks.closed(req.chat)
    return m.Ok()


@ROUTES.handles(m.Reload, slow=True)
async def reload(core: Core, req: m.Reload, client: str) -> m.ReloadResult:
    return core.reload()


@ROUTES.handles(m.Inspect, slow=True)
async def inspect(core: Core, req: m.Inspect, client: str) -> m.ChatDetail:
    detail = await core.pool.inspect(req.chat)
    return core.tasks.annotate(detail) if core.tasks is not None else detail


@ROUTES.handles(m.ListChats, slow=True)
async def list_chats(core: Core, req: m.ListChats, client: str) -> m.ChatList:
    return m.ChatList(chats=await core.pool.list_chats(req.include_closed, req.cwd))


@ROUTES.handles(m.GetStatus, slow=True)
async def status(core: Core, req: m.GetStatus, client: str) -> m.StatusResult:
    return await core.status()


@ROUTES.handles(m.Permit, slow=True)
async def permit(core: Core, req: m.Permit, client: str) -> m.Ok:
    await core.pool.permit(req.chat, req.request, req.option, by=client)
    return m.Ok()


@ROUTES.handles(m.Cancel, slow=True)
async def cancel(core: Core, req: m.Cancel, client: str) -> m.Ok:
    await core.pool.cancel(req.chat, queued=req.queued, by=client, turn=req.turn)
    return m.Ok()


@ROUTES.handles(m.DescribeAgent, slow=True)
async def describe_agent(core: Core, req: m.DescribeAgent, client: str
                         ) -> m.AgentDescription:
    return await core.pool.describe_agent(req.agent)


@ROUTES.handles(m.Warm, slow=True)
async def warm(core: Core, req: m.Warm, client: str) -> m.ActorDetail:
    actor = await core.pool.warm(req.chat)
    return actor.detail()

"""`ActorRef`: the handle through which the pool reaches a backend actor.

Messages go in (`send`, or `ask` for those that carry a reply); plain data comes out
(`facts`, `snapshot`, `detail`): frozen values copied at the moment of the call, never the
actor's own objects. Nothing outside the actor holds the actor itself, so nothing outside
can read or write its attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from daemon.acp import types as acp
from daemon.actors import mailbox as mb
from daemon.actors.backend.actor import BackendActor
from daemon.actors.lifecycle import ActorFacts, State
from daemon.config.agents import AgentSpec
from daemon.mcp import presence
from protocol.messages import ActorDetail, SharedProcess

T = TypeVar("T")

INITIALIZE_KEYS = ("agentCapabilities", "agentInfo", "authMethods", "protocolVersion")


@dataclass(frozen=True, slots=True)
class ActorSnapshot:
    """What listings need to know about one actor, at one moment."""

    state: State
    pid: int | None
    generation: int
    turns: int
    queued: int
    busy: bool
    """A turn is running."""
    idle: float | None
    """Seconds since the last activity while an agent process runs; None without one."""
    title: str | None
    initialize: dict[str, Any] | None
    """The agent's `initialize` answer (capabilities, info, auth methods, version), once
    the actor has had one."""
    process: SharedProcess | None = None
    """The shared agent process its session is on (shared mode only)."""


class ActorRef:
    """A backend actor, as others may use it."""

    __slots__ = ("_actor", "_wake", "agent", "chat", "key")

    def __init__(self, actor: BackendActor, wake: Callable[[], None] = lambda: None) -> None:
        self._actor = actor
        self._wake = wake
        core = actor.core
        self.chat = core.chat
        self.agent = core.agent
        self.key = core.key

    # ------------------------------------------------------------------ messages

    def send(self, message: mb.ActorMessage) -> None:
        """Deliver into the mailbox (never blocks) and make sure the actor runs to read it;
        a prompt to an actor waiting on an empty mailbox is handled at once
        (`BackendActor.take_now`)."""
        if isinstance(message, mb.PromptJob) and self._actor.take_now(message):
            return
        self._actor.deliver(message)
        self._wake()

    async def ask(self, make: Callable[[mb.Reply[Any]], mb.ActorMessage], *,
                  timeout: float) -> Any:
        """Send the message `make` builds around a reply, and wait for the answer (or the
        actor's exception) for at most `timeout` seconds (`trio.TooSlowError`)."""
        reply: mb.Reply[Any] = mb.Reply()
        self.send(make(reply))
        with trio.fail_after(timeout):
            return await reply.wait()

    def has_mail(self) -> bool:
        """Messages wait in the mailbox (one raced the actor going dormant)."""
        return self._actor.has_mail()

    async def run(self) -> None:
        """Run the actor until it is dormant, closed or shut down (its supervisor's call)."""
        await self._actor.run()

    # ------------------------------------------------------------------ plain data

    @property
    def spec(self) -> AgentSpec:
        """The agent definition the actor's next generation will use."""
        return self._actor.core.spec

    @property
    def state(self) -> State:
        return self._actor.core.state

    @property
    def busy(self) -> bool:
        """A turn is running."""
        return self._actor.core.current is not None

    def facts(self, rss: int | None = None) -> ActorFacts:
        """What the eviction sweep weighs (`rss` measured by the caller, in a thread)."""
        core = self._actor.core
        return ActorFacts(key=core.key, state=core.state, last_activity=core.last_activity,
                          busy=core.current is not None, queued=len(core.queue),
                          pending_permissions=len(core.permissions),
                          live_terminals=core.live_terminals, rss=rss)

    def snapshot(self) -> ActorSnapshot:
        core = self._actor.core
        process = core.process
        info = core.info
        return ActorSnapshot(
            state=core.state, pid=process.pid if process else None,
            generation=core.generation, turns=core.turns, queued=len(core.queue),
            busy=core.current is not None,
            idle=None if process is None else max(0.0,
                                                  trio.current_time() - core.last_activity),
            title=info.get("title"),
            initialize=None if info.get("agentCapabilities") is None else {
                key: info[key] for key in INITIALIZE_KEYS if key in info},
            process=self.shared_process())

    def detail(self, rss: int | None = None) -> ActorDetail:
        """Everything `inspect` shows of the actor."""
        core = self._actor.core
        info = core.info
        process = core.process
        return ActorDetail(
            agent=core.agent, state=core.state.value, reason=core.reason,
            pid=process.pid if process else None, pgid=process.pgid if process else None,
            generation=core.generation, session_id=core.session_id,
            last_activity=core.last_activity_wall, turns=core.turns, queued=len(core.queue),
            current_turn=core.current.turn if core.current else None,
            restarts=len(core.restarts), rss=rss,
            capabilities=info.get("agentCapabilities", {}),
            agent_info=info.get("agentInfo") or {}, auth_methods=info.get("authMethods", []),
            modes=info.get("modes"), config_options=info.get("configOptions") or [],
            models=info.get("models"), commands=info.get("commands") or [],
            usage=core.usage, pending_permissions=core.permissions.ids(),
            terminals=core.terminals.ids() if core.terminals is not None else [],
            process=self.shared_process(),
            mcp=presence.state(core.chat, core.agent) if process is not None else None)

    def prompt_capabilities(self) -> acp.PromptCapabilities | None:
        """What content the agent accepts (None until it has answered `initialize`)."""
        return self._actor.core.prompt_capabilities

    def has_permission(self, request: str) -> bool:
        """The request is open or was answered recently in this actor."""
        return self._actor.core.permissions.knows(request)

    def shared_process(self) -> SharedProcess | None:
        """The shared agent process its session is on (None: a process of its own, or
        none)."""
        view = self._actor.core.shared
        if view is None:
            return None
        share = view.share()
        return SharedProcess(id=share.id, pid=share.pid, sessions=share.sessions)

    def rss(self) -> int | None:
        """RSS of the agent's process tree (blocking; call from a thread). A shared process
        is split evenly among its sessions: summed over the chats (the memory budget, the
        metrics) it counts once."""
        core = self._actor.core
        process = core.agent_process
        if process is None:
            return None
        rss = process.rss()
        view = core.shared
        if view is not None and rss is not None:
            return rss // max(1, view.share().sessions)
        return rss

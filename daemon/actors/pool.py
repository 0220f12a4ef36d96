"""The pool: the registry of chats and the supervisor of their backend actors.

It routes client requests to actors (as mailbox messages, through each actor's `ActorRef`),
assigns turn numbers, keeps the durable prompt queue, and runs eviction (idle TTL, LRU cap,
memory budget; `eviction.Evictor`) over the warm actors, which it keeps apart (`_warm`).
Start-up is `restore.restore`.

Actors are started on demand and go dormant when hibernated with nothing to do (their task
ends, their record stays in memory and in the store), so thousands of hibernated chats cost a
few kilobytes each. A message for a dormant actor starts its task again.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from daemon.actors import mailbox as mb
from daemon.actors import records
from daemon.actors.backend.actor import BackendActor
from daemon.actors.backend.hosts import SharedHosts
from daemon.actors.backend.probe import description_of
from daemon.actors.backend.turns import content_problem, summarize
from daemon.actors.chats import ChatBook, check_chat_id, summary
from daemon.actors.descriptions import Descriptions
from daemon.actors.eviction import Evictor
from daemon.actors.lifecycle import WARM_STATES, State
from daemon.actors.records import ActorRecord, Chat
from daemon.actors.ref import ActorRef
from daemon.actors.restore import restore
from daemon.actors.settings import Settings
from daemon.channels.hub import Hub
from daemon.errors import (
    BadRequest,
    InvalidState,
    NotFound,
    QueueFull,
    ShuttingDown,
    UnknownAgent,
    UnknownChat,
)
from daemon.execution.local import Executor
from daemon.log import Log
from daemon.store.sqlite import Store
from protocol import deltas as d
from protocol import messages as m
from protocol.messages import (
    ActorCounts,
    ChatDetail,
    ChatInfo,
    ChatSummary,
    ContentBlock,
    PromptAccepted,
    TextBlock,
)

__all__ = ["Chat", "ExecutorFactory", "Pool"]


@dataclass(slots=True, eq=False)
class _Child:
    """The pool's record of one supervised actor: its handle and whether its task runs."""

    ref: ActorRef
    running: bool = False
    """The actor's task runs (the pool starts it on demand; it ends when dormant)."""
    finished: trio.Event = field(default_factory=trio.Event)
    """Set when the current activation's task returns."""


ExecutorFactory = Callable[[str | None], Executor]


class Pool:
    def __init__(self, *, hub: Hub, store: Store, settings: Settings,
                 executors: ExecutorFactory, instance: str) -> None:
        self._hub = hub
        self._store = store
        self._settings = settings
        self._executors = executors
        self._instance = instance
        self._log = Log("pool")
        self._book = ChatBook(store=store, hub=hub, settings=settings, executors=executors)
        self._chats = self._book.chats
        self._actors: dict[tuple[str, str], _Child] = {}
        self._warm: dict[tuple[str, str], _Child] = {}
        """The actors in a warm state (starting, ready, busy): all eviction looks at."""
        self._evictor = Evictor(warm=self._warm, settings=settings, log=self._log)
        self._nursery: trio.Nursery | None = None
        self._shutting_down: str | None = None
        self.started_at = time.time()
        self.turn_listeners: list[Callable[[str, str, int, str | None], None]] = []
        """Called (synchronously) after each turn that ran ends: (chat, agent, turn,
        error or None). Subsystems use it, e.g. to publish a diff of the workspace."""
        self._descriptions = Descriptions(settings=settings, executors=executors,
                                          instance=instance)
        self._hosts = SharedHosts(settings=settings, hub=hub, instance=instance)
        """The shared agent processes (agents with `process = "shared"`)."""
        self.unclean_start = False
        """Set before `run` when the previous daemon did not exit cleanly."""

    # ================================================================== lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._hosts.run)
            restored = await restore(
                store=self._store, hub=self._hub, chats=self._chats,
                unclean=self.unclean_start, executors=self._executors,
                make_actor=lambda chat, agent, record, reclaimed: self._make_actor(
                    chat, agent, record, reclaimed=reclaimed).ref,
                actor_for=lambda chat, agent: self._actor_for(chat, agent).ref, log=self._log)
            self._log.info("loaded", chats=restored.chats, reclaimed=restored.reclaimed,
                           interrupted_turns=restored.interrupted,
                           requeued_prompts=restored.requeued, new_epochs=restored.new_epochs)
            # What start-up loaded lives as long as the daemon: move it out of the cyclic
            # collector's reach, or every full collection walks every hibernated record
            # and a warm turn's cost grows with them (1.6x CPU beside 10,000; see
            # docs/PERFORMANCE.md). The price: a restored chat that is later closed leaves
            # its actor's few kilobytes of cycles uncollected until the next start.
            gc.freeze()
            nursery.start_soon(self._evictor.run)
            task_status.started()
            await trio.sleep_forever()

    async def shutdown(self, reason: str = "daemon shutting down") -> None:
        """End every open turn, stop every agent (SIGTERM, then SIGKILL after the grace),
        and wait for the actors to finish."""
        self._shutting_down = reason
        self._evictor.stop()
        running = [child for child in self._actors.values() if child.running]
        for child in running:
            child.ref.send(mb.Shutdown(reason=reason))
        grace = float(self._settings.config.daemon.stop_grace)
        with trio.move_on_after(grace + 5):
            for child in running:
                await child.finished.wait()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _spawn(self, child: _Child) -> None:
        if child.running or self._nursery is None:
            return
        child.running = True
        child.finished = trio.Event()
        self._nursery.start_soon(self._supervise, child)

    async def _supervise(self, child: _Child) -> None:
        ref = child.ref
        try:
            await ref.run()
        except Exception:
            # The actor already ended its turns and logged the traceback. A fresh actor
            # (from the persisted record) serves the chat from the next message on.
            self._log.error("actor crashed; it will be recreated on next use",
                            chat=ref.chat, agent=ref.agent)
            self._forget(child)
            return
        finally:
            child.running = False
            child.finished.set()
        if ref.state is State.CLOSED:
            self._forget(child)
        elif ref.has_mail() and self._shutting_down is None:
            # A message raced the actor going dormant: wake it again.
            self._spawn(child)

    def _forget(self, child: _Child) -> None:
        key = (child.ref.chat, child.ref.agent)
        if self._actors.get(key) is child:
            del self._actors[key]
        if self._warm.get(key) is child:
            del self._warm[key]

    def _on_state(self, key: tuple[str, str], state: State) -> None:
        """Every state change of every actor: O(1), whatever the number of chats."""
        if state not in WARM_STATES:
            self._warm.pop(key, None)
            return
        child = self._actors.get(key)
        if child is None:
            return
        self._warm[key] = child
        self._evictor.on_warm(state)

    def _on_turn_end(self, chat: str, agent: str, turn: int, error: str | None) -> None:
        for listener in self.turn_listeners:
            try:
                listener(chat, agent, turn, error)
            except Exception:
                self._log.exception("turn listener failed", chat=chat)

    # ================================================================== actors

    def _computer_for(self, chat: Chat, agent: str) -> str | None:
        spec = self._settings.agents.get(agent)
        return chat.computer or (spec.computer if spec else None)

    def _make_actor(self, chat: Chat, agent: str, record: ActorRecord | None = None, *,
                    reclaimed: bool = False) -> _Child:
        spec = self._settings.agents.get(agent)
        if spec is None:
            raise UnknownAgent(agent, list(self._settings.agents))
        key = (chat.id, agent)
        actor = BackendActor(
            chat=chat.id, cwd=chat.cwd, spec=spec,
            policy=chat.policy or self._settings.config.permissions.policy,
            mcp_servers=chat.mcp, record=record or ActorRecord(), hub=self._hub,
            store=self._store, executor=self._executors(self._computer_for(chat, agent)),
            settings=self._settings, on_state=lambda state: self._on_state(key, state),
            instance=self._instance,
            on_turn_end=lambda turn, error: self._on_turn_end(chat.id, agent, turn, error),
            reclaimed=reclaimed, hosts=self._hosts, computer=self._computer_for(chat, agent))
        child = _Child(ActorRef(actor, wake=lambda: self._spawn(child)))
        self._actors[key] = child
        return child

    def _actor_for(self, chat: Chat, agent: str) -> _Child:
        child = self._actors.get((chat.id, agent))
        if child is None:
            child = self._make_actor(chat, agent)
        return child

    async def _ask(self, child: _Child, make: Callable[[mb.Reply[Any]], mb.ActorMessage],
                   timeout: float | None = None) -> Any:
        limit = timeout if timeout is not None else float(
            self._settings.config.daemon.request_timeout) * 2 + 10
        return await child.ref.ask(make, timeout=limit)

    def _children_of(self, chat: str) -> list[_Child]:
        return [child for (c, _), child in self._actors.items() if c == chat]

    def actors_of(self, chat: str) -> list[ActorRef]:
        return [child.ref for child in self._children_of(chat)]

    # ================================================================== chats

    def _chat(self, chat_id: str) -> Chat:
        return self._book.get(chat_id)

    def chat_info(self, chat: Chat, created: bool = False) -> ChatInfo:
        return self._book.info(chat, created)

    def _persist_chat(self, chat: Chat) -> None:
        self._book.persist(chat)

    async def open_chat(
        self, *, chat_id: str | None, agent: str | None, cwd: str | None,
        policy: str | None = None, title: str | None = None, workspace: str | None = None,
        computer: str | None = None, mcp: list[dict[str, Any]] | None = None,
        create: bool = True, require_cwd: bool = False,
    ) -> ChatInfo:
        if self._shutting_down:
            raise ShuttingDown("the daemon is shutting down")
        if chat_id is not None:
            check_chat_id(chat_id)
        if agent is not None:
            self._book.check_agent(agent)
        existing = self._book.find(chat_id)
        if existing is not None:
            if require_cwd and cwd is not None and os.path.realpath(cwd) != existing.cwd:
                raise BadRequest(f"chat {existing.id!r} works in {existing.cwd}, not {cwd}")
            changed = False
            if existing.closed:
                existing.closed = False
                changed = True
            if agent is not None and agent != existing.agent:
                existing.agent = agent
                changed = True
            if policy is not None and policy != existing.policy:
                self._apply_policy(existing, policy)
                changed = True
            if title is not None and title != existing.title:
                existing.title = title
                changed = True
            if mcp is not None and mcp != existing.mcp:
                existing.mcp = mcp
                changed = True
            if changed:
                self._persist_chat(existing)
                await self._store.flush()
            return self.chat_info(existing)
        if not create:
            raise UnknownChat(chat_id or "")
        chat = await self._book.create(chat_id=chat_id, agent=agent, cwd=cwd, policy=policy,
                                       title=title, workspace=workspace, computer=computer,
                                       mcp=mcp)
        await self._store.flush()
        self._log.info("chat created", chat=chat.id, agent=chat.agent, cwd=chat.cwd)
        return self.chat_info(chat, created=True)

    def _apply_policy(self, chat: Chat, policy: str) -> None:
        chat.policy = policy
        for child in self._children_of(chat.id):
            child.ref.send(mb.SetPolicy(policy=policy))

    async def prompt(self, *, chat_id: str, content: list[ContentBlock], agent: str | None,
                     by: str) -> PromptAccepted:
        if self._shutting_down:
            raise ShuttingDown("the daemon is shutting down")
        chat = self._chat(chat_id)
        if chat.closed:
            raise InvalidState(f"chat {chat_id!r} is closed")
        if not content or all(isinstance(b, TextBlock) and not b.text.strip() for b in content):
            raise BadRequest("empty prompt")
        if agent is not None and agent != chat.agent:
            self._book.check_agent(agent)
            chat.agent = agent
        ref = self._actor_for(chat, chat.agent).ref
        limit = self._settings.config.daemon.queue_limit
        actor = ref.snapshot()
        if actor.queued >= limit:
            raise QueueFull(f"chat {chat_id!r} already has {actor.queued} prompts waiting "
                            f"(limit {limit}); wait or cancel with `stoker cancel --queued`")
        caps = ref.prompt_capabilities()
        if caps is not None:
            problem = content_problem(content, caps, ref.agent)
            if problem is not None:
                raise BadRequest(problem)
        turn = chat.next_turn
        chat.next_turn += 1
        queued = actor.queued + (1 if actor.busy else 0)
        summary = summarize(content)
        now = time.time()
        records.queue_prompt(self._store, chat.id, turn, ref.agent, content, by, now)
        self._hub.publish(chat.id, turn, d.TurnStarted(agent=ref.agent, prompt=summary,
                                                        queued=queued, by=by))
        self._persist_chat(chat)
        job = mb.PromptJob(turn=turn, content=content, summary=summary, by=by,
                           accepted_at=now)
        ref.send(job)
        await self._store.flush()
        return PromptAccepted(chat=chat.id, turn=turn, queued=queued)

    async def cancel(self, chat_id: str, *, queued: bool, by: str,
                     turn: int | None = None) -> None:
        self._chat(chat_id)
        for child in self._children_of(chat_id):
            if child.running or child.ref.snapshot().queued:
                child.ref.send(mb.Cancel(queued=queued, by=by, turn=turn))

    async def close(self, chat_id: str, reason: str) -> None:
        chat = self._chat(chat_id)
        if chat.closed:
            return
        chat.closed = True
        self._persist_chat(chat)
        # Every actor of the chat takes the close in order after what it already has;
        # a dormant one runs just to record it.
        children = self._children_of(chat_id)
        for child in children:
            child.ref.send(mb.Close(reason=reason))
        grace = float(self._settings.config.daemon.stop_grace)
        with trio.move_on_after(grace + 5):
            for child in children:
                if child.running:
                    await child.finished.wait()
        await self._store.flush()
        self._log.info("chat closed", chat=chat_id, reason=reason)

    async def permit(self, chat_id: str, request: str, option: str | None, by: str) -> None:
        self._chat(chat_id)
        for child in self._children_of(chat_id):
            if child.ref.has_permission(request):
                await self._ask(child, lambda r: mb.Permit(request=request, option=option,
                                                           by=by, reply=r))
                return
        raise NotFound(f"no permission request {request!r} in chat {chat_id!r}")

    async def set_policy(self, chat_id: str, policy: str) -> None:
        chat = self._chat(chat_id)
        self._apply_policy(chat, policy)
        self._persist_chat(chat)
        self._hub.publish(chat_id, 0, d.Notice(level="info",
                                               message=f"permission policy set to {policy}"))
        await self._store.flush()

    def _current_actor(self, chat_id: str) -> _Child:
        chat = self._chat(chat_id)
        if chat.closed:
            raise InvalidState(f"chat {chat_id!r} is closed")
        return self._actor_for(chat, chat.agent)

    async def set_mode(self, chat_id: str, mode: str) -> None:
        actor = self._current_actor(chat_id)
        await self._ask(actor, lambda r: mb.SetMode(mode=mode, reply=r))

    async def set_config(self, chat_id: str, option: str, value: str | bool) -> None:
        actor = self._current_actor(chat_id)
        await self._ask(actor, lambda r: mb.SetConfig(option=option, value=value, reply=r))

    async def authenticate(self, chat_id: str, method: str) -> None:
        actor = self._current_actor(chat_id)
        await self._ask(actor, lambda r: mb.Authenticate(method=method, reply=r))

    async def warm(self, chat_id: str) -> ActorRef:
        """Start the chat's agent (if needed) and wait until it is ready."""
        child = self._current_actor(chat_id)
        await self._ask(child, lambda r: mb.Warm(reply=r))
        return child.ref

    async def describe_agent(self, agent: str) -> m.AgentDescription:
        """The agent's initialize answer: from any actor that ran it, else from a probe
        (start it, ask `initialize`, stop it). Cached per agent until a reload."""
        if agent not in self._settings.agents:
            raise UnknownAgent(agent, list(self._settings.agents))
        for child in self._actors.values():
            initialize = child.ref.snapshot().initialize if child.ref.agent == agent else None
            if initialize is not None:
                return description_of(agent, initialize)
        return await self._descriptions.describe(agent, self._nursery)

    # ================================================================== views

    def chats(self, include_closed: bool = False, cwd: str | None = None) -> Iterable[Chat]:
        return self._book.select(include_closed, cwd)

    def get_chat(self, chat_id: str) -> Chat:
        return self._chat(chat_id)

    async def list_chats(self, include_closed: bool = False, cwd: str | None = None
                         ) -> list[ChatSummary]:
        chats = list(self.chats(include_closed, cwd))
        children = [self._actors.get((c.id, c.agent)) for c in chats]
        refs = [child.ref if child is not None else None for child in children]
        rss = await trio.to_thread.run_sync(
            lambda: [ref.rss() if ref is not None else None for ref in refs])
        return [summary(chat, ref.snapshot() if ref is not None else None, mem)
                for chat, ref, mem in zip(chats, refs, rss, strict=True)]

    async def inspect(self, chat_id: str) -> ChatDetail:
        chat = self._chat(chat_id)
        actors = self.actors_of(chat_id)
        rss = await trio.to_thread.run_sync(lambda: [a.rss() for a in actors])
        return ChatDetail(chat=self.chat_info(chat),
                          actors=[a.detail(m) for a, m in zip(actors, rss, strict=True)])

    def counts(self) -> ActorCounts:
        by_state: dict[str, int] = {}
        for child in self._actors.values():
            state = child.ref.state.value
            by_state[state] = by_state.get(state, 0) + 1
        busy = sum(1 for child in self._warm.values() if child.ref.busy)
        return ActorCounts(total=len(self._actors), warm=len(self._warm), busy=busy,
                           by_state=by_state)

    async def memory_used(self) -> int:
        return sum(size for _, size in await self._evictor.warm_rss())

    async def rss_by_agent(self) -> dict[str, int]:
        """Summed RSS of the warm agents' process trees, per agent (for metrics)."""
        out: dict[str, int] = {}
        for ref, size in await self._evictor.warm_rss():
            out[ref.agent] = out.get(ref.agent, 0) + size
        return out

    async def restarts_since(self, since: float) -> int:
        return await records.restarts_since(self._store, since)

    @property
    def chat_count(self) -> int:
        return self._book.open_count

    # ================================================================== eviction

    @property
    def evictions(self) -> int:
        return self._evictor.evictions

    async def sweep(self) -> list[str]:
        """Evict what should go now (`Evictor.sweep`); returns the evicted keys."""
        return await self._evictor.sweep()

    def request_sweep(self) -> None:
        self._evictor.request()

    # ================================================================== reload

    def apply_settings(self, settings_changed: Callable[[ActorRef], bool]) -> int:
        """After a config reload: restart (by hibernating) warm actors whose definition
        changed; others keep running. Returns how many were recycled."""
        recycled = 0
        self._descriptions.clear()
        for (_chat, agent), child in list(self._actors.items()):
            spec = self._settings.agents.get(agent)
            if spec is None:
                continue
            ref = child.ref
            if settings_changed(ref):
                ref.send(mb.UseSpec(spec=spec))
                if ref.state in WARM_STATES:
                    ref.send(mb.Hibernate(reason="agent definition changed"))
                    recycled += 1
        self.request_sweep()
        return recycled

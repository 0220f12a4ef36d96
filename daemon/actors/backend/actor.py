"""The backend actor: one warm ACP agent process and session for one (chat, agent).

States: hibernated --prompt--> starting -> ready <-> busy; ready --evicted--> hibernated;
any --exit / protocol error / stale--> crashed -> restarting -> starting; crashed --too many
restarts--> failed (a later explicit prompt retries); any --close--> closed. The legal
transitions are the table in `daemon.actors.lifecycle`.

One loop takes every event from the mailbox in order, the pool's messages and the actor's
own reports alike (a generation is ready, needs authentication, has ended; a turn is done; a
restart is due), updates the actor's state, then decides what to start next (`_advance`).
Work runs in tasks (`generation.Generation` for each process life, a turn or the session's
commands inside it) that report back through the same mailbox; only the loop decides.

Every turn ends exactly once (`Core.end_turn`); every exit path of the actor, a bug
included, ends whatever turn is still open.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable
from typing import Any

import trio

from daemon.acp.rpc import JsonRpcConnection
from daemon.actors import mailbox as mb
from daemon.actors import records
from daemon.actors.backend import events as ev
from daemon.actors.backend.agent_services import AgentServices
from daemon.actors.backend.core import Core, StateListener, TurnListener
from daemon.actors.backend.generation import Ending, EndKind, Generation
from daemon.actors.backend.hosts import SharedHosts
from daemon.actors.backend.session import Control, Session
from daemon.actors.backend.turns import Turns
from daemon.actors.lifecycle import (
    GiveUp,
    State,
    recent_restarts,
    restart_decision,
)
from daemon.actors.settings import Settings
from daemon.channels.hub import Hub
from daemon.config.agents import AgentSpec
from daemon.errors import AgentUnavailable, AuthRequired, InvalidState
from daemon.execution.local import Executor
from daemon.store.sqlite import Store

MAILBOX_SIZE = 1024
RECLAIMED = "daemon restarted; the agent's old process was reclaimed"


class BackendActor:
    """Owns one (chat, agent): its agent process, ACP session, prompt queue and turns.
    Reached only through its `ActorRef`."""

    def __init__(self, *, chat: str, cwd: str, spec: AgentSpec, policy: str,
                 mcp_servers: list[dict[str, Any]], record: records.ActorRecord, hub: Hub,
                 store: Store, executor: Executor, settings: Settings,
                 on_state: StateListener, on_turn_end: TurnListener, instance: str,
                 reclaimed: bool = False, hosts: SharedHosts | None = None,
                 computer: str | None = None) -> None:
        core = Core(chat=chat, cwd=cwd, spec=spec, policy=policy, mcp_servers=mcp_servers,
                    record=record, hub=hub, store=store, executor=executor,
                    settings=settings, instance=instance, on_state=on_state,
                    on_turn_end=on_turn_end)
        core.hosts = hosts
        core.computer = computer
        self._core = core
        self._session = Session(core)
        self._turns = Turns(core, self._session)
        self._services = AgentServices(core)
        self._inbox_send, self._inbox = trio.open_memory_channel[ev.Event](MAILBOX_SIZE)
        self._controls: collections.deque[Control] = collections.deque()
        """Commands waiting for a ready session."""
        self._want_warm: list[mb.Warm] = []
        self._hibernate: str | None = None
        self._closing: str | None = None
        self._shutdown: str | None = None
        self._nursery: trio.Nursery | None = None
        self._gen: Generation | None = None
        """The running generation (process life), if any."""
        self._done = False
        self._parked = False
        """The loop waits on an empty mailbox (`take_now` may act for it)."""
        if reclaimed:
            core.set_state(State.HIBERNATED, RECLAIMED)

    # ================================================================== read by the ref

    @property
    def core(self) -> Core:
        return self._core

    def deliver(self, message: mb.ActorMessage) -> None:
        """Into the mailbox. Never blocks; raises `trio.WouldBlock` if the mailbox is full."""
        self._inbox_send.send_nowait(message)

    def has_mail(self) -> bool:
        return self._inbox.statistics().current_buffer_used > 0

    def take_now(self, job: mb.PromptJob) -> bool:
        """Handle a prompt in the sender's task when the loop waits on an empty mailbox:
        exactly what the loop would do with it next (nothing is before it), without the
        loop's trip through the scheduler first, so the agent has the prompt sooner (a
        warm turn's start; issue 22). Only for the case that matters, a warm agent with
        nothing under way: the prompt is taken at once. False: deliver it to the mailbox
        as usual."""
        gen = self._gen
        if (not self._parked or self._done or gen is None or not gen.ready or gen.working
                or self.has_mail()):
            return False
        try:
            self._handle(job)
        except Exception:
            self._core.log.exception("mailbox handler failed", message=type(job).__name__)
        try:
            self._advance()
        except Exception as exc:
            # The loop's own `_advance` failing fails the actor: so does this.
            self._inbox_send.send_nowait(ev.Failed(exc))
        return True

    # ================================================================== the loop

    async def run(self) -> None:
        """One activation: returns when closed, shut down, or dormant (hibernated or failed
        with nothing to do; a new message makes the pool run it again)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await self._loop()
                finally:
                    nursery.cancel_scope.cancel()
        except Exception:
            self._core.log.exception("backend actor failed")
            self._cleanup_turns("internal error in the daemon (see its log)")
            raise
        finally:
            self._nursery = None
            if self._stopping():
                self._cleanup_turns(self._shutdown or f"chat closed: {self._closing}")

    async def _loop(self) -> None:
        while not self._done:
            if self._dormant():
                try:
                    event = self._inbox.receive_nowait()
                except trio.WouldBlock:
                    return
            else:
                self._parked = True
                try:
                    event = await self._inbox.receive()
                finally:
                    self._parked = False
                if isinstance(event, ev.Failed):
                    raise event.error
            try:
                self._handle(event)
            except Exception:
                self._core.log.exception("mailbox handler failed", message=type(event).__name__)
            # Decide once everything already delivered is taken in: a close that arrived
            # with a prompt is seen before an agent is started for the prompt.
            if not self.has_mail():
                self._advance()

    async def _post(self, event: ev.Event) -> None:
        await self._inbox_send.send(event)

    def _stopping(self) -> bool:
        return self._closing is not None or self._shutdown is not None

    def _has_work(self) -> bool:
        return bool(self._core.queue or self._controls or self._want_warm)

    def _dormant(self) -> bool:
        return (self._gen is None and self._core.state in (State.HIBERNATED, State.FAILED)
                and not self._has_work() and not self._stopping())

    def _handle(self, event: ev.Event) -> None:
        core = self._core
        gen = self._gen
        match event:
            case mb.PromptJob():
                if self._stopping():
                    core.end_turn(event, error=self._shutdown or f"chat closed: {self._closing}")
                    return
                self._retry_if_failed()
                core.queue.append(event)
                core.touch()
            case mb.Cancel():
                self._turns.request_cancel(event, gen)
            case mb.Permit():
                core.permissions.permit(event)
            case mb.SetMode() | mb.SetConfig() | mb.Authenticate():
                if self._stopping():
                    event.reply.fail(InvalidState("the chat is closing"))
                elif (gen is not None and gen.ready and gen.rpc is not None
                      and gen.nursery is not None and not isinstance(event, mb.Authenticate)):
                    gen.nursery.start_soon(self._session.run_control, gen.rpc, event)
                else:
                    self._retry_if_failed()
                    self._controls.append(event)
            case mb.Warm():
                if gen is not None and gen.ready and gen.rpc is not None:
                    if event.reply is not None:
                        event.reply.set(None)
                    return
                self._retry_if_failed()
                self._want_warm.append(event)
            case mb.Hibernate():
                # A request is about the process running now: with none (it already
                # stopped), there is nothing to hibernate, and a request kept until the
                # next wake would stop an agent nobody asked to stop.
                if gen is not None and gen.ending is None:
                    self._hibernate = event.reason
            case mb.Close():
                self._closing = event.reason
                if gen is not None and (core.current is not None or not gen.ready):
                    gen.end(Ending(EndKind.CLOSE, event.reason, f"chat closed: {event.reason}"))
            case mb.Shutdown():
                self._shutdown = event.reason
                if gen is not None:
                    gen.end(Ending(EndKind.SHUTDOWN, event.reason, event.reason))
            case mb.SetPolicy():
                core.policy = event.policy
            case mb.UseSpec():
                core.spec = event.spec
            case ev.Ready() if event.gen is gen and event.gen.ending is None:
                event.gen.ready = True
                event.gen.awaiting_auth = False
                core.set_state(State.READY)
                for warm in self._want_warm:
                    if warm.reply is not None:
                        warm.reply.set(None)
                self._want_warm.clear()
            case ev.AuthNeeded() if event.gen is gen and event.gen.ending is None:
                event.gen.awaiting_auth = True
                event.gen.auth_attempting = False
                if event.error:  # the prompts and warm-ups waiting for a session
                    core.end_queued(event.error)
                    self._fail_warm_ups(AuthRequired(event.error))
                if event.first:
                    core.set_state(State.READY, "authentication required")
            case ev.WorkDone() if event.gen is gen:
                event.gen.working = False
                if event.job is not None and core.current is event.job:
                    core.current = None
                    if not self._stopping():
                        core.set_state(State.READY)
            case ev.Ended():
                self._ended(event.gen, event.ending)
            case ev.RestartDue():
                if gen is None and core.state is State.RESTARTING and not self._stopping():
                    self._start_generation()

    def _retry_if_failed(self) -> None:
        """An explicit request to a failed actor tries again with a fresh restart budget."""
        if self._core.state is State.FAILED:
            self._core.restarts.clear()

    # ================================================================== what next

    def _advance(self) -> None:
        core = self._core
        gen = self._gen
        if gen is None:
            if self._stopping():
                self._finish_stopping()
            elif core.state in (State.HIBERNATED, State.FAILED) and self._has_work():
                self._start_generation()
            return
        if gen.ending is not None:
            return
        if gen.awaiting_auth:
            self._advance_auth(gen)
            return
        rpc = gen.rpc
        if not gen.ready or gen.working or rpc is None or self._shutdown is not None:
            return
        if self._closing is not None:
            self._start_work(gen, self._session.close(rpc, gen, Ending(EndKind.CLOSE,
                                                                       self._closing)))
        elif self._controls:
            self._start_work(gen, self._run_controls(rpc))
        elif (job := self._turns.take_next(rpc)) is not None:
            self._start_work(gen, self._turns.run(gen, rpc, job), job)
        elif self._hibernate is not None:
            reason, self._hibernate = self._hibernate, None
            if self._idle_for_eviction():
                self._start_work(gen, self._session.close(rpc, gen, Ending(EndKind.HIBERNATE,
                                                                           reason)))

    def _advance_auth(self, gen: Generation) -> None:
        """The agent wants authentication before a session: it stays up (ready, the reason
        says so) until `stoker auth` runs `authenticate` or a new prompt asks to try again."""
        if gen.auth_attempting:
            return
        if self._stopping() or self._hibernate is not None:
            kind = (EndKind.SHUTDOWN if self._shutdown is not None else EndKind.CLOSE
                    if self._closing is not None else EndKind.HIBERNATE)
            reason = self._shutdown or self._closing or self._hibernate or ""
            self._hibernate = None
            gen.end(Ending(kind, reason))
            return
        auth = next((c for c in self._controls if isinstance(c, mb.Authenticate)), None)
        if auth is not None:
            self._controls.remove(auth)
        if auth is not None or self._core.queue or self._want_warm:
            gen.auth_attempting = True
            gen.attempts_send.send_nowait(auth)

    def _idle_for_eviction(self) -> bool:
        core = self._core
        return (core.current is None and not core.queue and not len(core.permissions)
                and not core.live_terminals and not self._controls)

    def _start_work(self, gen: Generation, work: Awaitable[None],
                    job: mb.PromptJob | None = None) -> None:
        """Run the generation's one piece of sequential work; it reports `ev.WorkDone`."""
        gen.working = True

        async def run() -> None:
            await work
            await self._post(ev.WorkDone(gen, job))

        assert gen.nursery is not None
        gen.nursery.start_soon(run)

    async def _run_controls(self, rpc: JsonRpcConnection) -> None:
        while self._controls:
            await self._session.run_control(rpc, self._controls.popleft())

    # ================================================================== generations

    def _start_generation(self) -> None:
        core = self._core
        core.generation += 1
        core.loading = False
        core.set_state(State.STARTING, f"generation {core.generation}")
        gen = Generation(core, on_request=self._services.serve,
                         on_notification=self._session.on_notification,
                         on_lines=self._session.on_lines,
                         on_chunks=self._session.on_chunks)
        self._gen = gen
        assert self._nursery is not None
        self._nursery.start_soon(self._run_generation, gen)

    async def _run_generation(self, gen: Generation) -> None:
        try:
            ending = await gen.run(lambda gen, rpc: self._session.setup(
                gen, rpc, post=self._post,
                waiting=lambda: bool(self._core.queue or self._want_warm)))
            await self._post(ev.Ended(gen, ending))
        finally:
            await gen.teardown()  # a crashed agent's leftovers, stopped after the report

    def _ended(self, gen: Generation, ending: Ending) -> None:
        """A generation is over (its process stopped): end what it leaves open, then apply
        the restart policy."""
        core = self._core
        self._gen = None
        self._hibernate = None  # requests were about this generation (see mb.Hibernate)
        agent = core.agent
        if ending.kind is EndKind.SPAWN_FAILED:
            core.fail_head_turn(f"agent {agent!r} cannot start: {ending.reason}")
        if not gen.set_up:
            if ending.kind.restarts:
                core.fail_head_turn(f"agent {agent!r} failed to start: {ending.reason}")
            self._fail_requests(f"agent failed to start: {ending.reason}")
        if core.current is not None:
            core.end_turn(core.current, error=ending.turn_error or ending.reason)
            core.current = None
        if ending.kind in (EndKind.CLOSE, EndKind.SHUTDOWN) or self._stopping():
            return
        if ending.kind is EndKind.HIBERNATE:
            core.set_state(State.HIBERNATED, ending.reason)
            return
        if ending.kind is EndKind.SPAWN_FAILED:
            # A missing binary or directory will not fix itself by retrying.
            core.set_state(State.FAILED, ending.reason)
            core.end_queued(f"agent {agent!r} cannot start: {ending.reason}")
            return
        core.set_state(State.CRASHED, ending.reason)
        lc = core.settings.config.lifecycle
        now = trio.current_time()
        decision = restart_decision(
            core.restarts, now=now, max_restarts=lc.restart_max, window=lc.restart_window,
            backoff=lc.restart_backoff, backoff_max=lc.restart_backoff_max)
        if isinstance(decision, GiveUp):
            reason = f"{decision.reason}; last failure: {ending.reason}"
            core.set_state(State.FAILED, reason)
            core.end_queued(f"agent {agent!r} failed: {reason}")
            core.restarts.clear()
            return
        core.restarts.append(now)
        core.restarts = recent_restarts(core.restarts, now=now, window=lc.restart_window)
        core.set_state(State.RESTARTING, f"restarting in {decision.delay:g}s")
        assert self._nursery is not None
        self._nursery.start_soon(self._restart_after, decision.delay)

    async def _restart_after(self, delay: float) -> None:
        await trio.sleep(delay)
        await self._post(ev.RestartDue())

    def _finish_stopping(self) -> None:
        core = self._core
        if self._shutdown is not None:
            core.end_queued(self._shutdown)
            core.set_state(State.HIBERNATED, self._shutdown)
        else:
            core.end_queued(f"chat closed: {self._closing}")
            core.set_state(State.CLOSED, self._closing or "closed")
        self._done = True

    # ================================================================== ending things

    def _cleanup_turns(self, reason: str) -> None:
        core = self._core
        if core.current is not None:
            core.end_turn(core.current, error=reason)
            core.current = None
        core.end_queued(reason)
        self._fail_requests(reason)

    def _fail_requests(self, reason: str) -> None:
        """Answer every waiting command and warm-up with `AgentUnavailable`: no agent will
        serve them (it failed to start, or the actor stops)."""
        for control in self._controls:
            control.reply.fail(AgentUnavailable(reason))
        self._controls.clear()
        self._fail_warm_ups(AgentUnavailable(reason))

    def _fail_warm_ups(self, error: Exception) -> None:
        for warm in self._want_warm:
            if warm.reply is not None:
                warm.reply.fail(error)
        self._want_warm.clear()

"""One generation: one life of an actor's agent process.

A generation spawns the process, connects JSON-RPC to its stdio, drains its stderr, watches
for its exit, sets up the session (through the actor's `setup`), and then holds the process
until something ends it. Whatever ends it records why (`Ending`; the first reason wins) and
cancels its nursery; its `finally` stops the process tree (after a crash whose leader has
exited, the actor reports the crash first and then calls `teardown`). The actor decides what comes
next from the `Ending` (restart with backoff, hibernate, fail, close).

An agent with `process = "shared"` is not spawned: the generation attaches to a shared
process (`hosts.SharedHosts`) and speaks through its session's view of the connection
(`shared.SessionView`); the process ending under it ends the generation as a crash, and the
generation's end detaches it (the process stays for the other chats).
"""

from __future__ import annotations

import collections
import enum
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from daemon.acp.rpc import ConnectionLost, JsonRpcConnection, RpcError
from daemon.actors.backend.core import Core
from daemon.actors.backend.hosts import SharedHosts
from daemon.actors.backend.probe import agent_env
from daemon.actors.backend.stderr import StderrLimiter, drain_stderr, serve_until_exit
from daemon.actors.backend.view import SessionView
from daemon.errors import StokerError
from daemon.execution.local import AgentProcess, SpawnError
from daemon.execution.terminals import TerminalManager
from protocol import deltas as d

STDERR_TAIL = 20
WATCHER_WAIT = 2.0
"""How long a broken connection waits for the process watcher's exit status, which says
more than "connection lost"."""


class EndKind(enum.Enum):
    """Why a generation ended, as far as what happens next is concerned."""

    CRASH = "crash"
    STALE = "stale"
    START_FAILED = "start_failed"
    SPAWN_FAILED = "spawn_failed"
    """The process could not be started at all: retrying will not fix it."""
    HIBERNATE = "hibernate"
    CLOSE = "close"
    SHUTDOWN = "shutdown"

    @property
    def restarts(self) -> bool:
        """Ends the restart policy answers (a failure that trying again may fix)."""
        return self in (EndKind.CRASH, EndKind.STALE, EndKind.START_FAILED)


@dataclass(frozen=True, slots=True)
class Ending:
    kind: EndKind
    reason: str
    turn_error: str = ""
    """What the running turn (if any) ends with; `reason` when empty."""


RequestHandler = Callable[[str, msgspec.Raw | None], Awaitable[Any]]
NotificationHandler = Callable[[str, msgspec.Raw | None], None]
Setup = Callable[["Generation", JsonRpcConnection], Awaitable[None]]


class Generation:
    """One process life. The actor reads its plain attributes; only its own tasks and
    `end` change them."""

    def __init__(self, core: Core, *, on_request: RequestHandler,
                 on_notification: NotificationHandler,
                 on_lines: Callable[[list[bytes], int], int],
                 on_chunks: Callable[[list[d.DeltaBody]], None]) -> None:
        self._core = core
        self._on_request = on_request
        self._on_notification = on_notification
        self._on_lines = on_lines
        self._on_chunks = on_chunks
        self.number = core.generation
        self.log = core.log.bind(gen=core.generation)
        self.ending: Ending | None = None
        self.process: AgentProcess | None = None
        self.rpc: JsonRpcConnection | None = None
        self.terminals: TerminalManager | None = None
        self.view: SessionView | None = None
        """The chat's view of its shared process (shared mode only)."""
        self.nursery: trio.Nursery | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._leftover: AgentProcess | None = None
        """A crashed agent's process, whose group `teardown` stops after the crash is
        reported."""
        self.set_up = False
        """The session handshake succeeded (set by the setup task, before the actor's loop
        learns of it and makes the generation `ready`)."""
        # The actor's bookkeeping of this generation (changed only by the actor's loop).
        self.ready = False
        """The session is set up; turns and commands may run."""
        self.working = False
        """A turn, the queued commands, or the closing of the session is running: the one
        sequential piece of work a generation does at a time."""
        self.awaiting_auth = False
        """Set up stopped at "authentication required"; attempts come through `attempts`."""
        self.auth_attempting = False
        send, receive = trio.open_memory_channel[Any](16)
        self.attempts_send: trio.MemorySendChannel[Any] = send
        self.attempts: trio.MemoryReceiveChannel[Any] = receive

    def end(self, ending: Ending) -> None:
        """Record why this generation ends (the first reason wins) and cancel it."""
        if self.ending is None:
            self.ending = ending
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def kill(self) -> None:
        if self.view is not None:
            # A shared process: killed only when this chat found it unresponsive, which
            # ends every chat on it.
            self.view.kill_process(self.ending.reason if self.ending else "killed")
        elif self.process is not None:
            self.process.kill()

    async def run(self, setup: Setup) -> Ending:
        """Live until ended; the process is stopped when this returns."""
        core = self._core
        marker = f"{core.instance}:{core.chat}:{core.agent}:{secrets.token_hex(4)}"
        env = agent_env(core.spec)
        if core.hosts is not None and core.spec.shared:
            return await self._run_shared(core.hosts, setup, env, marker)
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                try:
                    proc = await core.executor.spawn(list(core.spec.command), env=env,
                                                     cwd=core.cwd, actor=marker)
                except SpawnError as exc:
                    # Transient (e.g. its computer is unreachable): retried under the
                    # restart policy. Otherwise a missing binary or directory.
                    kind = EndKind.START_FAILED if exc.transient else EndKind.SPAWN_FAILED
                    self.ending = Ending(kind, str(exc), str(exc))
                    return self.ending
                self.process = core.agent_process = proc
                core.persist()
                self.log.info("agent started", pid=proc.identity.pid,
                              command=" ".join(core.spec.command))
                rpc = JsonRpcConnection(
                    proc.stdin, proc.stdout, on_request=self._on_request,
                    on_notification=self._on_notification, on_traffic=core.touch,
                    on_lines=self._on_lines, throttle=core.hub.wait_for_room,
                    max_line=int(core.settings.config.daemon.max_line),
                    log=self.log, name=f"agent {core.agent}")
                self.rpc = rpc
                self._open_terminals(nursery, env, marker)
                stderr_done = trio.Event()
                nursery.start_soon(self._drain_stderr, proc.stderr, stderr_done)
                nursery.start_soon(self._watch, proc, rpc, stderr_done)
                await self._set_up_and_hold(setup, rpc)
        finally:
            with trio.CancelScope(shield=True):
                await self._finish()
        return self.ending or Ending(EndKind.CRASH, "generation ended unexpectedly")

    def _open_terminals(self, nursery: trio.Nursery, env: dict[str, str], marker: str) -> None:
        """The terminals this generation serves the agent (`terminal/*`), in its nursery."""
        core = self._core
        config = core.settings.config.terminals
        self.terminals = core.terminals = TerminalManager(
            executor=core.executor, root=core.cwd, env=env, publish=core.publish_current,
            on_activity=core.touch, default_limit=int(config.output_limit),
            max_count=config.max_per_chat, actor=marker, log=self.log)
        self.terminals.attach(nursery)

    async def _set_up_and_hold(self, setup: Setup, rpc: JsonRpcConnection) -> None:
        """Set the session up (a refusal or no answer in time ends the generation as a
        failed start), then hold it until whatever ends the generation cancels it."""
        try:
            await setup(self, rpc)
        except (RpcError, trio.TooSlowError, StokerError) as exc:
            reason = _describe_start_error(exc)
            self.end(Ending(EndKind.START_FAILED, reason, reason))
        except ConnectionLost:
            await self.await_watcher()
        await _until_cancelled()

    async def _run_shared(self, hosts: SharedHosts, setup: Setup, env: dict[str, str],
                          marker: str) -> Ending:
        """`run` for a shared agent: attach to a shared process instead of spawning one;
        the rest (terminals, session setup, holding until ended) as `run`."""
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                try:
                    rpc = await self._attach(hosts)
                except SpawnError as exc:
                    kind = EndKind.START_FAILED if exc.transient else EndKind.SPAWN_FAILED
                    self.ending = Ending(kind, str(exc), str(exc))
                    return self.ending
                self._open_terminals(nursery, env, marker)
                await self._set_up_and_hold(setup, rpc)
        finally:
            with trio.CancelScope(shield=True):
                await self._finish()
        return self.ending or Ending(EndKind.CRASH, "generation ended unexpectedly")

    async def _attach(self, hosts: SharedHosts) -> JsonRpcConnection:
        """A session's view of a shared process (started, `initialize` answered)."""
        core = self._core
        view = await hosts.attach(
            core.spec, executor=core.executor, computer=core.computer, cwd=core.cwd,
            chat=core.chat, on_request=self._on_request, on_notification=self._on_notification,
            on_chunks=self._on_chunks,
            on_lost=self._lost, touch=core.touch,
            engaged=lambda: bool(len(core.permissions) or (
                core.current is not None and core.current.open_tools)))
        self.view = core.shared = view
        core.agent_process = view.host.process
        core.persist()
        share = view.share()
        self.log.info("attached to a shared agent process", process=share.id, pid=share.pid,
                      sessions=share.sessions)
        self.rpc = view
        return view

    def _lost(self, reason: str, turn_error: str) -> None:
        """The shared process ended under this generation."""
        self.end(Ending(EndKind.CRASH, reason, turn_error))

    async def _finish(self) -> None:
        terminals, self.terminals = self.terminals, None
        self._core.terminals = None
        if terminals is not None:
            await terminals.close_all()
        view, self.view = self.view, None
        if view is not None:
            # A session stuck in a turn (or that failed) is closed on the agent's side:
            # the chat's next generation resumes it in a clean state.
            ending = self.ending
            view.detach("generation ended", close_session=ending is not None and (
                ending.kind in (EndKind.STALE, EndKind.CRASH, EndKind.START_FAILED)))
            self._core.shared = None
            self._core.agent_process = None
        if self.rpc is not None:
            self.rpc.close("generation ended")
        self.rpc = None
        self.nursery = None
        # Every permission still waiting belonged to this generation's agent.
        self._core.permissions.cancel_all(by="agent stopped")
        proc, self.process = self.process, None
        self._core.agent_process = None
        if (proc is not None and proc.returncode is not None and self.ending is not None
                and self.ending.kind is EndKind.CRASH):
            # The leader exited and its output was read: the crash is reported now, and
            # what it left in its process group is stopped after (`teardown`), so a child
            # that ignores SIGTERM does not hold up the turn's end by the stop grace.
            self._leftover = proc
        elif proc is not None:
            await self._stop(proc)
        self._core.persist()

    async def teardown(self) -> None:
        """Stop what a crashed agent left behind (see `_finish`); nothing otherwise. Shielded:
        an actor that is stopping still waits for it (at most the stop grace + 5 s)."""
        proc, self._leftover = self._leftover, None
        if proc is not None:
            with trio.CancelScope(shield=True):
                await self._stop(proc)

    async def _stop(self, proc: AgentProcess) -> None:
        grace = float(self._core.settings.config.daemon.stop_grace)
        with trio.move_on_after(grace + 5):
            status = await proc.stop(grace)
            self.log.info("agent stopped", status=status.describe())

    async def await_watcher(self) -> None:
        """The connection broke: give the process watcher a moment to report the exit
        status, then end as a crash. Never returns (the generation is cancelled)."""
        with trio.move_on_after(WATCHER_WAIT):
            await trio.sleep_forever()
        self.end(Ending(EndKind.CRASH, "lost the connection to the agent"))
        self.kill()
        await trio.sleep_forever()

    async def _watch(self, proc: AgentProcess, rpc: JsonRpcConnection,
                     stderr_done: trio.Event) -> None:
        """Reads the agent until its output ends, then reports how the process ended."""
        reason, turn_error = await serve_until_exit(proc, rpc, stderr_done, self.stderr_tail)
        self.end(Ending(EndKind.CRASH, reason, turn_error))

    async def _drain_stderr(self, stream: trio.abc.ReceiveStream, done: trio.Event) -> None:
        """Agent stderr goes to our log, at a bounded rate (`daemon.stderr_log_rate`), and
        its last lines to `stderr_tail`. Draining it concurrently matters: a chatty agent
        blocked on a full stderr pipe looks hung. `done` is set at its end."""
        config = self._core.settings.config.daemon
        limiter = StderrLimiter(rate=float(config.stderr_log_rate),
                                burst=config.stderr_log_burst)
        try:
            await drain_stderr(stream, self.log, self.stderr_tail, limiter)
        finally:
            done.set()


async def _until_cancelled() -> None:
    """Hold the process until whatever ends the generation cancels its nursery."""
    await trio.sleep_forever()


def _describe_start_error(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return ("the agent did not answer initialize/session setup in time ([daemon] "
                "request_timeout; is it an ACP agent on stdio?)")
    if isinstance(exc, RpcError):
        return f"the agent refused the session setup: {exc.message} ({exc.code})"
    if isinstance(exc, StokerError):
        return exc.message
    return str(exc)

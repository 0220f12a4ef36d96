"""The backend actor: one warm ACP agent process and session for one (chat, agent).

Lifecycle (see docs/ARCHITECTURE.md):

    hibernated --prompt--> starting -> ready <-> busy
    ready --evicted--> hibernated        (process stopped; session id, queue, record kept)
    any --process exit / protocol error / stale--> crashed -> restarting -> starting
    crashed --too many restarts--> failed  (a later explicit prompt retries)
    any --close--> closed

Each *generation* (one life of the agent process) runs in its own nursery: the JSON-RPC
reader, the stderr drain, the process watcher, terminals, and the running turn. Whatever ends
a generation records why (`_Ending`) and cancels that nursery; the generation's `finally`
stops the process tree. The lifecycle loop around it decides what comes next (restart with
backoff, hibernate, fail, close) using the pure functions in `policy.py`.

Every turn ends exactly once: `_end_turn` is the only place a `turn_ended` is published and it
is idempotent per job; every exit path of the actor (including a bug) runs through a
`finally` that ends whatever turn is still open.
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from daemon.acp import types as acp
from daemon.acp.rpc import (
    AUTH_REQUIRED,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    RESOURCE_NOT_FOUND,
    ConnectionLost,
    JsonRpcConnection,
    LineTooLong,
    RpcError,
)
from daemon.acp.updates import decode_chunk_line, decode_session_update, usage_body
from daemon.actors import mailbox as mb
from daemon.actors.lifecycle import (
    ActorFacts,
    GiveUp,
    Liveness,
    State,
    liveness,
    pick_option,
    recent_restarts,
    restart_decision,
)
from daemon.channels.hub import Hub
from daemon.config.agents import AgentSpec
from daemon.config.file import Config
from daemon.errors import (
    AgentRequestFailed,
    AgentUnavailable,
    AlreadyAnswered,
    AuthRequired,
    BadRequest,
    InvalidState,
    NotFound,
    StokerError,
    Unsupported,
)
from daemon.execution.fs import AccessDenied, FileProblem
from daemon.execution.local import AgentProcess, Executor, ExitStatus, ProcessIdentity, SpawnError
from daemon.execution.terminals import TerminalLimit, TerminalManager, UnknownTerminal
from daemon.log import Log
from daemon.store.sqlite import Store
from daemon.version import VERSION
from protocol import deltas as d
from protocol.messages import (
    ActorDetail,
    AudioBlock,
    ContentBlock,
    ImageBlock,
    ResourceBlock,
    UsageTotals,
)

CLIENT_CAPABILITIES = {
    "fs": {"readTextFile": True, "writeTextFile": True},
    "terminal": True,
}
INITIALIZE_PARAMS: dict[str, Any] = {
    "protocolVersion": acp.PROTOCOL_VERSION,
    "clientCapabilities": CLIENT_CAPABILITIES,
    "clientInfo": {"name": "stoker", "title": "Stoker", "version": VERSION},
}
"""What we tell an agent at `initialize`, the same for a generation and a probe."""
STDERR_TAIL = 20
STDERR_EOF_WAIT = 0.5
"""How long a crashed agent's exit report waits for the end of its stderr."""
_msgpack = msgspec.msgpack.Encoder()


class Settings:
    """The live config, shared read-only by the pool and its actors. A reload swaps
    `config`; actors read the section they need at the moment they need it."""

    def __init__(self, config: Config, agents: Mapping[str, AgentSpec]) -> None:
        self.config = config
        self.agents = dict(agents)


@dataclass(slots=True)
class _Ending:
    """Why a generation ended."""

    kind: str
    """crash | stale | start_failed | spawn_failed | hibernate | close | shutdown"""
    reason: str
    turn_error: str = ""


@dataclass(slots=True)
class _Pending:
    request: str
    job: mb.PromptJob | None
    options: list[tuple[str, str]]
    event: trio.Event
    outcome: str = ""
    option: str | None = None
    by: str = ""


class ActorRecord(msgspec.Struct, kw_only=True):
    """What the store keeps of an actor between lives."""

    state: str = State.HIBERNATED.value
    reason: str = ""
    session_id: str | None = None
    generation: int = 0
    turns: int = 0
    info: dict[str, Any] = {}
    usage: UsageTotals = msgspec.field(default_factory=UsageTotals)
    last_activity: float | None = None


def summarize(content: list[ContentBlock]) -> str:
    """A prompt as one line of text, for deltas and listings."""
    parts: list[str] = []
    for block in content:
        if isinstance(block, ImageBlock):
            parts.append(f"[image {block.mime_type}]")
        elif isinstance(block, AudioBlock):
            parts.append(f"[audio {block.mime_type}]")
        elif isinstance(block, ResourceBlock):
            parts.append(f"[file {block.resource.get('uri', '?')}]")
        elif hasattr(block, "uri"):
            parts.append(f"[link {block.uri}]")
        else:
            parts.append(block.text)
    return " ".join(parts)


def content_problem(content: list[ContentBlock], caps: acp.PromptCapabilities,
                    agent: str) -> str | None:
    """Why `content` cannot be sent to an agent with these prompt capabilities."""
    for block in content:
        if isinstance(block, ImageBlock) and not caps.image:
            return f"agent {agent!r} does not accept images (promptCapabilities.image is false)"
        if isinstance(block, AudioBlock) and not caps.audio:
            return f"agent {agent!r} does not accept audio (promptCapabilities.audio is false)"
        if isinstance(block, ResourceBlock) and not caps.embedded_context:
            return (f"agent {agent!r} does not accept embedded files "
                    "(promptCapabilities.embeddedContext is false); send a link instead")
    return None


class BackendActor:
    """Owns one (chat, agent): its agent process, ACP session, prompt queue and turns."""

    def __init__(
        self,
        *,
        chat: str,
        cwd: str,
        spec: AgentSpec,
        policy: str,
        mcp_servers: list[dict[str, Any]],
        record: ActorRecord,
        hub: Hub,
        store: Store,
        executor: Executor,
        settings: Settings,
        on_state: Callable[[BackendActor], None],
        instance: str,
        on_turn_end: Callable[[BackendActor, int, str | None], None] | None = None,
    ) -> None:
        self.chat = chat
        self.cwd = cwd
        self.spec = spec
        self.agent = spec.name
        self.key = f"{chat}\x00{spec.name}"
        self._policy = policy
        self._mcp = mcp_servers
        self._hub = hub
        self._store = store
        self._executor = executor
        self._settings = settings
        self._on_state = on_state
        self._on_turn_end = on_turn_end
        self._instance = instance
        self._log = Log("backend", chat=chat, agent=spec.name)

        self.state = State(record.state) if record.state in State.__members__.values() \
            else State.HIBERNATED
        if self.state in (State.STARTING, State.READY, State.BUSY, State.CRASHED,
                          State.RESTARTING):
            self.state = State.HIBERNATED
        self.reason = record.reason
        self.session_id = record.session_id
        self.generation = record.generation
        self.turns = record.turns
        self.info: dict[str, Any] = dict(record.info)
        self.usage = record.usage
        self.last_activity_wall = record.last_activity

        send, receive = trio.open_memory_channel[mb.ActorMessage](1024)
        self._inbox_send = send
        self._inbox = receive
        self.queue: collections.deque[mb.PromptJob] = collections.deque()
        self.current: mb.PromptJob | None = None
        self._controls: collections.deque[Any] = collections.deque()
        self._permissions: dict[str, _Pending] = {}
        self._answered: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._restarts: list[float] = []
        self._changed = trio.Event()
        self._want_warm: list[mb.Warm] = []
        self._hibernate: str | None = None
        self._closing: str | None = None
        self._shutdown: str | None = None

        self._rpc: JsonRpcConnection | None = None
        self._proc: AgentProcess | None = None
        self._gen_nursery: trio.Nursery | None = None
        self._gen_end: _Ending | None = None
        self._gen_ready = False
        self._terminals: TerminalManager | None = None
        self._loading = False
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self.last_activity = trio.current_time()
        self.running = False
        """True while the actor's task runs (the pool starts it on demand)."""
        self.finished = trio.Event()
        """Set when the current activation's task returns."""
        self.sent_lines: list[bytes] | None = None
        """Tests set this to a list to capture every line sent to the agent."""

    # ================================================================== outside interface

    def send(self, message: mb.ActorMessage) -> None:
        """Deliver a message to the mailbox. Never blocks; raises if the mailbox is full."""
        self._inbox_send.send_nowait(message)

    @property
    def queued(self) -> int:
        return len(self.queue)

    @property
    def prompt_capabilities(self) -> acp.PromptCapabilities | None:
        caps = self.info.get("agentCapabilities")
        if caps is None:
            return None
        return msgspec.convert(caps, acp.AgentCapabilities).prompt_capabilities

    def facts(self, rss: int | None = None) -> ActorFacts:
        return ActorFacts(
            key=self.key,
            state=self.state,
            last_activity=self.last_activity,
            busy=self.current is not None,
            queued=len(self.queue),
            pending_permissions=len(self._permissions),
            live_terminals=self._terminals.live if self._terminals else 0,
            rss=rss,
        )

    def rss(self) -> int | None:
        """RSS of the agent's process tree (blocking; call from a thread)."""
        proc = self._proc
        return proc.rss() if proc is not None else None

    @property
    def pid(self) -> int | None:
        return self._proc.identity.pid if self._proc is not None else None

    def idle_seconds(self) -> float | None:
        if self._proc is None:
            return None
        return max(0.0, trio.current_time() - self.last_activity)

    def detail(self, rss: int | None = None) -> ActorDetail:
        proc = self._proc
        return ActorDetail(
            agent=self.agent,
            state=self.state.value,
            reason=self.reason,
            pid=proc.identity.pid if proc else None,
            pgid=proc.identity.pgid if proc else None,
            generation=self.generation,
            session_id=self.session_id,
            last_activity=self.last_activity_wall,
            turns=self.turns,
            queued=len(self.queue),
            current_turn=self.current.turn if self.current else None,
            restarts=len(self._restarts),
            rss=rss,
            capabilities=self.info.get("agentCapabilities", {}),
            agent_info=self.info.get("agentInfo") or {},
            auth_methods=self.info.get("authMethods", []),
            modes=self.info.get("modes"),
            config_options=self.info.get("configOptions") or [],
            models=self.info.get("models"),
            commands=self.info.get("commands") or [],
            usage=self.usage,
            pending_permissions=list(self._permissions),
            terminals=self._terminals.ids() if self._terminals else [],
        )

    def set_policy(self, policy: str) -> None:
        self._policy = policy

    def update_spec(self, spec: AgentSpec) -> None:
        """A reload changed this agent's definition: the next generation uses it."""
        self.spec = spec

    def has_mail(self) -> bool:
        return self._inbox.statistics().current_buffer_used > 0

    def mark_reclaimed(self) -> None:
        """Startup found (and killed) this actor's agent from a previous daemon life."""
        self._set_state(State.HIBERNATED,
                        "daemon restarted; the agent's old process was reclaimed")

    def mark_closed(self, reason: str) -> None:
        """Close a dormant actor (no task, no process, nothing queued)."""
        self._closing = reason
        self._set_state(State.CLOSED, reason)

    # ================================================================== small helpers

    def _publish(self, body: d.DeltaBody, turn: int = 0) -> int:
        return self._hub.publish(self.chat, turn, body)

    def _touch(self) -> None:
        self.last_activity = trio.current_time()

    def _wake(self) -> None:
        self._changed.set()

    def _set_state(self, state: State, reason: str = "") -> None:
        self.state = state
        self.reason = reason
        now = trio.current_time()
        self.last_activity = now
        self._publish(d.Status(agent=self.agent, state=state.value, reason=reason,
                               pid=self.pid, generation=self.generation))
        self._persist()
        self._store.execute(
            "INSERT INTO transitions(chat, agent, ts, state, reason, generation) "
            "VALUES (?,?,?,?,?,?)",
            (self.chat, self.agent, _wall(), state.value, reason, self.generation),
        )
        level = self._log.warning if state in (State.CRASHED, State.FAILED) else self._log.info
        level("state", state=state.value, reason=reason, gen=self.generation, pid=self.pid)
        self._on_state(self)

    def _persist(self) -> None:
        proc = self._proc
        ident: ProcessIdentity | None = proc.identity if proc else None
        self.last_activity_wall = _wall()
        self._store.execute(
            "INSERT INTO actors(chat, agent, state, reason, session_id, generation, pid, pgid,"
            " pid_start, computer, marker, info, usage, turns, last_activity, updated)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(chat, agent) DO UPDATE SET state=excluded.state,"
            " reason=excluded.reason, session_id=excluded.session_id,"
            " generation=excluded.generation, pid=excluded.pid, pgid=excluded.pgid,"
            " pid_start=excluded.pid_start, computer=excluded.computer,"
            " marker=excluded.marker, info=excluded.info,"
            " usage=excluded.usage, turns=excluded.turns,"
            " last_activity=excluded.last_activity, updated=excluded.updated",
            (
                self.chat, self.agent, self.state.value, self.reason, self.session_id,
                self.generation,
                ident.pid if ident else None, ident.pgid if ident else None,
                ident.start_time if ident else None,
                ident.computer if ident else None,
                ident.actor if ident else None,
                _msgpack.encode(self.info), _msgpack.encode(self.usage), self.turns,
                self.last_activity_wall, _wall(),
            ),
        )

    def _end_turn(self, job: mb.PromptJob, *, stop_reason: d.TurnStop | None = None,
                  error: str | None = None) -> None:
        """Publish the one `turn_ended` of `job`. Idempotent."""
        if job.ended:
            return
        job.ended = True
        if error is not None:
            stop_reason = None
        elif stop_reason is None:
            stop_reason = "end_turn"
        self._resolve_turn_permissions(job, by="turn ended")
        self._publish(d.TurnEnded(stop_reason=stop_reason, error=error), turn=job.turn)
        self._store.execute("DELETE FROM prompts WHERE chat=? AND turn=?", (self.chat, job.turn))
        if job.started:
            self.turns += 1
        self._touch()
        self._log.info("turn ended", gen=self.generation, turn=job.turn,
                       stop_reason=stop_reason, error=error)
        if job.started and self._on_turn_end is not None:
            self._on_turn_end(self, job.turn, error)

    def _end_queued(self, error: str | None, *, cancelled: bool = False) -> None:
        while self.queue:
            job = self.queue.popleft()
            if cancelled:
                self._end_turn(job, stop_reason="cancelled")
            else:
                self._end_turn(job, error=error)

    def _end_generation(self, ending: _Ending) -> None:
        """Record why this generation ends (first reason wins) and cancel it."""
        if self._gen_end is None:
            self._gen_end = ending
        nursery = self._gen_nursery
        if nursery is not None:
            nursery.cancel_scope.cancel()

    # ================================================================== main loop

    async def run(self) -> None:
        """One activation: returns when closed, shut down, or dormant (hibernated or failed
        with nothing to do; a new message makes the pool run it again)."""
        self.running = True
        try:
            self._drain_inbox()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._mailbox_loop)
                try:
                    await self._lifecycle()
                finally:
                    nursery.cancel_scope.cancel()
        except Exception:
            self._log.exception("backend actor failed")
            self._cleanup_turns("internal error in the daemon (see its log)")
            raise
        finally:
            if self._stopping():
                self._cleanup_turns(self._shutdown or f"chat closed: {self._closing}")
            self.running = False
            self.finished.set()

    def _drain_inbox(self) -> None:
        while True:
            try:
                message = self._inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            try:
                self._handle(message)
            except Exception:
                self._log.exception("mailbox handler failed", message=type(message).__name__)

    def _cleanup_turns(self, reason: str) -> None:
        if self.current is not None:
            self._end_turn(self.current, error=reason)
            self.current = None
        self._end_queued(reason)
        self._fail_requests(reason)

    def _fail_requests(self, reason: str) -> None:
        """Answer every waiting control (set_mode, authenticate...) and warm-up with
        `AgentUnavailable`: no agent will serve them (it failed to start, or the actor
        stops)."""
        for control in self._controls:
            control.reply.fail(AgentUnavailable(reason))
        self._controls.clear()
        for warm in self._want_warm:
            if warm.reply is not None:
                warm.reply.fail(AgentUnavailable(reason))
        self._want_warm.clear()

    def _has_work(self) -> bool:
        return bool(self.queue or self._controls or self._want_warm)

    async def _wait_for_work(self) -> None:
        while not self._has_work() and not self._stopping():
            self._changed = trio.Event()
            if self._has_work() or self._stopping():
                return
            await self._changed.wait()

    def _stopping(self) -> bool:
        return self._closing is not None or self._shutdown is not None

    async def _lifecycle(self) -> None:
        while True:
            if self.state in (State.HIBERNATED, State.FAILED):
                self._drain_inbox()
                if not self._has_work() and not self._stopping():
                    return  # dormant
                await self._wait_for_work()
            if self._stopping():
                break
            ending = await self._generation()
            if ending.kind in ("close", "shutdown") or self._stopping():
                break
            if ending.kind == "hibernate":
                self._set_state(State.HIBERNATED, ending.reason)
                continue
            if ending.kind == "spawn_failed":
                # A missing binary or directory will not fix itself by retrying.
                self._set_state(State.FAILED, ending.reason)
                self._end_queued(f"agent {self.agent!r} cannot start: {ending.reason}")
                continue
            # crash, stale, start_failed
            self._set_state(State.CRASHED, ending.reason)
            lc = self._settings.config.lifecycle
            now = trio.current_time()
            decision = restart_decision(
                self._restarts, now=now, max_restarts=lc.restart_max,
                window=lc.restart_window, backoff=lc.restart_backoff,
                backoff_max=lc.restart_backoff_max)
            if isinstance(decision, GiveUp):
                reason = f"{decision.reason}; last failure: {ending.reason}"
                self._set_state(State.FAILED, reason)
                self._end_queued(f"agent {self.agent!r} failed: {reason}")
                self._restarts.clear()
                continue
            self._restarts.append(now)
            self._restarts = recent_restarts(self._restarts, now=now, window=lc.restart_window)
            self._set_state(State.RESTARTING, f"restarting in {decision.delay:g}s")
            with trio.move_on_after(decision.delay):
                while not self._stopping():
                    self._changed = trio.Event()
                    await self._changed.wait()
            if self._stopping():
                break
        # Closing or shutting down.
        if self._shutdown is not None:
            self._end_queued(self._shutdown)
            self._set_state(State.HIBERNATED, self._shutdown)
        else:
            self._end_queued(f"chat closed: {self._closing}")
            self._set_state(State.CLOSED, self._closing or "closed")

    # ================================================================== one generation

    async def _generation(self) -> _Ending:
        self.generation += 1
        self._gen_end = None
        self._gen_ready = False
        self._loading = False
        self._stderr_tail.clear()
        self._set_state(State.STARTING, f"generation {self.generation}")
        log = self._log.bind(gen=self.generation)
        marker = f"{self._instance}:{self.chat}:{self.agent}:{secrets.token_hex(4)}"
        proc: AgentProcess | None = None
        env = agent_env(self.spec)
        try:
            async with trio.open_nursery() as gen:
                self._gen_nursery = gen
                try:
                    proc = await self._executor.spawn(
                        list(self.spec.command), env=env, cwd=self.cwd,
                        actor=marker)
                except SpawnError as exc:
                    if exc.transient:
                        # e.g. its computer is unreachable: retry under the restart policy
                        # (the failed start below ends the head turn with this reason).
                        self._gen_end = _Ending("start_failed", str(exc), str(exc))
                        return self._gen_end
                    self._gen_end = _Ending("spawn_failed", str(exc), str(exc))
                    self._fail_head_turn(f"agent {self.agent!r} cannot start: {exc}")
                    return self._gen_end
                self._proc = proc
                self._persist()
                log.info("agent started", pid=proc.identity.pid,
                         command=" ".join(self.spec.command))
                rpc = JsonRpcConnection(
                    proc.stdin, proc.stdout,
                    on_request=self._on_agent_request,
                    on_notification=self._on_agent_notification,
                    on_traffic=self._touch,
                    on_line=self._on_agent_line,
                    max_line=int(self._settings.config.daemon.max_line),
                    log=log, name=f"agent {self.agent}",
                )
                rpc.sent = self.sent_lines
                self._rpc = rpc
                terminals = TerminalManager(
                    executor=self._executor, root=self.cwd, env=env,
                    publish=self._publish_current, on_activity=self._touch,
                    default_limit=int(self._settings.config.terminals.output_limit),
                    max_count=self._settings.config.terminals.max_per_chat,
                    actor=marker, log=log)
                terminals.attach(gen)
                self._terminals = terminals
                stderr_done = trio.Event()
                gen.start_soon(self._drain_stderr, proc.stderr, log, stderr_done)
                gen.start_soon(self._watch, proc, rpc, stderr_done)
                try:
                    await self._handshake(rpc)
                except AuthRequired as exc:
                    self._fail_all_waiting(exc.message)
                    await self._await_auth(rpc)
                except (RpcError, trio.TooSlowError, StokerError) as exc:
                    reason = _describe_start_error(exc)
                    self._end_generation(_Ending("start_failed", reason, reason))
                    await trio.sleep_forever()
                except ConnectionLost:
                    await self._await_watcher()
                self._gen_ready = True
                self._set_state(State.READY)
                for warm in self._want_warm:
                    if warm.reply is not None:
                        warm.reply.set(None)
                self._want_warm.clear()
                await self._run_controls(rpc)
                kind, reason = await self._serve(rpc)
                self._gen_end = self._gen_end or _Ending(kind, reason)
                gen.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._finish_generation(proc, log)
        ending = self._gen_end or _Ending("crash", "generation ended unexpectedly")
        if not self._gen_ready:
            if ending.kind in ("crash", "stale", "start_failed"):
                self._fail_head_turn(f"agent {self.agent!r} failed to start: {ending.reason}")
            self._fail_requests(f"agent failed to start: {ending.reason}")
        if self.current is not None:
            error = ending.turn_error or ending.reason
            self._end_turn(self.current, error=error)
            self.current = None
        return ending

    async def _finish_generation(self, proc: AgentProcess | None, log: Log) -> None:
        terminals = self._terminals
        self._terminals = None
        if terminals is not None:
            await terminals.close_all()
        if self._rpc is not None:
            self._rpc.close("generation ended")
        self._rpc = None
        self._gen_nursery = None
        # Every permission still waiting belonged to this generation's agent.
        for pending in list(self._permissions.values()):
            self._resolve(pending, None, by="agent stopped", outcome="cancelled")
        if proc is not None:
            grace = float(self._settings.config.daemon.stop_grace)
            with trio.move_on_after(grace + 5):
                status = await proc.stop(grace)
                log.info("agent stopped", status=status.describe())
        self._proc = None
        self._persist()

    def _fail_head_turn(self, error: str) -> None:
        if self.queue:
            self._end_turn(self.queue.popleft(), error=error)

    def _fail_all_waiting(self, error: str) -> None:
        self._end_queued(error)
        for warm in self._want_warm:
            if warm.reply is not None:
                warm.reply.fail(AuthRequired(error))
        self._want_warm.clear()

    async def _await_watcher(self) -> None:
        """The connection broke: give the process watcher a moment to report the exit
        status, which says more than 'connection lost'."""
        with trio.move_on_after(2):
            await trio.sleep_forever()
        self._end_generation(_Ending("crash", "lost the connection to the agent"))
        if self._proc is not None:
            self._proc.kill()
        await trio.sleep_forever()

    async def _watch(self, proc: AgentProcess, rpc: JsonRpcConnection,
                     stderr_done: trio.Event) -> None:
        """Reads the agent until its output ends, then reports how the process ended."""
        try:
            await rpc.serve()
        except LineTooLong as exc:
            proc.kill()
            await proc.wait()
            self._end_generation(_Ending(
                "crash", f"agent protocol error: {exc}",
                f"agent protocol error: {exc}"))
            return
        # stdout closed. Normally the process is exiting; do not wait forever if not.
        exit_status: ExitStatus | None = None
        with trio.move_on_after(2):
            exit_status = await proc.wait()
        if exit_status is None:
            proc.kill()
            exit_status = await proc.wait()
        status = exit_status
        # The crash message is usually in the last stderr lines: wait for the drain to reach
        # the end of stderr, which is at once when the agent died alone, but not for long if
        # something it left behind still holds the pipe open.
        with trio.move_on_after(STDERR_EOF_WAIT):
            await stderr_done.wait()
        tail = " | ".join(list(self._stderr_tail)[-5:])
        reason = f"agent {status.describe()}"
        if tail:
            reason = f"{reason}; stderr: {tail}"
        self._end_generation(_Ending("crash", reason, f"agent crashed: {reason}"))

    async def _drain_stderr(self, stream: trio.abc.ReceiveStream, log: Log,
                            done: trio.Event) -> None:
        """Agent stderr goes to our log, line by line. Draining it concurrently matters: a
        chatty agent blocked on a full stderr pipe looks hung. `done` is set at its end."""
        try:
            await self._drain_stderr_lines(stream, log)
        finally:
            done.set()

    async def _drain_stderr_lines(self, stream: trio.abc.ReceiveStream, log: Log) -> None:
        pending = b""
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                if len(pending) > 65536:
                    lines.append(pending)
                    pending = b""
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip()
                    if line:
                        self._stderr_tail.append(line[:500])
                        log.info("agent stderr", line=line[:2000])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if pending.strip():
            line = pending.decode("utf-8", "replace").rstrip()
            self._stderr_tail.append(line[:500])
            log.info("agent stderr", line=line[:2000])

    # ------------------------------------------------------------------ handshake

    async def _handshake(self, rpc: JsonRpcConnection) -> None:
        timeout = float(self._settings.config.daemon.request_timeout)
        raw = await rpc.request("initialize", INITIALIZE_PARAMS, timeout=timeout)
        init = msgspec.json.decode(raw, type=acp.InitializeResult)
        full = msgspec.json.decode(raw)
        if init.protocol_version != acp.PROTOCOL_VERSION:
            raise AgentUnavailable(
                f"agent speaks ACP version {init.protocol_version}; Stoker speaks "
                f"{acp.PROTOCOL_VERSION}")
        self.info["agentCapabilities"] = full.get("agentCapabilities") or {}
        self.info["authMethods"] = full.get("authMethods") or []
        self.info["agentInfo"] = full.get("agentInfo") or {}
        self.info["protocolVersion"] = init.protocol_version
        await self._establish_session(rpc, init)

    async def _establish_session(self, rpc: JsonRpcConnection,
                                 init: acp.InitializeResult) -> None:
        timeout = float(self._settings.config.daemon.request_timeout)
        caps = init.agent_capabilities
        setup_params = {"cwd": self.cwd, "mcpServers": self._mcp}
        old = self.session_id
        lost_reason = ""
        if old is not None:
            methods = []
            if caps.session_capabilities.get("resume") is not None:
                methods.append("session/resume")
            if caps.load_session:
                methods.append("session/load")
            for method in methods:
                # History the agent replays during session/load is not news: not re-broadcast.
                self._loading = method == "session/load"
                try:
                    failure = await self._reattach(rpc, method, {"sessionId": old,
                                                                 **setup_params}, timeout)
                finally:
                    self._loading = False
                if failure is None:
                    return
                lost_reason = failure
            if not lost_reason:
                lost_reason = "the agent supports neither session/resume nor session/load"
        try:
            raw = await rpc.request("session/new", setup_params, timeout=timeout)
        except RpcError as exc:
            self._raise_if_auth(exc)
            raise
        setup = msgspec.json.decode(raw, type=acp.SessionSetup)
        if not setup.session_id:
            raise AgentUnavailable("session/new answered without a sessionId")
        self.session_id = setup.session_id
        self._apply_setup(setup)
        self._persist()
        if old is not None:
            self._publish(d.Notice(
                level="warning",
                message=f"the agent lost its context ({lost_reason}); "
                        "a new session was started",
            ))
            self._log.warning("session lost; started a new one", reason=lost_reason)

    async def _reattach(self, rpc: JsonRpcConnection, method: str, params: dict[str, Any],
                        timeout: float) -> str | None:
        """Resume the recorded session with `method`; None on success, else why not."""
        try:
            raw = await rpc.request(method, params, timeout=timeout)
        except RpcError as exc:
            self._raise_if_auth(exc)
            return f"{method} failed: {exc.message}"
        self._apply_setup(msgspec.json.decode(raw, type=acp.SessionSetup))
        self._log.info("session resumed", session=params["sessionId"], method=method)
        return None

    def _raise_if_auth(self, exc: RpcError) -> None:
        if exc.code == AUTH_REQUIRED:
            methods = self.info.get("authMethods") or []
            names = ", ".join(
                f"{m.get('id')} ({m.get('name', '')})" for m in methods if isinstance(m, dict))
            hint = (f"; run `stoker auth {self.chat} METHOD` with one of: {names}"
                    if names else "; the agent lists no authMethods")
            raise AuthRequired(f"agent {self.agent!r} requires authentication: "
                               f"{exc.message}{hint}", detail={"authMethods": methods})

    def _apply_setup(self, setup: acp.SessionSetup) -> None:
        if setup.modes is not None:
            self.info["modes"] = setup.modes
        if setup.config_options is not None:
            self.info["configOptions"] = setup.config_options
        if setup.models is not None:
            self.info["models"] = setup.models

    async def _await_auth(self, rpc: JsonRpcConnection) -> None:
        """The agent wants authentication before a session: stay up (ready, reason says
        so) until `stoker auth` runs `authenticate` or a new prompt asks to try again."""
        self._set_state(State.READY, "authentication required")
        while True:
            self._changed = trio.Event()
            auth = next((c for c in self._controls if isinstance(c, mb.Authenticate)), None)
            if auth is not None:
                self._controls.remove(auth)
                await self._authenticate(rpc, auth)
            if self.queue or self._want_warm or auth is not None:
                try:
                    init = msgspec.convert({"agentCapabilities": self.info.get(
                        "agentCapabilities", {})}, acp.InitializeResult)
                    await self._establish_session(rpc, init)
                    return
                except AuthRequired as exc:
                    self._fail_all_waiting(exc.message)
            if self._stopping() or self._hibernate:
                self._end_generation(_Ending(
                    "shutdown" if self._shutdown else "close" if self._closing else "hibernate",
                    self._shutdown or self._closing or self._hibernate or ""))
                await trio.sleep_forever()
            await self._changed.wait()

    async def _authenticate(self, rpc: JsonRpcConnection, cmd: mb.Authenticate) -> None:
        timeout = float(self._settings.config.daemon.request_timeout)
        try:
            await rpc.request("authenticate", {"methodId": cmd.method}, timeout=timeout)
        except RpcError as exc:
            cmd.reply.fail(AgentRequestFailed("authenticate", exc.code, exc.message, exc.data))
            return
        except trio.TooSlowError:
            cmd.reply.fail(AgentUnavailable("authenticate timed out"))
            return
        cmd.reply.set(None)
        self._publish(d.Notice(level="info", message=f"authenticated with {cmd.method}"))

    # ------------------------------------------------------------------ serving turns

    async def _serve(self, rpc: JsonRpcConnection) -> tuple[str, str]:
        """Run queued turns until the generation should end (hibernate, close, shutdown)."""
        while True:
            self._changed = trio.Event()
            if self._shutdown is not None:
                return "shutdown", self._shutdown
            if self._closing is not None:
                await self._close_session(rpc)
                return "close", self._closing
            if self._controls:
                await self._run_controls(rpc)
                continue
            if self.queue:
                job = self.queue.popleft()
                await self._run_turn(rpc, job)
                continue
            if self._hibernate is not None:
                reason, self._hibernate = self._hibernate, None
                if self._idle_for_eviction():
                    await self._close_session(rpc)
                    return "hibernate", reason
            await self._changed.wait()

    def _idle_for_eviction(self) -> bool:
        return (self.current is None and not self.queue and not self._permissions
                and not (self._terminals and self._terminals.live) and not self._controls)

    async def _close_session(self, rpc: JsonRpcConnection) -> None:
        caps = self.info.get("agentCapabilities") or {}
        if self.session_id and (caps.get("sessionCapabilities") or {}).get("close") is not None:
            with trio.move_on_after(2):
                try:
                    await rpc.request("session/close", {"sessionId": self.session_id})
                except (RpcError, ConnectionLost) as exc:
                    self._log.info("session/close failed", error=str(exc))

    async def _run_turn(self, rpc: JsonRpcConnection, job: mb.PromptJob) -> None:
        if job.ended:
            return
        caps = self.prompt_capabilities or acp.PromptCapabilities()
        problem = content_problem(job.content, caps, self.agent)
        if problem is not None:
            self._end_turn(job, error=problem)
            return
        self.current = job
        job.started = True
        self._store.execute("UPDATE prompts SET state='running' WHERE chat=? AND turn=?",
                            (self.chat, job.turn))
        self._set_state(State.BUSY, f"turn {job.turn}")
        if job.cancel_requested:
            self._end_turn(job, stop_reason="cancelled")
        else:
            blocks = [msgspec.to_builtins(b) for b in job.content]
            done = trio.Event()
            lost = False
            async with trio.open_nursery() as turn_nursery:
                turn_nursery.start_soon(self._probe_loop, rpc, job, done)
                try:
                    raw = await rpc.request("session/prompt",
                                            {"sessionId": self.session_id, "prompt": blocks})
                    result = msgspec.json.decode(raw, type=acp.PromptResult)
                    self._account(result, job)
                    stop = _stop_reason(result.stop_reason)
                    self._end_turn(job, stop_reason=stop, error=None if stop
                                   else f"agent stopped: {result.stop_reason}")
                except RpcError as exc:
                    message = exc.message
                    if exc.code == AUTH_REQUIRED:
                        try:
                            self._raise_if_auth(exc)
                        except AuthRequired as auth:
                            message = auth.message
                    self._end_turn(job, error=f"agent error {exc.code}: {message}")
                except msgspec.ValidationError as exc:
                    self._end_turn(job, error=f"agent sent an invalid prompt response: {exc}")
                except ConnectionLost:
                    lost = True
                finally:
                    done.set()
                    turn_nursery.cancel_scope.cancel()
            if lost:
                await self._await_watcher()
        self.current = None
        if not self._stopping():
            self._set_state(State.READY)

    def _account(self, result: acp.PromptResult, job: mb.PromptJob) -> None:
        usage = result.usage
        if usage is None or job.streamed_usage:
            return
        self._add_tokens(usage_body(usage))
        self._publish(usage_body(usage), turn=job.turn)

    def _add_tokens(self, body: d.Usage) -> None:
        totals = self.usage
        totals.input_tokens += body.input_tokens or 0
        totals.output_tokens += body.output_tokens or 0
        totals.total_tokens += body.total_tokens or 0
        totals.cached_tokens += body.cached_tokens or 0

    async def _probe_loop(self, rpc: JsonRpcConnection, job: mb.PromptJob,
                          done: trio.Event) -> None:
        """While the turn runs: tell a slow agent from a hung one."""
        lc = self._settings.config.lifecycle
        interval = float(lc.probe_interval)
        grace = float(lc.stale_grace)
        if interval <= 0:
            return
        async with trio.open_nursery() as probes:
            while True:
                await trio.sleep(min(interval, grace))
                verdict = liveness(busy=True, now=trio.current_time(),
                                   last_heard=rpc.last_traffic, probe_interval=interval,
                                   stale_grace=grace)
                if verdict is Liveness.SUSPECT:
                    probes.start_soon(self._probe, rpc, interval)
                elif verdict is Liveness.STALE:
                    quiet = trio.current_time() - rpc.last_traffic
                    reason = f"agent unresponsive: no answer for {quiet:.1f}s (stale grace " \
                             f"{grace:g}s)"
                    self._log.warning("agent unresponsive; cancelling and restarting",
                                      turn=job.turn, quiet=round(quiet, 1))
                    with trio.move_on_after(1):
                        with contextlib.suppress(ConnectionLost):
                            await rpc.notify("session/cancel", {"sessionId": self.session_id})
                    with trio.move_on_after(min(2.0, grace)):
                        await done.wait()
                    self._end_generation(_Ending("stale", reason, reason))
                    if self._proc is not None:
                        self._proc.kill()
                    return

    async def _probe(self, rpc: JsonRpcConnection, timeout: float) -> None:
        """Any answer, even an error, proves the agent is reading and answering."""
        with contextlib.suppress(RpcError, ConnectionLost, trio.TooSlowError):
            await rpc.request("_stoker/ping", {}, timeout=timeout)

    # ------------------------------------------------------------------ controls

    async def _run_controls(self, rpc: JsonRpcConnection) -> None:
        while self._controls:
            control = self._controls.popleft()
            await self._run_control(rpc, control)

    async def _run_control(self, rpc: JsonRpcConnection, control: Any) -> None:
        timeout = float(self._settings.config.daemon.request_timeout)
        try:
            if isinstance(control, mb.SetMode):
                await self._set_mode(rpc, control.mode, timeout)
            elif isinstance(control, mb.SetConfig):
                await self._set_config(rpc, control.option, control.value, timeout)
            elif isinstance(control, mb.Authenticate):
                await self._authenticate(rpc, control)
                return
        except RpcError as exc:
            control.reply.fail(AgentRequestFailed(type(control).__name__, exc.code, exc.message,
                                                  exc.data))
            return
        except trio.TooSlowError:
            control.reply.fail(AgentUnavailable("the agent did not answer in time"))
            return
        except StokerError as exc:
            control.reply.fail(exc)
            return
        control.reply.set(None)

    async def _set_mode(self, rpc: JsonRpcConnection, mode: str, timeout: float) -> None:
        modes = self.info.get("modes")
        if not modes:
            raise Unsupported(f"agent {self.agent!r} has no session modes")
        available = [m.get("id") for m in modes.get("availableModes", [])]
        if mode not in available:
            raise BadRequest(f"unknown mode {mode!r}; available: {', '.join(map(str, available))}")
        await rpc.request("session/set_mode", {"sessionId": self.session_id, "modeId": mode},
                          timeout=timeout)
        modes["currentModeId"] = mode
        self._persist()
        self._publish(d.Mode(mode=mode, available=modes.get("availableModes", [])))

    async def _set_config(self, rpc: JsonRpcConnection, option: str, value: str | bool,
                          timeout: float) -> None:
        options: list[dict[str, Any]] = self.info.get("configOptions") or []
        target = next((o for o in options if o.get("id") == option), None)
        if target is None and option == "model":
            target = next((o for o in options if o.get("category") == "model"), None)
        if target is None:
            if option == "model" and self.info.get("models"):
                await self._set_model(rpc, str(value), timeout)
                return
            known = ", ".join(str(o.get("id")) for o in options) or "none"
            raise BadRequest(f"agent {self.agent!r} has no config option {option!r} "
                             f"(options: {known})")
        params: dict[str, Any] = {"sessionId": self.session_id, "configId": target["id"]}
        if target.get("type") == "boolean":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "on", "off", "1", "0", "yes", "no"):
                    raise BadRequest(f"option {option!r} is boolean: use true or false")
                value = value.lower() in ("true", "on", "1", "yes")
            params.update(type="boolean", value=value)
        else:
            if isinstance(value, bool):
                raise BadRequest(f"option {option!r} takes a value id, not a boolean")
            values = _select_values(target)
            if values and value not in values:
                raise BadRequest(f"invalid value {value!r} for {option!r}; "
                                 f"choose one of: {', '.join(values)}")
            params["value"] = value
        raw = await rpc.request("session/set_config_option", params, timeout=timeout)
        result = msgspec.json.decode(raw, type=acp.SetConfigResult)
        if result.config_options is not None:
            self.info["configOptions"] = result.config_options
        else:
            target["currentValue"] = params["value"]
        self._persist()
        self._publish(d.Config(options=self.info.get("configOptions") or []))

    async def _set_model(self, rpc: JsonRpcConnection, model: str, timeout: float) -> None:
        models = self.info.get("models") or {}
        available = [m.get("modelId") for m in models.get("availableModels", [])
                     if isinstance(m, dict)]
        if available and model not in available:
            choices = ", ".join(map(str, available))
            raise BadRequest(f"unknown model {model!r}; available: {choices}")
        await rpc.request("session/set_model", {"sessionId": self.session_id, "modelId": model},
                          timeout=timeout)
        models["currentModelId"] = model
        self._persist()
        self._publish(d.Notice(level="info", message=f"model set to {model}"))

    # ------------------------------------------------------------------ mailbox

    async def _mailbox_loop(self) -> None:
        async for message in self._inbox:
            try:
                self._handle(message)
            except Exception:
                self._log.exception("mailbox handler failed", message=type(message).__name__)

    def _handle(self, message: mb.ActorMessage) -> None:
        if isinstance(message, mb.PromptJob):
            if self._stopping():
                self._end_turn(message, error=self._shutdown or f"chat closed: {self._closing}")
                return
            if self.state is State.FAILED:
                self._restarts.clear()
            self.queue.append(message)
            self._touch()
            self._wake()
        elif isinstance(message, mb.Cancel):
            self._cancel(message)
        elif isinstance(message, mb.Permit):
            self._permit(message)
        elif isinstance(message, mb.SetMode | mb.SetConfig | mb.Authenticate):
            if self._stopping():
                message.reply.fail(InvalidState("the chat is closing"))
                return
            rpc = self._rpc
            if (rpc is not None and self._gen_ready and self._gen_nursery is not None
                    and not isinstance(message, mb.Authenticate)):
                self._gen_nursery.start_soon(self._run_control, rpc, message)
            else:
                if self.state is State.FAILED:
                    self._restarts.clear()
                self._controls.append(message)
                self._wake()
        elif isinstance(message, mb.Warm):
            if self._gen_ready and self._rpc is not None:
                if message.reply is not None:
                    message.reply.set(None)
                return
            if self.state is State.FAILED:
                self._restarts.clear()
            self._want_warm.append(message)
            self._wake()
        elif isinstance(message, mb.Hibernate):
            self._hibernate = message.reason
            self._wake()
        elif isinstance(message, mb.Close):
            self._closing = message.reason
            if self.current is not None or not self._gen_ready:
                self._end_generation(_Ending("close", message.reason,
                                             f"chat closed: {message.reason}"))
            self._wake()
        elif isinstance(message, mb.Shutdown):
            self._shutdown = message.reason
            self._end_generation(_Ending("shutdown", message.reason, message.reason))
            self._wake()

    def _cancel(self, message: mb.Cancel) -> None:
        if message.queued:
            self._end_queued(None, cancelled=True)
        job = self.current
        if message.turn is not None and (job is None or job.turn != message.turn):
            # Not the running turn: drop it from the queue if it waits there.
            for queued in list(self.queue):
                if queued.turn == message.turn:
                    self.queue.remove(queued)
                    self._end_turn(queued, stop_reason="cancelled")
            return
        if job is None or job.cancel_requested or job.ended:
            return
        job.cancel_requested = True
        rpc = self._rpc
        if rpc is not None and self._gen_nursery is not None:
            self._gen_nursery.start_soon(self._send_cancel, rpc, job, message.by or "cancel")
        else:
            self._resolve_turn_permissions(job, by=message.by or "cancel")

    async def _send_cancel(self, rpc: JsonRpcConnection, job: mb.PromptJob, by: str) -> None:
        """`session/cancel` (never a kill), then `cancelled` for the turn's pending permission
        requests, in that order: an agent that got its permission answer first could finish
        the turn normally before it learns of the cancel. An agent that ignores the cancel for
        the cancel grace is broken: its turn ends `cancelled` and it is restarted."""
        self._log.info("cancelling turn", gen=self.generation, turn=job.turn)
        try:
            await rpc.notify("session/cancel", {"sessionId": self.session_id})
        except ConnectionLost:
            return
        finally:
            self._resolve_turn_permissions(job, by=by)
        grace = max(float(self._settings.config.lifecycle.stale_grace), 5.0)
        with trio.move_on_after(grace):
            while not job.ended:
                await trio.sleep(0.05)
            return
        if not job.ended and self.current is job:
            self._end_turn(job, stop_reason="cancelled")
            self._end_generation(_Ending(
                "crash", f"agent ignored session/cancel for {grace:g}s"))

    # ------------------------------------------------------------------ permissions

    def _resolve(self, pending: _Pending, option: str | None, *, by: str,
                 outcome: str = "selected") -> None:
        if pending.event.is_set():
            return
        pending.outcome = outcome
        pending.option = option
        pending.by = by
        pending.event.set()
        self._permissions.pop(pending.request, None)
        self._answered[pending.request] = by
        while len(self._answered) > 256:
            self._answered.popitem(last=False)
        turn = pending.job.turn if pending.job else 0
        self._publish(d.PermissionResolved(
            request=pending.request, outcome="selected" if outcome == "selected" else "cancelled",
            option=option, by=by), turn=turn)
        self._touch()

    def _resolve_turn_permissions(self, job: mb.PromptJob, by: str) -> None:
        for pending in list(self._permissions.values()):
            if pending.job is job:
                self._resolve(pending, None, by=by, outcome="cancelled")

    def _permit(self, message: mb.Permit) -> None:
        pending = self._permissions.get(message.request)
        if pending is None:
            if message.request in self._answered:
                message.reply.fail(AlreadyAnswered(
                    f"permission request {message.request} was already answered "
                    f"(by {self._answered[message.request]})"))
            else:
                message.reply.fail(NotFound(
                    f"no pending permission request {message.request!r} for agent "
                    f"{self.agent!r}"))
            return
        if message.option is None:
            self._resolve(pending, None, by=message.by, outcome="cancelled")
        else:
            ids = [option_id for option_id, _ in pending.options]
            if message.option not in ids:
                message.reply.fail(BadRequest(
                    f"unknown option {message.option!r}; choose one of: {', '.join(ids)}"))
                return
            self._resolve(pending, message.option, by=message.by)
        message.reply.set(None)

    def has_permission(self, request: str) -> bool:
        return request in self._permissions or request in self._answered

    async def _on_permission(self, params: msgspec.Raw | None) -> Any:
        req = msgspec.json.decode(params or b"{}", type=acp.RequestPermission)
        job = self.current
        options = [(o.option_id, o.kind) for o in req.options]
        raw_options = [msgspec.to_builtins(o) for o in req.options]
        request_id = f"p{secrets.token_hex(3)}"
        while request_id in self._permissions or request_id in self._answered:
            request_id = f"p{secrets.token_hex(3)}"
        turn = job.turn if job else 0
        pending = _Pending(request_id, job, options, trio.Event())
        if job is not None and job.cancel_requested:
            return {"outcome": {"outcome": "cancelled"}}
        timeout = float(self._settings.config.permissions.timeout)
        policy = self._policy
        self._permissions[request_id] = pending
        self._touch()
        self._publish(d.PermissionRequest(
            request=request_id, agent=self.agent, tool_call=req.tool_call, options=raw_options,
            policy=policy if policy in ("allow", "deny") else "ask",  # type: ignore[arg-type]
            expires_at=None if policy != "ask" else _wall() + timeout), turn=turn)
        try:
            if policy in ("allow", "deny"):
                choice = pick_option(options, policy)
                self._resolve(pending, choice, by=f"policy:{policy}",
                              outcome="selected" if choice else "cancelled")
            else:
                with trio.move_on_after(timeout):
                    await pending.event.wait()
                if not pending.event.is_set():
                    choice = pick_option(options, "deny")
                    self._resolve(pending, choice, by="timeout",
                                  outcome="selected" if choice else "cancelled")
        finally:
            if not pending.event.is_set():
                self._resolve(pending, None, by="agent stopped", outcome="cancelled")
        if pending.outcome == "selected" and pending.option is not None:
            return {"outcome": {"outcome": "selected", "optionId": pending.option}}
        return {"outcome": {"outcome": "cancelled"}}

    # ------------------------------------------------------------------ agent -> us

    def _publish_current(self, body: d.DeltaBody) -> None:
        self._publish(body, self.current.turn if self.current else 0)

    def _on_agent_line(self, line: bytes) -> bool:
        """The hot path, tried on every line from the agent: a text chunk (agent, thought
        or user) decoded from the whole line in one pass. Same outcome as
        `_on_agent_notification` for these (published in the current turn, except history
        replayed by session/load); False sends any other line the general way."""
        body = decode_chunk_line(line)
        if body is None:
            return False
        if not self._loading:
            self._publish(body, self.current.turn if self.current else 0)
        return True

    def _on_agent_notification(self, method: str, params: msgspec.Raw | None) -> None:
        if method != "session/update":
            self._publish_current(d.Raw(method=method, acp=_json_or_none(params)))
            return
        _session, body = decode_session_update(params)
        kind = type(body)
        if kind is d.Text:
            if not self._loading:
                self._publish(body, self.current.turn if self.current else 0)
            return
        if isinstance(body, d.Mode):
            modes = self.info.get("modes")
            if isinstance(modes, dict):
                modes["currentModeId"] = body.mode
                body = d.Mode(mode=body.mode, available=modes.get("availableModes", []))
        elif isinstance(body, d.Config):
            self.info["configOptions"] = body.options
        elif isinstance(body, d.Commands):
            self.info["commands"] = body.commands
        elif isinstance(body, d.Usage) and body.input_tokens is not None:
            # Token counts of one call, streamed (qwen's `_meta.usage`).
            if self._loading:
                return
            self._add_tokens(body)
            if self.current is not None:
                self.current.streamed_usage = True
        elif isinstance(body, d.Usage):
            self.usage.context_used = body.used
            self.usage.context_size = body.size
            if body.cost:
                with contextlib.suppress(TypeError, ValueError):
                    self.usage.cost = float(body.cost.get("amount", 0.0))
                    self.usage.currency = body.cost.get("currency")
        elif isinstance(body, d.Info):
            if body.title:
                self.info["title"] = body.title
        elif self._loading:
            # History the agent replays during session/load is not news: not re-broadcast.
            return
        if self._loading and not isinstance(body, d.Mode | d.Config | d.Commands):
            return
        self._publish_current(body)

    async def _on_agent_request(self, method: str, params: msgspec.Raw | None) -> Any:
        self._touch()
        if method == "session/request_permission":
            return await self._on_permission(params)
        if method == "fs/read_text_file":
            req = msgspec.json.decode(params or b"{}", type=acp.ReadTextFile)
            self._check_session(req.session_id)
            try:
                text = await self._executor.files(self.cwd).read_text(req.path, req.line,
                                                                      req.limit)
            except AccessDenied as exc:
                raise RpcError(INVALID_PARAMS, f"access denied: {exc}") from None
            except FileProblem as exc:
                raise RpcError(RESOURCE_NOT_FOUND, str(exc)) from None
            return {"content": text}
        if method == "fs/write_text_file":
            req_w = msgspec.json.decode(params or b"{}", type=acp.WriteTextFile)
            self._check_session(req_w.session_id)
            try:
                await self._executor.files(self.cwd).write_text(req_w.path, req_w.content)
            except AccessDenied as exc:
                raise RpcError(INVALID_PARAMS, f"access denied: {exc}") from None
            except FileProblem as exc:
                raise RpcError(RESOURCE_NOT_FOUND, str(exc)) from None
            return {}
        if method.startswith("terminal/"):
            return await self._on_terminal(method, params)
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")

    def _check_session(self, session_id: str) -> None:
        if self.session_id is not None and session_id != self.session_id:
            raise RpcError(INVALID_PARAMS, f"unknown session {session_id!r}")

    async def _on_terminal(self, method: str, params: msgspec.Raw | None) -> Any:
        terminals = self._terminals
        if terminals is None:
            raise RpcError(METHOD_NOT_FOUND, "terminals are not available")
        try:
            if method == "terminal/create":
                req = msgspec.json.decode(params or b"{}", type=acp.CreateTerminal)
                self._check_session(req.session_id)
                env = {e.name: e.value for e in req.env}
                try:
                    terminal_id = await terminals.create(req.command, req.args, env, req.cwd,
                                                         req.output_byte_limit)
                except SpawnError as exc:
                    raise RpcError(INVALID_PARAMS, str(exc)) from None
                return {"terminalId": terminal_id}
            ref = msgspec.json.decode(params or b"{}", type=acp.TerminalRef)
            self._check_session(ref.session_id)
            if method == "terminal/output":
                return terminals.output(ref.terminal_id)
            if method == "terminal/wait_for_exit":
                return await terminals.wait_for_exit(ref.terminal_id)
            if method == "terminal/kill":
                await terminals.kill(ref.terminal_id)
                return {}
            if method == "terminal/release":
                await terminals.release(ref.terminal_id)
                return {}
        except UnknownTerminal as exc:
            raise RpcError(RESOURCE_NOT_FOUND, str(exc)) from None
        except AccessDenied as exc:
            raise RpcError(INVALID_PARAMS, f"access denied: {exc}") from None
        except TerminalLimit as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")


# ---------------------------------------------------------------------- probe


def agent_env(spec: AgentSpec) -> dict[str, str]:
    """The daemon's environment with the agent's own variables on top: the same for its
    generations, their terminals and a probe."""
    env = dict(os.environ)
    env.update(spec.env)
    return env


async def probe_agent(executor: Executor, spec: AgentSpec, *, cwd: str, timeout: float,
                      grace: float, instance: str) -> dict[str, Any]:
    """Start the agent, ask `initialize`, stop it: what it says about itself."""
    env = agent_env(spec)
    marker = f"{instance}:probe:{spec.name}:{secrets.token_hex(4)}"
    try:
        proc = await executor.spawn(list(spec.command), env=env, cwd=cwd, actor=marker)
    except SpawnError as exc:
        raise AgentUnavailable(f"agent {spec.name!r} cannot start: {exc}") from None

    async def ignore_request(method: str, params: msgspec.Raw | None) -> Any:
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")

    rpc = JsonRpcConnection(proc.stdin, proc.stdout, on_request=ignore_request,
                            on_notification=lambda method, params: None,
                            name=f"probe {spec.name}")
    info: dict[str, Any] = {}
    failure: str | None = None
    stderr_tail: collections.deque[str] = collections.deque(maxlen=3)
    status: ExitStatus | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rpc.serve)
            nursery.start_soon(_discard, proc.stderr, stderr_tail)
            try:
                raw = await rpc.request("initialize", INITIALIZE_PARAMS, timeout=timeout)
                info = msgspec.json.decode(raw)
            except (RpcError, ConnectionLost) as exc:
                failure = str(exc)
            except trio.TooSlowError:
                failure = f"no answer within {timeout:g}s"
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(grace + 5):
            status = await proc.stop(grace)
    if failure is not None:
        # Raised here, not inside the nursery: strict exception groups would wrap it, and
        # callers (describe_agent, doctor) catch AgentUnavailable itself.
        why = f"; agent {status.describe()}" if status is not None else ""
        tail = f"; stderr: {' | '.join(stderr_tail)}" if stderr_tail else ""
        raise AgentUnavailable(
            f"agent {spec.name!r} did not answer initialize: {failure}{why}{tail}")
    return info if isinstance(info, dict) else {}


async def _discard(stream: trio.abc.ReceiveStream,
                   tail: collections.deque[str] | None = None) -> None:
    """Drain a stream; keep its last lines in `tail` (they say why an agent gave up)."""
    pending = b""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while data := await stream.receive_some(65536):
            if tail is None:
                continue
            *lines, pending = (pending + data).split(b"\n")
            pending = pending[-4096:]
            tail.extend(x.decode("utf-8", "replace").strip()[:300] for x in lines if x.strip())
    if tail is not None and pending.strip():
        tail.append(pending.decode("utf-8", "replace").strip()[:300])


# ---------------------------------------------------------------------- helpers


def _wall() -> float:
    return time.time()


_STOP_REASONS = frozenset({"end_turn", "max_tokens", "max_turn_requests", "refusal", "cancelled"})


def _stop_reason(value: str) -> d.TurnStop | None:
    return value if value in _STOP_REASONS else None  # type: ignore[return-value]


def _json_or_none(params: msgspec.Raw | None) -> Any:
    if params is None:
        return None
    try:
        return msgspec.json.decode(params)
    except msgspec.DecodeError:
        return None


def _select_values(option: dict[str, Any]) -> list[str]:
    values: list[str] = []
    for entry in option.get("options") or []:
        if not isinstance(entry, dict):
            continue
        if "value" in entry:
            values.append(str(entry["value"]))
        for sub in entry.get("options") or []:
            if isinstance(sub, dict) and "value" in sub:
                values.append(str(sub["value"]))
    return values


def _describe_start_error(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "the agent did not answer initialize/session setup in time"
    if isinstance(exc, RpcError):
        return f"the agent refused the session setup: {exc.message} ({exc.code})"
    if isinstance(exc, StokerError):
        return exc.message
    return str(exc)

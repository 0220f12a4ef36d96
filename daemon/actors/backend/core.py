"""What the parts of one backend actor share: its identity, its record, its turns, and the
primitives every part uses to say something (publish a delta, persist the record, change
state, end a turn).

The parts (`generation`, `session`, `turns`, `permissions`, `agent_services`) are split by
concern, but they act for one actor, in its tasks, on its state: they hold this object
rather than reaching into the actor. Nothing outside the backend package sees it; the pool
reads the actor through its `ActorRef`.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from daemon.acp import types as acp
from daemon.actors import mailbox as mb
from daemon.actors import records
from daemon.actors.backend.permissions import Permissions
from daemon.actors.lifecycle import WARM_STATES, State, check_transition
from daemon.actors.settings import Settings
from daemon.channels.hub import Hub
from daemon.config.agents import AgentSpec
from daemon.execution.local import AgentProcess, Executor, ProcessIdentity
from daemon.execution.terminals import TerminalManager
from daemon.log import Log
from daemon.store.sqlite import Store
from protocol import deltas as d

if TYPE_CHECKING:
    from daemon.actors.backend.hosts import SharedHosts
    from daemon.actors.backend.view import SessionView

_NOT_OUTPUT: frozenset[type[d.DeltaBody]] = frozenset(
    {d.TurnStarted, d.TurnEnded, d.Status, d.Notice})
"""What the daemon itself says about a turn: not the agent's output."""

StateListener = Callable[[State], None]
TurnListener = Callable[[int, str | None], None]
"""Called after a turn that ran ends: (turn, error or None)."""


def wall() -> float:
    return time.time()


class Core:
    """One actor's shared state. Mutated only from the actor's own tasks."""

    def __init__(self, *, chat: str, cwd: str, spec: AgentSpec, policy: str,
                 mcp_servers: list[dict[str, Any]], record: records.ActorRecord, hub: Hub,
                 store: Store, executor: Executor, settings: Settings, instance: str,
                 on_state: StateListener, on_turn_end: TurnListener) -> None:
        self.chat = chat
        self.cwd = cwd
        self.spec = spec
        self.agent = spec.name
        self.key = f"{chat}\x00{spec.name}"
        self.policy = policy
        self.mcp = mcp_servers
        self.hub = hub
        self.store = store
        self.executor = executor
        self.settings = settings
        self.instance = instance
        self.log = Log("backend", chat=chat, agent=spec.name)
        self._on_state = on_state
        self._on_turn_end = on_turn_end

        # A live state in the record is a process of a previous daemon life: gone now.
        self.state = State.HIBERNATED if record.state in WARM_STATES | {
            State.CRASHED, State.RESTARTING} else record.state
        self.reason = record.reason
        self.session_id = record.session_id
        self.generation = record.generation
        self.turns = record.turns
        self.info: dict[str, Any] = dict(record.info)
        self.usage = record.usage
        self.last_activity_wall = record.last_activity
        self.last_activity = trio.current_time()

        self.queue: collections.deque[mb.PromptJob] = collections.deque()
        self.current: mb.PromptJob | None = None
        self.loading = False
        """The agent is replaying history for `session/load`: not news, not re-published."""
        self.agent_process: AgentProcess | None = None
        """The running generation's agent process (from its spawn to its stop)."""
        self.terminals: TerminalManager | None = None
        """The running generation's terminals."""
        self.hosts: SharedHosts | None = None
        """Where the generations of a shared agent attach (`process = "shared"`)."""
        self.computer: str | None = None
        """The computer the chat's agent runs on (None: here)."""
        self.shared: SessionView | None = None
        """The running generation's view of its shared process (shared mode only)."""
        self.permissions = Permissions(self)
        self.restarts: list[float] = []
        """When the recent restarts happened (the restart policy's history)."""
        self.output_turn = 0
        """The last turn for which anything of the agent's was published (its output: a
        transient failure after it is not retried)."""

    # ------------------------------------------------------------------ reads

    @property
    def process(self) -> ProcessIdentity | None:
        proc = self.agent_process
        return proc.identity if proc is not None else None

    @property
    def pid(self) -> int | None:
        process = self.process
        return process.pid if process is not None else None

    @property
    def prompt_capabilities(self) -> acp.PromptCapabilities | None:
        caps = self.info.get("agentCapabilities")
        if caps is None:
            return None
        return msgspec.convert(caps, acp.AgentCapabilities).prompt_capabilities

    @property
    def live_terminals(self) -> int:
        return self.terminals.live if self.terminals is not None else 0

    # ------------------------------------------------------------------ saying things

    def publish(self, body: d.DeltaBody, turn: int = 0) -> int:
        job = self.current
        if job is not None and turn == job.turn:
            _note(job, body)
        if turn and type(body) not in _NOT_OUTPUT:
            self.output_turn = turn
        return self.hub.publish(self.chat, turn, body)

    def publish_chunks(self, bodies: list[d.DeltaBody], turn: int) -> None:
        """`publish` for a batch of text chunks (`Text`, `Reasoning`, `UserText`: one read
        of the agent's output), in order: the turn's bookkeeping once per run of one kind
        (all it notes of a chunk is the first output), the hub's work once per batch.

        A batch of `daemon.coalesce_chunks` chunks or more (the agent writes faster than
        the daemon reads: a token stream comes one chunk per read) is published as one
        delta per run of one kind (`coalesce`): the same text in the same order, but the
        per-delta cost (numbering, encoding, logging, framing, every subscriber's decode)
        is paid per run, not per chunk (docs/PERFORMANCE.md, Ingest)."""
        least = self.settings.config.daemon.coalesce_chunks
        if least and len(bodies) >= least:
            bodies = coalesce(bodies)
        job = self.current
        if job is not None and turn == job.turn:
            last: type | None = None
            for body in bodies:
                if type(body) is not last:
                    last = type(body)
                    _note(job, body)
        if turn:
            self.output_turn = turn
        self.hub.publish_many(self.chat, turn, bodies)

    def publish_current(self, body: d.DeltaBody) -> None:
        self.publish(body, self.current.turn if self.current else 0)

    def touch(self) -> None:
        self.last_activity = trio.current_time()

    def set_state(self, state: State, reason: str = "") -> None:
        """Change state (checked against the lifecycle table), tell the chat, record it."""
        check_transition(self.state, state)
        # A turn's own rhythm (busy, then ready again) is in the chat's `status` deltas and
        # its one "turn ended" log line; the transitions table and the info log keep the
        # agent's life (starts, crashes, restarts, hibernations), and the actor's record is
        # written when the turn ends (a record read at start-up makes any warm state
        # hibernated: "busy" in it would say nothing more): three rows and two log lines
        # fewer per turn (issue 22).
        rhythm = state is State.BUSY or (state is State.READY and self.state is State.BUSY)
        self.state = state
        self.reason = reason
        self.last_activity = trio.current_time()
        if state in (State.CRASHED, State.RESTARTING) and self.current is not None:
            self.current.restarts += 1
        self.publish(d.Status(agent=self.agent, state=state.value, reason=reason,
                              pid=self.pid, generation=self.generation))
        if state is State.BUSY:
            self.last_activity_wall = wall()
        else:
            self.persist()
        if not rhythm:
            records.record_transition(self.store, self.chat, self.agent, state, reason,
                                      self.generation)
        level = (self.log.warning if state in (State.CRASHED, State.FAILED)
                 else self.log.debug if rhythm else self.log.info)
        level("state", state=state.value, reason=reason, gen=self.generation, pid=self.pid)
        self._on_state(state)

    def persist(self) -> None:
        self.last_activity_wall = wall()
        record = records.ActorRecord(
            state=self.state, reason=self.reason, session_id=self.session_id,
            generation=self.generation, turns=self.turns, info=self.info, usage=self.usage,
            last_activity=self.last_activity_wall)
        records.save_actor(self.store, self.chat, self.agent, record, self.process)

    # ------------------------------------------------------------------ turns

    def end_turn(self, job: mb.PromptJob, *, stop_reason: d.TurnStop | None = None,
                 error: str | None = None) -> None:
        """Publish the one `turn_ended` of `job`: the only place one is published, and
        idempotent per job, so every exit path may call it."""
        if job.ended:
            return
        job.ended = True
        if error is not None:
            stop_reason = None
        elif stop_reason is None:
            stop_reason = "end_turn"
        self.permissions.resolve_turn(job, by="turn ended")
        # No client shows a tool that never finishes: what the agent left open ends here.
        closing = "cancelled" if stop_reason == "cancelled" else "failed"
        for tool in list(job.open_tools):
            self.publish(d.ToolUpdate(tool_call_id=tool, status=closing), turn=job.turn)
        self.publish(d.TurnEnded(stop_reason=stop_reason, error=error, timing=_timing(job)),
                     turn=job.turn)
        records.delete_prompt(self.store, self.chat, job.turn)
        if job.started:
            self.turns += 1
        self.touch()
        self.log.info("turn ended", gen=self.generation, turn=job.turn,
                      stop_reason=stop_reason, error=error)
        if job.started:
            self._on_turn_end(job.turn, error)

    def end_queued(self, error: str | None, *, cancelled: bool = False) -> None:
        while self.queue:
            job = self.queue.popleft()
            if cancelled:
                self.end_turn(job, stop_reason="cancelled")
            else:
                self.end_turn(job, error=error)

    def fail_head_turn(self, error: str) -> None:
        if self.queue:
            self.end_turn(self.queue.popleft(), error=error)


OUTPUT = (d.Text, d.Reasoning, d.Content, d.ToolCall)
"""What counts as the reply's first output (time to first token)."""
FINAL_TOOL_STATES = frozenset({"completed", "failed", "cancelled"})


def _note(job: mb.PromptJob, body: d.DeltaBody) -> None:
    """What a turn's timing needs from a delta of the running turn (on every delta: the
    common case, a text chunk after the first, costs two comparisons)."""
    kind = type(body)
    if kind is d.Text and job.first_output_at is not None:
        return
    if job.first_output_at is None and isinstance(body, OUTPUT):
        job.first_output_at = wall()
    if kind is d.ToolCall:
        assert isinstance(body, d.ToolCall)
        job.tool_calls += 1
        if body.status not in FINAL_TOOL_STATES:
            job.open_tools[body.tool_call_id] = None
    elif kind is d.ToolUpdate:
        assert isinstance(body, d.ToolUpdate)
        if body.status in FINAL_TOOL_STATES:
            job.open_tools.pop(body.tool_call_id, None)
    elif kind is d.Usage:
        assert isinstance(body, d.Usage)
        for i, value in enumerate((body.input_tokens, body.output_tokens,
                                   body.cached_tokens)):
            if value is not None:
                job.tokens[i] = (job.tokens[i] or 0) + value
        if body.cost is not None:
            job.cost = body.cost


COALESCED_TEXT = 64 * 1024
"""Characters of text one coalesced delta holds at most."""
_COALESCED = (d.Text, d.Reasoning, d.UserText)


def coalesce(bodies: list[d.DeltaBody]) -> list[d.DeltaBody]:
    """Each run of consecutive text chunks of one kind as one body of that kind, holding
    their texts joined (at most `COALESCED_TEXT` characters, unless one chunk alone is
    longer); anything else as it is, in order."""
    out: list[d.DeltaBody] = []
    texts: list[str] = []
    size = 0
    kind: type[d.Text] | type[d.Reasoning] | type[d.UserText] | None = None
    for body in bodies:
        if not isinstance(body, _COALESCED):
            if kind is not None:
                out.append(kind(text="".join(texts)))
                kind = None
            out.append(body)
            continue
        if type(body) is not kind or size + len(body.text) > COALESCED_TEXT:
            if kind is not None:
                out.append(kind(text="".join(texts)))
            kind, texts, size = type(body), [], 0
        texts.append(body.text)
        size += len(body.text)
    if kind is not None:
        out.append(kind(text="".join(texts)))
    return out


def _timing(job: mb.PromptJob) -> d.TurnTiming:
    return d.TurnTiming(
        accepted=job.accepted_at, started=job.started_at, first_output=job.first_output_at,
        ended=wall(), tool_calls=job.tool_calls, input_tokens=job.tokens[0],
        output_tokens=job.tokens[1], cached_tokens=job.tokens[2], cost=job.cost,
        restarts=job.restarts)

"""In-process doubles for driving backend actors and the pool under trio's MockClock.

* `FakeExecutor` implements `daemon.execution.local.Executor`: each spawned "process" is a
  `FakeAgent` task speaking ACP JSON-RPC lines over trio memory streams, with knobs for a slow
  prompt, a crash and a hang.
* `InlineStore` is a real `Store` on SQLite whose statements run at once in the caller's
  thread: no writer task and no worker threads, so virtual time is the only time.
* `RecordingHub` is a real `Hub` that also keeps every delta it published and lets a test
  wait for one.
* `Rig` builds the pool (or a lone actor) on top of them.

Nothing here reads the wall clock or sleeps for real: under `MockClock(autojump_threshold=0)`
the clock jumps to the next deadline whenever every task waits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio
import trio.testing

from daemon.actors import mailbox as mb
from daemon.actors.backend.actor import BackendActor
from daemon.actors.lifecycle import State
from daemon.actors.pool import Pool
from daemon.actors.records import ActorRecord
from daemon.actors.ref import ActorRef
from daemon.actors.settings import Settings
from daemon.channels.hub import Hub
from daemon.config.agents import AgentSpec
from daemon.config.file import parse
from daemon.execution.local import ExitStatus, ProcessIdentity, SpawnError
from daemon.store.schema import SCHEMA
from daemon.store.sqlite import Store
from protocol import deltas as d
from protocol.messages import TextBlock

FAKE = "fake"
"""The name of the fake agent in `Rig` settings."""
DEADLINE = 24 * 3600.0
"""Virtual seconds after which a waiting test fails instead of hanging."""


# --------------------------------------------------------------------------- store, hub


class InlineStore(Store):
    """A `Store` that executes each statement when it is enqueued, on one connection."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, commit_interval=0.0, batch_max=1)
        self._conn = sqlite3.connect(path, isolation_level=None)
        # Each statement is its own commit, and no test here crashes the process: the file
        # need not be synced. (With the default sync, every commit waits for the disk: on a
        # busy disk 10 ms a statement, seconds for a test that saves a few hundred rows.)
        self._conn.execute("PRAGMA journal_mode=MEMORY")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.executescript(SCHEMA)

    def execute(self, sql: str, params: Sequence[Any] = (), *, bulk: bool = False) -> None:
        self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    def append_delta(self, chat: str, seq: int, ts: float, data: bytes) -> int:
        self._conn.execute("INSERT INTO deltas(chat, seq, ts, data) VALUES (?,?,?,?)",
                           (chat, seq, ts, data))
        self._submitted += 1
        return self._submitted

    def append_deltas(self, rows: list[tuple[str, int, float, bytes]], nbytes: int) -> int:
        self._conn.executemany("INSERT INTO deltas(chat, seq, ts, data) VALUES (?,?,?,?)",
                               rows)
        self._submitted += len(rows)
        return self._submitted

    async def flush(self) -> None:
        """Committed already: tell the hub (which delivers deltas once committed)."""
        self._committed = self._submitted
        for callback in self._on_commit:
            callback(self._committed)
        await trio.lowlevel.checkpoint()

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        await trio.lowlevel.checkpoint()
        return self._conn.execute(sql, params).fetchall()

    async def query_each(self, sql: str, params: Sequence[Sequence[Any]]
                         ) -> list[list[tuple[Any, ...]]]:
        await trio.lowlevel.checkpoint()
        return [self._conn.execute(sql, one).fetchall() for one in params]

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A synchronous read, for assertions."""
        return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self._conn.close()


class RecordingHub(Hub):
    """A `Hub` that remembers every delta and wakes waiters on each."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, ring_size=4096)
        self.deltas: list[d.Delta] = []
        self._published = trio.Event()

    def publish_many(self, chat: str, turn: int, bodies: Sequence[d.DeltaBody]) -> int:
        seq = super().publish_many(chat, turn, bodies)
        first = seq - len(bodies) + 1
        self.deltas.extend(d.Delta(chat=chat, seq=first + i, ts=0.0, turn=turn, body=body)
                           for i, body in enumerate(bodies))
        self._published.set()
        self._published = trio.Event()
        return seq

    def bodies(self, chat: str, kind: type[Any] = object) -> list[Any]:
        return [x.body for x in self.deltas if x.chat == chat and isinstance(x.body, kind)]

    def states(self, chat: str) -> list[str]:
        return [body.state for body in self.bodies(chat, d.Status)]

    def turn_ends(self, chat: str) -> dict[int, list[d.TurnEnded]]:
        ends: dict[int, list[d.TurnEnded]] = {}
        for x in self.deltas:
            if x.chat == chat and isinstance(x.body, d.TurnEnded):
                ends.setdefault(x.turn, []).append(x.body)
        return ends

    def text(self, chat: str, turn: int) -> str:
        return "".join(x.body.text for x in self.deltas
                       if x.chat == chat and x.turn == turn and isinstance(x.body, d.Text))

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Until `predicate()` holds, checked after every delta."""
        while not predicate():
            await self._published.wait()

    async def wait_turn_end(self, chat: str, turn: int) -> d.TurnEnded:
        await self.wait_for(lambda: turn in self.turn_ends(chat))
        return self.turn_ends(chat)[turn][0]

    async def wait_state(self, chat: str, state: State, *, count: int = 1) -> None:
        await self.wait_for(lambda: self.states(chat).count(state.value) >= count)


# --------------------------------------------------------------------------- agent


@dataclass
class Knobs:
    """How fake agent processes behave: each process takes a copy when it is spawned, so a
    test changes what the next generation does without touching the running one."""

    reply: str = "ok"
    prompt_delay: float = 0.0
    """Virtual seconds a prompt takes (probes are answered meanwhile)."""
    crash_on_start: bool = False
    """Exit with status 1 before answering `initialize`."""
    crash_on_prompt: bool = False
    """Exit with status 1 when a prompt arrives."""
    hang_on_prompt: bool = False
    """When a prompt arrives, stop answering anything (probes included) but stay alive."""
    resume: bool = True
    """Advertise `sessionCapabilities.resume` (sessions outlive a process)."""
    spawn_error: str | None = None
    """`spawn` raises `SpawnError` with this message (not transient)."""
    ignore_cancel: bool = False
    """Take no notice of `session/cancel`."""
    start_delay: float = 0.0
    """Virtual seconds before `initialize` is answered."""
    close_delay: float | None = None
    """Advertise `sessionCapabilities.close` and take this long to answer it."""
    setup_delay: float = 0.0
    """Virtual seconds each `session/new` or `session/resume` takes, one at a time per
    process (a real agent sets its sessions up one after another)."""


class FakeProcess:
    """An `AgentProcess` whose stdio are memory streams and whose life is a cancel scope."""

    def __init__(self, pid: int, actor: str) -> None:
        self.to_agent, self.agent_stdin = trio.testing.memory_stream_one_way_pair()
        self.agent_stdout, self.from_agent = trio.testing.memory_stream_one_way_pair()
        self.agent_stderr, self.stderr_stream = trio.testing.memory_stream_one_way_pair()
        self._identity = ProcessIdentity(pid=pid, pgid=pid, start_time=0.0, actor=actor)
        self.status: ExitStatus | None = None
        self.exited = trio.Event()
        self.scope = trio.CancelScope()

    @property
    def stdin(self) -> trio.abc.SendStream:
        return self.to_agent

    @property
    def stdout(self) -> trio.abc.ReceiveStream:
        return self.from_agent

    @property
    def stderr(self) -> trio.abc.ReceiveStream:
        return self.stderr_stream

    @property
    def identity(self) -> ProcessIdentity:
        return self._identity

    @property
    def returncode(self) -> int | None:
        return None if self.status is None else self.status.code

    @property
    def alive(self) -> bool:
        return self.status is None

    def die(self, status: ExitStatus) -> None:
        """The process ends: its output closes, its input breaks, its task is cancelled."""
        if self.status is not None:
            return
        self.status = status
        self.agent_stdout.close()
        self.agent_stderr.close()
        self.agent_stdin.close()
        self.scope.cancel()
        self.exited.set()

    async def wait(self) -> ExitStatus:
        await self.exited.wait()
        assert self.status is not None
        return self.status

    async def stop(self, grace: float) -> ExitStatus:
        self.die(ExitStatus(code=None, signal=signal.SIGTERM))
        return await self.wait()

    def kill(self) -> None:
        self.die(ExitStatus(code=None, signal=signal.SIGKILL))

    def rss(self) -> int | None:
        return 1 << 20 if self.alive else None


class FakeAgent:
    """The agent side of one `FakeProcess`: ACP over JSON lines."""

    def __init__(self, proc: FakeProcess, executor: FakeExecutor, knobs: Knobs) -> None:
        self._proc = proc
        self._executor = executor
        self._knobs = knobs
        self._write_lock = trio.Lock()
        self._hung = False
        self._cancelled: dict[str, trio.Event] = {}
        self._setting_up = trio.Lock()

    async def serve(self) -> None:
        with self._proc.scope:
            async with trio.open_nursery() as nursery:
                if self._knobs.crash_on_start:
                    self._proc.die(ExitStatus(code=1, signal=None))
                    return
                pending = b""
                while True:
                    try:
                        data = await self._proc.agent_stdin.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    if not data:
                        break
                    *lines, pending = (pending + data).split(b"\n")
                    for line in lines:
                        if line.strip():
                            self._dispatch(json.loads(line), nursery)
                self._proc.die(ExitStatus(code=0, signal=None))

    def _dispatch(self, message: dict[str, Any], nursery: trio.Nursery) -> None:
        method = message.get("method")
        if method is None:
            return  # a response to a request of ours (none are sent)
        self._executor.methods.append(str(method))
        if self._hung:
            return
        params = message.get("params") or {}
        if "id" not in message:
            if method == "session/cancel" and not self._knobs.ignore_cancel:
                self._cancelled.setdefault(str(params.get("sessionId")), trio.Event()).set()
            return
        nursery.start_soon(self._answer, message["id"], str(method), params)

    async def _send(self, message: dict[str, Any]) -> None:
        line = json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n"
        async with self._write_lock:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._proc.agent_stdout.send_all(line)

    async def _answer(self, request_id: Any, method: str, params: dict[str, Any]) -> None:
        try:
            result = await self._result(method, params)
        except _AgentError as exc:
            await self._send({"id": request_id,
                              "error": {"code": exc.code, "message": exc.message}})
            return
        await self._send({"id": request_id, "result": result})

    async def _result(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        knobs = self._knobs
        sessions = self._executor.sessions
        if method == "initialize":
            await trio.sleep(knobs.start_delay)
            session_caps: dict[str, Any] = {"resume": {}} if knobs.resume else {}
            if knobs.close_delay is not None:
                session_caps["close"] = {}
            caps: dict[str, Any] = {"loadSession": False, "promptCapabilities": {},
                                    "sessionCapabilities": session_caps}
            return {"protocolVersion": 1, "agentCapabilities": caps, "authMethods": [],
                    "agentInfo": {"name": FAKE}}
        if method in ("session/new", "session/resume") and knobs.setup_delay:
            async with self._setting_up:
                await trio.sleep(knobs.setup_delay)
        if method == "session/new":
            session = f"session-{next(self._executor.session_ids)}"
            sessions.add(session)
            return {"sessionId": session}
        if method == "session/resume":
            if params.get("sessionId") not in sessions:
                raise _AgentError(-32002, "unknown session")
            return {}
        if method == "session/close":
            await trio.sleep(knobs.close_delay or 0.0)
            return {}
        if method == "session/prompt":
            return await self._prompt(str(params.get("sessionId")))
        raise _AgentError(-32601, f"method not found: {method}")

    async def _prompt(self, session: str) -> dict[str, Any]:
        knobs = self._knobs
        if knobs.crash_on_prompt:
            self._proc.die(ExitStatus(code=1, signal=None))
            await trio.sleep_forever()
        if knobs.hang_on_prompt:
            self._hung = True
            await trio.sleep_forever()
        cancelled = self._cancelled[session] = trio.Event()
        await self._send({"method": "session/update", "params": {
            "sessionId": session,
            "update": {"sessionUpdate": "agent_message_chunk",
                       "content": {"type": "text", "text": knobs.reply}}}})
        with trio.move_on_after(knobs.prompt_delay):
            await cancelled.wait()
        return {"stopReason": "cancelled" if cancelled.is_set() else "end_turn"}


class _AgentError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _NoFiles:
    """The fake agents never ask for files."""

    async def read_text(self, path: str, line: int | None, limit: int | None) -> str:
        raise AssertionError("fake agents read no files")

    async def write_text(self, path: str, content: str) -> None:
        raise AssertionError("fake agents write no files")

    async def directory(self, path: str | None) -> str:
        return path or "/"


class FakeExecutor:
    """An `Executor` whose agents are `FakeAgent` tasks in `nursery`."""

    name = "fake"

    def __init__(self, nursery: trio.Nursery, knobs: Knobs | None = None) -> None:
        self._nursery = nursery
        self.knobs = knobs or Knobs()
        self.sessions: set[str] = set()
        """Sessions the agent remembers across processes (what `session/resume` finds)."""
        self.session_ids = itertools.count(1)
        self.spawned: list[FakeProcess] = []
        self.spawn_times: list[float] = []
        """The virtual time of each spawn."""
        self.methods: list[str] = []
        """Every method the agents received, in order, across processes."""
        self._pids = itertools.count(1000)

    def files(self, root: str) -> _NoFiles:
        return _NoFiles()

    async def spawn(self, argv: list[str], *, env: Mapping[str, str], cwd: str, actor: str,
                    merge_stderr: bool = False) -> FakeProcess:
        await trio.lowlevel.checkpoint()
        if self.knobs.spawn_error is not None:
            raise SpawnError(self.knobs.spawn_error)
        proc = FakeProcess(next(self._pids), actor)
        self.spawned.append(proc)
        self.spawn_times.append(trio.current_time())
        self._nursery.start_soon(FakeAgent(proc, self, dataclasses.replace(self.knobs)).serve)
        return proc

    async def reclaim(self, identity: ProcessIdentity) -> bool:
        await trio.lowlevel.checkpoint()
        return False

    @property
    def live(self) -> list[FakeProcess]:
        return [p for p in self.spawned if p.alive]


# --------------------------------------------------------------------------- rig


@dataclass
class Rig:
    """A pool (or lone actors) over the fakes, in one nursery."""

    store: InlineStore
    hub: RecordingHub
    settings: Settings
    executor: FakeExecutor
    nursery: trio.Nursery
    pool: Pool | None = None
    _runs: dict[str, trio.Event] = field(default_factory=dict)

    async def start_pool(self) -> Pool:
        pool = Pool(hub=self.hub, store=self.store, settings=self.settings,
                    executors=lambda computer: self.executor,
                    instance="test")
        await self.nursery.start(pool.run)
        self.pool = pool
        return pool

    def actor(self, chat: str, *, cwd: str = "/", record: ActorRecord | None = None
              ) -> ActorRef:
        """A lone actor for `chat` (its channel opened), run on demand like the pool does."""
        self.hub.open_channel(chat, "epoch")
        running = False

        def wake() -> None:
            nonlocal running
            if not running:
                running = True
                self.nursery.start_soon(run)

        async def run() -> None:
            nonlocal running
            try:
                await ref.run()
            finally:
                running = False
                if ref.has_mail() and ref.state is not State.CLOSED:
                    wake()

        actor = BackendActor(
            chat=chat, cwd=cwd, spec=self.settings.agents[FAKE], policy="ask", mcp_servers=[],
            record=record or ActorRecord(), hub=self.hub, store=self.store,
            executor=self.executor,
            settings=self.settings, on_state=lambda state: None,
            on_turn_end=lambda turn, error: None, instance="test")
        ref = ActorRef(actor, wake=wake)
        return ref


def fake_settings(**lifecycle: Any) -> Settings:
    """Settings with the fake agent as the default and `lifecycle` overrides."""
    lines = ["[daemon]", f'default_agent = "{FAKE}"', "stop_grace = 1.0",
             "request_timeout = 10.0", "[lifecycle]"]
    lines += [f"{key} = {value!r}" for key, value in lifecycle.items()]
    config = parse("\n".join(lines))
    if "memory_budget" not in lifecycle:
        # No budget unless the test sets one (the default is a share of this machine's
        # memory, which would make every rig measure its fake agents' memory).
        config = msgspec.structs.replace(config, lifecycle=msgspec.structs.replace(
            config.lifecycle, memory_budget=None))
    return Settings(config, {FAKE: AgentSpec(FAKE, ("fake-agent",))})


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, knobs: Knobs | None = None, **lifecycle: Any
              ) -> AsyncIterator[Rig]:
    """Everything a test needs; cancelled (agents, actors, pool) on exit. A test still
    waiting after `DEADLINE` virtual seconds fails (under autojump that is at once)."""
    store = InlineStore(tmp_path / "state.db")
    try:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                made = Rig(store=store, hub=RecordingHub(store),
                           settings=fake_settings(**lifecycle),
                           executor=FakeExecutor(nursery, knobs), nursery=nursery)
                yield made
                nursery.cancel_scope.cancel()
    finally:
        store.close()


def prompt(turn: int, text: str = "hi") -> mb.PromptJob:
    """A prompt job as the pool would send it (its durable row is the pool's business)."""
    return mb.PromptJob(turn=turn, content=[TextBlock(text=text)], summary=text)

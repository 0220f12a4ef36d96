"""Shared pieces of the real-agent tests: a traced daemon, trace queries, small helpers.

Every agent runs under tests/support/acp_tee.py, so each agent process leaves one pair of NDJSON
files (what the daemon sent, what the agent answered). `TracedDaemon.validate()` checks every
message the daemon sent against the official ACP schema (`ClientSchema`); the fixtures call it
at teardown, so no test can skip it.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon.client import Client
from daemon.config.file import AgentConfig
from protocol import deltas as d
from protocol import messages as m
from tests.e2e.agents import Installed, NpmTool, ensure
from tests.e2e.fake_llm import JSON, Dynamic, FakeLLM, Text
from tests.support.acp_tee import ClientSchema, read_trace, tee_command, traces
from tests.support.harness import DaemonProcess, actor, subscribe

Message = dict[str, Any]


def toml_value(value: object) -> str:
    """A TOML value for a str, a list of str or a str->str table (JSON strings are valid
    TOML basic strings for what we write: paths, URLs, plain words)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def agent_table(name: str, command: list[str], env: dict[str, str],
                **settings: str | int) -> str:
    """`[agents.NAME]` with its command and env, plus any other keys (e.g.
    `process="shared"`)."""
    extra = "".join(f"{key} = {toml_value(value)}\n" for key, value in settings.items())
    return (f"[agents.{name}]\ncommand = {toml_value(command)}\n"
            f"env = {toml_value(env)}\n{extra}")


SHARED = {"process": "shared"}
"""The agent-table keys of a shared agent process (issue 23)."""


def shared_process_missing() -> str | None:
    """Why this daemon cannot run an agent in a shared process, or None when it can: the
    config has no `process` key for agents before issue 23's core."""
    if "process" in AgentConfig.__struct_fields__:
        return None
    return ('this daemon has no `process = "shared"` agent setting yet '
            "(issue 23's shared agent processes are not merged)")


@dataclass
class Generation:
    """One recorded agent process: what the daemon sent and what the agent answered."""

    stem: Path
    sent: list[Message]
    received: list[Message]

    @property
    def pid(self) -> int:
        return int(self.stem.name.rsplit(".", 1)[1])

    def new_sessions(self) -> list[str]:
        """The session ids this process answered `session/new` with, in order."""
        asks = {x["id"] for x in self.sent if x.get("method") == "session/new" and "id" in x}
        return [str(x["result"]["sessionId"]) for x in self.received
                if x.get("id") in asks and "method" not in x and "result" in x]

    def methods(self) -> list[str]:
        """Methods of the requests and notifications the daemon sent, in order."""
        return [str(x["method"]) for x in self.sent if "method" in x]

    def answer(self, method: str) -> Message | None:
        """The agent's answer to the daemon's first `method` request."""
        ask = next((x for x in self.sent if x.get("method") == method and "id" in x), None)
        if ask is None:
            return None
        return next((x for x in self.received if x.get("id") == ask["id"]
                     and "method" not in x), None)

    def agent_requests(self, method: str) -> list[tuple[Message, Message | None]]:
        """The agent's `method` requests, each with the daemon's answer."""
        out = []
        for ask in self.received:
            if ask.get("method") == method and "id" in ask:
                reply = next((x for x in self.sent if x.get("id") == ask["id"]
                              and "method" not in x), None)
                out.append((ask, reply))
        return out

    def updates(self, kind: str) -> list[Message]:
        return [x["params"]["update"] for x in self.received
                if x.get("method") == "session/update"
                and x["params"]["update"].get("sessionUpdate") == kind]

    def longest_line(self) -> int:
        path = Path(f"{self.stem}.out.ndjson")
        if not path.exists():
            return 0
        return max((len(line) for line in path.read_bytes().splitlines()), default=0)


@dataclass
class TracedDaemon:
    daemon: DaemonProcess
    trace_dir: Path
    workspace: Path
    checked: dict[str, int] = field(default_factory=dict)

    def generations(self, agent: str) -> list[Generation]:
        """Recorded processes of `agent`, oldest first (by the first line's mtime)."""
        stems = [s for s in traces(self.trace_dir) if s.name.startswith(f"{agent}.")]
        stems.sort(key=lambda s: Path(f"{s}.in.ndjson").stat().st_mtime_ns)
        return [Generation(s, *read_trace(s)) for s in stems]

    def validate(self) -> dict[str, int]:
        """Schema-check every message the daemon sent to any agent; what was checked."""
        schema = ClientSchema()
        for stem in traces(self.trace_dir):
            sent, received = read_trace(stem)
            try:
                schema.validate(sent, received)
            except Exception as exc:
                raise AssertionError(f"{stem}: the daemon sent an invalid message: "
                                     f"{exc}") from exc
        self.checked = schema.checked
        return schema.checked


def traced_command(trace_dir: Path, name: str, argv: list[str]) -> list[str]:
    return tee_command(trace_dir / name, argv)


# --------------------------------------------------------------------------- fixtures


def installed_or_skip(tool: NpmTool) -> Installed:
    """`ensure(tool)`, skipping the test (with the reason) when there is no binary."""
    installed = ensure(tool)
    if installed.binary is None:
        pytest.skip(installed.skip_reason)
    if installed.fresh:
        print(f"\ninstalled {installed.tool.spec} in {installed.seconds:.1f}s")
    return installed


def rig_dirs(daemon: DaemonProcess) -> tuple[Path, Path, Path]:
    """The trace dir, the agent's HOME and its workspace (under /tmp: no git repository
    around it), made under the daemon's base."""
    dirs = daemon.base / "trace", daemon.base / "home", daemon.base / "ws"
    for directory in dirs:
        directory.mkdir(parents=True)
    return dirs


def start_traced(daemon: DaemonProcess, trace_dir: Path, agent: str, argv: list[str],
                 env: dict[str, str], extra: str = "") -> None:
    """Configure `agent` (run as `argv` under the tee, recording into `trace_dir`, with
    `env` on top of the daemon's environment; `extra` config after it) and start the
    daemon."""
    daemon.write_config(agent_table(agent, traced_command(trace_dir, agent, argv), env)
                        + extra)
    daemon.start()


def finish_rig(rig: TracedDaemon, errors: list[Any] | None = None) -> None:
    """Fixture teardown: print the daemon log's tail (pytest shows it only when the test
    failed), fail on `errors` (what a helper such as the fake LLM found wrong), and
    schema-check every message the daemon sent (at least an `initialize`)."""
    print(f"--- daemon log (tail) ---\n{rig.daemon.log_text()[-6000:]}")
    assert not errors, errors
    checked = rig.validate()
    assert checked.get("initialize", 0) >= 1, checked


# --------------------------------------------------------------------------- driving


@dataclass
class TurnLog:
    """A turn seen live, with timing."""

    turn: int
    deltas: list[d.Delta] = field(default_factory=list)
    sent_at: float = 0.0
    first_text_at: float | None = None
    ended_at: float = 0.0

    @property
    def text(self) -> str:
        return "".join(x.body.text for x in self.deltas if isinstance(x.body, d.Text))

    def of(self, kind: type[Any]) -> list[Any]:
        return [x.body for x in self.deltas if isinstance(x.body, kind)]

    @property
    def ended(self) -> d.TurnEnded:
        ends = self.of(d.TurnEnded)
        assert len(ends) == 1, f"expected exactly one turn_ended, got {len(ends)}"
        ended: d.TurnEnded = ends[0]
        return ended

    @property
    def first_chunk_latency(self) -> float | None:
        return None if self.first_text_at is None else self.first_text_at - self.sent_at


async def run_turn(client: Client, chat: str, text: str, *, timeout: float = 120.0,
                   on_delta: Callable[[d.Delta], Any] | None = None) -> TurnLog:
    """Prompt and follow the turn until its `turn_ended`. The caller must already be
    subscribed to `chat`. `on_delta` may be async (e.g. to answer a permission request)."""
    sent_at = trio.current_time()
    accepted: m.PromptAccepted = await client.request(m.Prompt(id=0, chat=chat, text=text))
    log = TurnLog(accepted.turn, sent_at=sent_at)
    with trio.fail_after(timeout):
        while True:
            event = await client.next_event()
            if not isinstance(event, d.Delta) or event.chat != chat:
                continue
            if event.turn not in (accepted.turn, 0):
                continue
            log.deltas.append(event)
            if (log.first_text_at is None and isinstance(event.body, d.Text)
                    and event.body.text):
                log.first_text_at = trio.current_time()
            if on_delta is not None:
                result = on_delta(event)
                if hasattr(result, "__await__"):
                    await result
            if isinstance(event.body, d.TurnEnded) and event.turn == accepted.turn:
                log.ended_at = trio.current_time()
                return log


async def open_subscribed(client: Client, chat: str | None, agent: str, cwd: Path,
                          **kwargs: Any) -> m.ChatInfo:
    info: m.ChatInfo = await client.request(m.OpenChat(id=0, chat=chat, agent=agent,
                                                       cwd=str(cwd), **kwargs))
    await subscribe(client, info.chat)
    return info


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll a cheap synchronous condition (e.g. on trace files) until it holds."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")




# --------------------------------------------------------------------------- shared processes


@contextlib.contextmanager
def module_daemon(config: str = "") -> Iterator[DaemonProcess]:
    """A daemon (not started) that outlives one test, e.g. a module's warm one, with the
    `daemon_factory` fixture's teardown: stop it, fail when an agent process outlived it,
    remove its directories."""
    daemon = DaemonProcess(config=config)
    problems: list[str] = []
    try:
        yield daemon
    finally:
        try:
            daemon.stop()
        except AssertionError as exc:
            problems.append(str(exc))
        leaked = daemon.cleanup()
        if leaked:
            problems.append(f"agent processes outlived the daemon: {leaked}\n"
                            f"{daemon.log_text()[-3000:]}")
        daemon.remove()
    if problems:
        pytest.fail("\n".join(problems))


def user_texts(body: JSON) -> list[str]:
    """The text of every user message in a chat-completions request."""
    out: list[str] = []
    for message in body.get("messages", []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.append("".join(str(p.get("text", "")) for p in content if isinstance(p, dict)))
    return out


MARKER = re.compile(r"MARK-[A-Z0-9]+")
"""A fact only one chat was told: what a test looks for in another chat's history."""


def echo_markers(hold: threading.Event | None = None) -> Dynamic:
    """A scripted reply that names every marker in the user messages the model was sent
    (the conversation as the agent holds it), in order: "seen MARK-A1 MARK-A2". With `hold`,
    the first piece only, until the event is set."""

    def build(body: JSON) -> Text:
        found = [x for text in user_texts(body) for x in MARKER.findall(text)]
        return Text("seen " + " ".join(dict.fromkeys(found)), chunks=3, hold=hold)

    return Dynamic(build)


def markers(text: str) -> list[str]:
    return MARKER.findall(text)


async def interleaved_turns(daemon: DaemonProcess, llm: FakeLLM, workspace: Path,
                            agent: str) -> None:
    """Two chats of a shared `agent` prompted at once, both turns open together (the model
    holds each answer's first piece until both requests came in): each chat's turn streams
    only its own deltas, with only its own marker, and both chats keep one process."""
    started = time.perf_counter()
    before = len(llm.main_requests())
    gate = threading.Event()
    llm.script(echo_markers(hold=gate), echo_markers(hold=gate))
    logs: dict[str, TurnLog] = {}

    async def turn(client: Client, chat: str, marker: str) -> None:
        logs[chat] = await run_turn(client, chat, f"Only this chat knows {marker}.")

    # A connection per chat: `run_turn` reads its chat's deltas and drops the rest.
    async with daemon.client("e2e-a") as one, daemon.client("e2e-b") as two:
        a = (await open_subscribed(one, None, agent, workspace)).chat
        b = (await open_subscribed(two, None, agent, workspace)).chat
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(turn, one, a, "MARK-A9")
                nursery.start_soon(turn, two, b, "MARK-B9")
                await trio.to_thread.run_sync(lambda: llm.wait_for(
                    lambda rs: sum(r.main for r in rs) >= before + 2, timeout=120))
                gate.set()  # both turns are open at the model now
        finally:
            gate.set()
        for chat, marker in ((a, "MARK-A9"), (b, "MARK-B9")):
            log = logs[chat]
            assert log.ended.stop_reason == "end_turn", log.ended
            assert markers(log.text) == [marker], f"{chat}: {log.text!r}"
            assert {x.chat for x in log.deltas} == {chat}
        pids = {(await actor(one, chat, agent)).pid for chat in (a, b)}
        assert len(pids) == 1, f"two chats of a shared {agent}, two processes: {pids}"
    print(f"\n{agent}: interleaved turns of two chats took "
          f"{time.perf_counter() - started:.1f}s")


async def separate_histories(rig: TracedDaemon, llm: FakeLLM, client: Client,
                             agent: str) -> float:
    """Two chats of a shared `agent`: one process (as `inspect`, `ls` and the recorded
    traffic tell), two ACP sessions, warm turns, and neither chat sees the other's history
    (the model is asked to name the markers it was sent). The warm first-chunk latency."""
    a = (await open_subscribed(client, None, agent, rig.workspace)).chat
    b = (await open_subscribed(client, None, agent, rig.workspace)).chat
    for chat in (a, b):
        warm: m.ActorDetail = await client.request(m.Warm(id=0, chat=chat))
        assert warm.state == "ready", warm
    one, two = await actor(client, a, agent), await actor(client, b, agent)
    assert one.pid is not None
    assert one.pid == two.pid, f"the two chats run in one {agent} process"
    assert one.process is not None, "inspect names the shared process"
    assert two.process is not None, "inspect names the shared process"
    assert one.process.id == two.process.id
    assert one.process.pid == one.pid
    assert two.process.sessions >= 2
    assert one.session_id
    assert two.session_id
    assert one.session_id != two.session_id, "each chat has its own ACP session"
    # The recorded traffic agrees: one process created both sessions after one initialize.
    holding = [g for g in rig.generations(agent)
               if {one.session_id, two.session_id} & set(g.new_sessions())]
    assert len(holding) == 1, [g.stem.name for g in holding]
    assert {one.session_id, two.session_id} <= set(holding[0].new_sessions())
    assert holding[0].methods().count("initialize") == 1

    llm.script(echo_markers())
    told = await run_turn(client, a, "Remember the code word MARK-A1.")
    assert told.ended.stop_reason == "end_turn", told.ended
    assert markers(told.text) == ["MARK-A1"], told.text

    llm.script(echo_markers())
    other = await run_turn(client, b, "Here is my own word: MARK-B1.")
    assert other.ended.stop_reason == "end_turn", other.ended
    assert markers(other.text) == ["MARK-B1"], f"chat B saw chat A's history: {other.text!r}"
    sent_for_b = json.dumps(llm.main_requests()[-1].body)
    assert "MARK-A1" not in sent_for_b, f"{agent} sent A's history with B's turn"

    # A warm turn in A still has A's history (and only A's).
    llm.script(echo_markers())
    again = await run_turn(client, a, "And now MARK-A2: what did I tell you?")
    assert again.ended.stop_reason == "end_turn", again.ended
    assert markers(again.text) == ["MARK-A1", "MARK-A2"], again.text
    assert "MARK-B1" not in json.dumps(llm.main_requests()[-1].body)

    after_a, after_b = await actor(client, a, agent), await actor(client, b, agent)
    assert (after_a.pid, after_b.pid) == (one.pid, one.pid), "still the one process"
    assert (after_a.generation, after_b.generation) == (one.generation, two.generation)
    assert (after_a.turns, after_b.turns) == (2, 1)
    listed: m.ChatList = await client.request(m.ListChats(id=0))
    shown = {c.chat: (c.pid, c.process.id if c.process else None)
             for c in listed.chats if c.chat in (a, b)}
    assert shown == {a: (one.pid, one.process.id), b: (one.pid, one.process.id)}, shown
    latency = again.first_chunk_latency
    assert latency is not None
    return latency

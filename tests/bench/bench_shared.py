"""Scenario: shared agent processes (issue 23), with the real `qwen --acp` against the
scripted loopback LLM of the e2e tests (`tests/e2e/fake_llm.py`).

For each process mode of the agent, `per-chat` (one qwen per chat, the default) and `shared`
(the chats share one qwen, each with its own ACP session), on a fresh daemon:

* **memory**: 16 chats warmed (each served one turn), then the daemon and its whole agent
  process tree read with psutil once they are quiet: RSS summed over processes (counts a
  page shared by two node processes twice) and PSS (each shared page split among its
  sharers: what the chats really cost the machine). Per-chat / shared is the saving (goal:
  >= 8x).
* **warm first chunk**: prompt to first non-empty text delta of warm turns, round-robin
  over the 16 chats, each interleaved with a turn of one qwen driven directly over stdio
  (`direct.py`, the floor of the other scenarios) started beside the daemon.
* **kill -9 with open turns**: all 16 chats prompted at once; the scripted model sends each
  turn's first piece and holds the rest; once every chat has streamed its first piece, every
  agent process group is killed (16 in per-chat mode, the one shared process in shared
  mode). Counted: turns that ended (live, and exactly once in each chat's log), the time
  from the kill to the last `turn_ended`, and the time until every chat's next prompt was
  answered (the daemon restarts the agent and resumes each session).

Until the daemon has `process = "shared"`, the shared half is reported as not available
and the per-chat half runs alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import trio

from protocol import deltas as d
from protocol import messages as m
from tests.e2e.agents import QWEN, QWEN_ARGS, QWEN_SETTINGS, ensure, qwen_env
from tests.e2e.fake_llm import FakeLLM, Text
from tests.e2e.rig import agent_table, shared_process_missing
from tests.support.harness import actor, replay, subscribe

from .common import (
    BenchDaemon,
    Context,
    Result,
    bench_config,
    median,
    ms,
    percentile,
    tree_cpu,
)
from .direct import DirectAgent, direct_agent
from .wire import TimedClient, timed_client

AGENT = "qwen"
CHATS = 16
PROMPT = "say hello"
REPLY = "Hello from the scripted model, streamed in pieces."
WARM_AT_ONCE = 4
"""Cold starts run this many at a time while warming (16 node starts at once on a small
machine only make each slower)."""
MODES = ("per-chat", "shared")


@dataclass
class Memory:
    """One psutil reading of the daemon and its agent process tree, in bytes."""

    daemon_rss: int = 0
    daemon_pss: int = 0
    agents_rss: int = 0
    agents_pss: int = 0
    agent_processes: int = 0
    mcp_rss: int = 0
    """Of `agents_rss`: Stoker's own MCP servers (`daemon.cli mcp --chat ID`), which each
    agent starts once per session (`tasks.mcp`), in either mode."""
    mcp_pss: int = 0
    mcp_processes: int = 0

    @property
    def total_rss(self) -> int:
        return self.daemon_rss + self.agents_rss

    @property
    def total_pss(self) -> int:
        return self.daemon_pss + self.agents_pss


@dataclass
class Kill:
    """What `kill -9` of the agent processes with every chat's turn open did."""

    groups: int = 0
    open_turns: int = 0
    ended_live: int = 0
    ended_with_error: int = 0
    ended_once_in_log: int = 0
    to_all_ended_ms: float = 0.0
    next_turns_ok: int = 0
    next_turn_failures: list[str] = field(default_factory=list)
    """How the next turns that did not end with `end_turn` ended."""
    sessions_resumed: int = 0
    to_all_answered_s: float = 0.0


@dataclass
class ModeRun:
    mode: str
    processes: int = 0
    """Distinct agent pids the 16 chats report in `inspect`."""
    warm_s: float = 0.0
    memory: Memory = field(default_factory=Memory)
    first_chunk_ms: list[float] = field(default_factory=list)
    direct_ms: list[float] = field(default_factory=list)
    kill: Kill = field(default_factory=Kill)
    mcp_at_warm: int = 0
    """Stoker MCP servers (one per session) running when memory was read."""
    mcp_before_kill: int = 0
    log: str = ""
    """Where the daemon's log was copied."""


# ----------------------------------------------------------------------------- readings


def read_memory(daemon: BenchDaemon) -> Memory:
    """The daemon's own RSS/PSS and the sums over every process below it (the agents, and
    whatever they started)."""
    memory = Memory()
    root = daemon.process()
    info = root.memory_full_info()
    memory.daemon_rss, memory.daemon_pss = int(info.rss), int(info.pss)
    for child in root.children(recursive=True):
        try:
            info = child.memory_full_info()
        except psutil.Error:
            continue  # gone between the listing and the reading
        memory.agents_rss += int(info.rss)
        memory.agents_pss += int(info.pss)
        memory.agent_processes += 1
        if is_stoker_mcp(child):
            memory.mcp_rss += int(info.rss)
            memory.mcp_pss += int(info.pss)
            memory.mcp_processes += 1
    return memory


def is_stoker_mcp(proc: psutil.Process) -> bool:
    """Stoker's MCP server, as `daemon.mcp.offer` has agents start it."""
    try:
        argv = proc.cmdline()
    except psutil.Error:
        return False
    return any(argv[i:i + 3] == ["daemon.cli", "mcp", "--chat"] for i in range(len(argv)))


def mcp_chats(daemon: BenchDaemon) -> set[str]:
    """The chats whose Stoker MCP server runs below the daemon now."""
    chats = set()
    for child in daemon.process().children(recursive=True):
        if is_stoker_mcp(child):
            with contextlib.suppress(psutil.Error):
                chats.add(child.cmdline()[-1])
    return chats


async def mcp_servers_up(daemon: BenchDaemon, count: int, timeout: float = 60.0) -> int:
    """Wait (until `timeout`) for `count` chats' MCP servers: an agent starts a session's
    servers in the background, so a reading right after the sessions were set up may miss
    some. How many run."""
    with trio.move_on_after(timeout):
        while len(mcp_chats(daemon)) < count:
            await trio.sleep(0.2)
    return len(mcp_chats(daemon))


def daemon_tree_cpu(daemon: BenchDaemon) -> float:
    return tree_cpu(daemon.process())


async def settled_tree(daemon: BenchDaemon, quiet: float = 0.02, interval: float = 0.25,
                       timeout: float = 15.0) -> None:
    """Wait until the daemon and its agents together used less than `quiet` CPU seconds in
    the last `interval` (their start-up work and garbage collection are done), or until
    `timeout`."""
    last = daemon_tree_cpu(daemon)
    with trio.move_on_after(timeout):
        while True:
            await trio.sleep(interval)
            now = daemon_tree_cpu(daemon)
            if now - last < quiet:
                return
            last = now


# ----------------------------------------------------------------------------- turns


class Ledger:
    """Every delta of the chats one `TimedClient` is subscribed to, by (chat, turn)."""

    def __init__(self, client: TimedClient) -> None:
        self.client = client
        self.first_text: dict[tuple[str, int], float] = {}
        self.ended: dict[tuple[str, int], list[d.TurnEnded]] = {}
        self.ended_at: dict[tuple[str, int], float] = {}

    async def pump_until(self, done: Callable[[], bool], timeout: float) -> None:
        """Read events until `done()` holds."""
        with trio.fail_after(timeout):
            while not done():
                event = await self.client.next_event(timeout=timeout)
                if not isinstance(event, d.Delta):
                    continue
                key = (event.chat, event.turn)
                if isinstance(event.body, d.Text) and event.body.text:
                    self.first_text.setdefault(key, time.perf_counter())
                elif isinstance(event.body, d.TurnEnded):
                    self.ended.setdefault(key, []).append(event.body)
                    self.ended_at[key] = time.perf_counter()

    async def prompt_all(self, chats: Sequence[str], text: str) -> list[tuple[str, int]]:
        keys = []
        for chat in chats:
            accepted: m.PromptAccepted = await self.client.request(
                m.Prompt(id=0, chat=chat, text=text))
            keys.append((chat, accepted.turn))
        return keys


async def daemon_first_chunk(client: TimedClient, chat: str, timeout: float) -> float:
    """One warm turn; seconds from sending the prompt to its first non-empty text."""
    client.stamps.clear()
    sent = time.perf_counter()
    accepted: m.PromptAccepted = await client.request(m.Prompt(id=0, chat=chat, text=PROMPT))
    while True:
        event = await client.next_event(timeout=timeout)
        if (isinstance(event, d.Delta) and event.chat == chat and event.turn == accepted.turn
                and isinstance(event.body, d.TurnEnded)):
            if event.body.error:
                raise RuntimeError(f"turn failed: {event.body.error}")
            break
    first = next(t for t, x in client.stamps
                 if x.chat == chat and x.turn == accepted.turn
                 and isinstance(x.body, d.Text) and x.body.text)
    return first - sent


async def direct_first_chunk(agent: DirectAgent, timeout: float) -> float:
    turn = await agent.prompt(PROMPT, timeout=timeout)
    assert turn.first_chunk is not None, turn
    return turn.first_chunk - turn.sent


# ----------------------------------------------------------------------------- one mode


async def _warm(client: TimedClient, chats: Sequence[str]) -> None:
    limit = trio.Semaphore(WARM_AT_ONCE)

    async def one(chat: str) -> None:
        async with limit:
            await client.request(m.Warm(id=0, chat=chat))

    async with trio.open_nursery() as nursery:
        for chat in chats:
            nursery.start_soon(one, chat)


async def _kill_with_open_turns(client: TimedClient, socket: Path, chats: Sequence[str],
                                llm: FakeLLM, timeout: float) -> Kill:
    kill = Kill()
    ledger = Ledger(client)
    gate = threading.Event()
    llm.script(*[Text(REPLY, chunks=4, hold=gate) for _ in chats])
    before = {chat: await actor(client, chat, AGENT) for chat in chats}
    try:
        open_turns = await ledger.prompt_all(chats, PROMPT)
        kill.open_turns = len(open_turns)
        await ledger.pump_until(lambda: all(k in ledger.first_text for k in open_turns),
                                timeout)
        groups = {a.pgid for a in before.values() if a.pgid is not None}
        kill.groups = len(groups)
        killed_at = time.perf_counter()
        for pgid in groups:
            os.killpg(pgid, signal.SIGKILL)
        await ledger.pump_until(lambda: all(k in ledger.ended for k in open_turns), timeout)
    finally:
        gate.set()  # the held replies' threads finish (into closed connections)
    kill.ended_live = sum(len(ledger.ended.get(k, [])) for k in open_turns)
    kill.ended_with_error = sum(1 for k in open_turns
                                if any(e.error for e in ledger.ended.get(k, [])))
    kill.to_all_ended_ms = ms(max(ledger.ended_at[k] for k in open_turns) - killed_at)

    next_turns = await ledger.prompt_all(chats, PROMPT)
    await ledger.pump_until(lambda: all(k in ledger.ended for k in next_turns), timeout)
    kill.to_all_answered_s = max(ledger.ended_at[k] for k in next_turns) - killed_at
    kill.next_turns_ok = sum(1 for k in next_turns
                             if [e.stop_reason for e in ledger.ended[k]] == ["end_turn"])
    kill.next_turn_failures = [f"{k[0]}: {e.stop_reason} {e.error}" for k in next_turns
                               for e in ledger.ended[k] if e.stop_reason != "end_turn"]
    for chat in chats:
        after = await actor(client, chat, AGENT)
        if after.session_id == before[chat].session_id and after.generation > before[
                chat].generation:
            kill.sessions_resumed += 1
    # Exactly once, as the log has it (what any later subscriber replays).
    async with timed_client(socket, "bench-shared-replay") as reader:
        for chat, turn in open_turns:
            ends = [x for x in await replay(reader, chat)
                    if x.turn == turn and isinstance(x.body, d.TurnEnded)]
            kill.ended_once_in_log += len(ends) == 1
    return kill


async def _run_mode(ctx: Context, mode: str, argv: list[str], llm: FakeLLM) -> ModeRun:
    run = ModeRun(mode)
    rounds = 1 if ctx.quick else max(2, min(ctx.runs, 4))
    timeout = 300.0
    settings: dict[str, str | int] = (
        {"process": "shared", "sessions_per_process": CHATS} if mode == "shared" else {})
    daemon = BenchDaemon()
    try:
        home, workspace = daemon.base / "home", daemon.base / "ws"
        for directory in (home / ".qwen", workspace):
            directory.mkdir(parents=True)
        (home / ".qwen" / "settings.json").write_text(json.dumps(QWEN_SETTINGS))
        env = qwen_env(llm.base_url, home, api_key="bench-key")
        daemon.write_config(
            bench_config(max_warm=CHATS + 4, restart_backoff="0s", restart_max=10,
                         lifecycle_extra='memory_budget = "90%"\n')
            + agent_table(AGENT, argv, env, **settings))
        daemon.start_bench()
        async with timed_client(daemon.socket, "bench-shared") as client, \
                direct_agent(argv, env=env, cwd=str(workspace)) as direct:
            chats = []
            for index in range(CHATS):
                info: m.ChatInfo = await client.request(m.OpenChat(
                    id=0, chat=f"{mode}-{index}", agent=AGENT, cwd=str(workspace)))
                await subscribe(client, info.chat)
                chats.append(info.chat)
            started = time.perf_counter()
            await _warm(client, chats)
            await direct.open_session(str(workspace), timeout=timeout)
            for chat in chats:  # every chat serves one turn before it is measured
                await daemon_first_chunk(client, chat, timeout)
            run.warm_s = time.perf_counter() - started
            await direct_first_chunk(direct, timeout)
            pids = {(await actor(client, chat, AGENT)).pid for chat in chats}
            run.processes = len(pids)
            run.mcp_at_warm = await mcp_servers_up(daemon, CHATS)
            await settled_tree(daemon)
            run.memory = read_memory(daemon)
            ctx.say(f"  {mode}: {run.processes} agent process(es) for {CHATS} chats, "
                    f"{run.memory.agent_processes} in the tree ({run.mcp_at_warm} chats' "
                    f"MCP servers), PSS "
                    f"{run.memory.total_pss / 2**20:.0f} MiB, RSS "
                    f"{run.memory.total_rss / 2**20:.0f} MiB (warmed in {run.warm_s:.1f}s)")
            for _ in range(rounds):
                for chat in chats:
                    run.first_chunk_ms.append(ms(await daemon_first_chunk(client, chat,
                                                                          timeout)))
                    run.direct_ms.append(ms(await direct_first_chunk(direct, timeout)))
            ctx.say(f"  {mode}: warm first chunk p50 {median(run.first_chunk_ms):.1f} ms, "
                    f"direct {median(run.direct_ms):.1f} ms")
            run.mcp_before_kill = len(mcp_chats(daemon))
            run.kill = await _kill_with_open_turns(client, daemon.socket, chats, llm, timeout)
            ctx.say(f"  {mode}: kill -9 of {run.kill.groups} process group(s) with "
                    f"{run.kill.open_turns} open turns: {run.kill.ended_live} ended "
                    f"({run.kill.ended_once_in_log} exactly once in the log) in "
                    f"{run.kill.to_all_ended_ms:.0f} ms; {run.kill.next_turns_ok} next turns "
                    f"answered after {run.kill.to_all_answered_s:.1f}s")
    finally:
        # The daemon's log, for a look at what a figure cannot say (e.g. a failed turn).
        with contextlib.suppress(OSError):
            run.log = str(Path(tempfile.gettempdir()) / f"stoker-bench-shared-{mode}.log")
            shutil.copyfile(daemon.log_path, run.log)
        daemon.close()
    return run


# ----------------------------------------------------------------------------- report


def _equals(count: int) -> Callable[[float], bool]:
    return lambda value: value == count


def _report(result: Result, runs: dict[str, ModeRun]) -> None:
    for mode, run in runs.items():
        mem = run.memory
        result.add(f"{mode}: agent processes for {CHATS} chats", run.processes, "",
                   note=f"{mem.agent_processes} processes in the daemon's tree")
        result.add(f"{mode}: daemon + agents PSS", mem.total_pss / 2**20, "MiB")
        result.add(f"{mode}: daemon + agents RSS (summed)", mem.total_rss / 2**20, "MiB")
        result.add(f"{mode}: daemon PSS", mem.daemon_pss / 2**20, "MiB")
        result.add(f"{mode}: agent processes alone PSS",
                   (mem.agents_pss - mem.mcp_pss) / 2**20, "MiB",
                   note=f"{mem.agent_processes - mem.mcp_processes} processes")
        result.add(f"{mode}: Stoker MCP servers PSS (one per session)", mem.mcp_pss / 2**20,
                   "MiB", note=f"{mem.mcp_processes} processes; {run.mcp_at_warm} chats' "
                               f"servers up then, {run.mcp_before_kill} before the kill")
        result.add(f"{mode}: PSS per chat", mem.total_pss / CHATS / 2**20, "MiB")
        result.add(f"{mode}: warm first chunk p50", median(run.first_chunk_ms), "ms")
        result.add(f"{mode}: warm first chunk p90", percentile(run.first_chunk_ms, 90), "ms")
        result.add(f"{mode}: warm first chunk p50, direct (floor)", median(run.direct_ms),
                   "ms")
        result.add(f"{mode}: warm first chunk p50, ratio daemon/direct",
                   median(run.first_chunk_ms) / median(run.direct_ms), "x")
        k = run.kill
        result.add(f"{mode}: kill -9: open turns ended (of {k.open_turns})", k.ended_live, "",
                   target=f"== {k.open_turns}", check=_equals(k.open_turns),
                   note=f"{k.groups} process group(s) killed; {k.ended_with_error} with an "
                        f"error; {k.ended_once_in_log} exactly once in the log")
        result.add(f"{mode}: kill -9 -> every open turn ended", k.to_all_ended_ms, "ms")
        result.add(f"{mode}: kill -9: next turns answered (of {CHATS})", k.next_turns_ok, "",
                   target=f"== {CHATS}", check=_equals(CHATS))
        result.add(f"{mode}: kill -9 -> every chat's next turn answered",
                   k.to_all_answered_s * 1000, "ms",
                   note=f"{k.next_turns_ok} of {CHATS} answered, {k.sessions_resumed} "
                        f"sessions resumed"
                        + (f"; first failure: {k.next_turn_failures[0][:120]}"
                           if k.next_turn_failures else ""))
        result.add(f"{mode}: warm-up of {CHATS} chats (cold starts + one turn each)",
                   run.warm_s * 1000, "ms")
    per, shared = runs.get("per-chat"), runs.get("shared")
    if per is None or shared is None:
        return
    result.add("memory ratio per-chat/shared (PSS)",
               per.memory.total_pss / shared.memory.total_pss, "x", target=">= 8 x",
               check=lambda v: v >= 8.0)
    result.add("memory ratio per-chat/shared, agent processes alone (PSS)",
               (per.memory.agents_pss - per.memory.mcp_pss)
               / (shared.memory.agents_pss - shared.memory.mcp_pss), "x",
               note="without Stoker's per-session MCP servers")
    result.add("memory ratio per-chat/shared (RSS summed)",
               per.memory.total_rss / shared.memory.total_rss, "x")
    result.add("warm first chunk p50 ratio shared/per-chat",
               median(shared.first_chunk_ms) / median(per.first_chunk_ms), "x")


def _detail(run: ModeRun) -> dict[str, Any]:
    return {"processes": run.processes, "warm_s": run.warm_s,
            "log": run.log, "mcp_at_warm": run.mcp_at_warm, "mcp_before_kill": run.mcp_before_kill,
            "memory": {**run.memory.__dict__, "total_rss": run.memory.total_rss,
                       "total_pss": run.memory.total_pss},
            "first_chunk_ms": run.first_chunk_ms, "direct_ms": run.direct_ms,
            "kill": run.kill.__dict__}


async def run(ctx: Context) -> Result:
    result = Result("shared", f"Shared agent processes ({CHATS} warm qwen chats: per-chat "
                              "vs. shared)")
    installed = ensure(QWEN)
    if installed.binary is None:
        result.skipped.append(installed.skip_reason)
        return result
    argv = [str(installed.binary), *QWEN_ARGS]
    missing = shared_process_missing()
    runs: dict[str, ModeRun] = {}
    with FakeLLM(default=REPLY) as llm:
        for mode in MODES:
            if mode == "shared" and missing is not None:
                continue
            runs[mode] = await _run_mode(ctx, mode, argv, llm)
        result.detail = {"chats": CHATS, "qwen": installed.tool.version,
                         "llm_errors": llm.errors,
                         "modes": {mode: _detail(r) for mode, r in runs.items()}}
    _report(result, runs)
    if missing is not None:
        result.skipped.append(f"shared mode not available: {missing}")
        result.add("memory ratio per-chat/shared (PSS)", None, "x", target=">= 8 x",
                   note="shared mode not available")
    return result

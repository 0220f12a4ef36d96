"""Scenario 6, restart: `kill -9` of an agent, and of the daemon, to ready again.

The agent (what the lifecycle supervisor does, and what the target is about): `kill -9` of
a warm, idle `echo` agent, to the actor's `status: ready` delta for the new generation
(crash noticed, process tree reaped, respawn, initialize, session/resume). The restart
backoff is set to 0 for this measurement: its first step (0.5 s by default) is a deliberate
policy delay, not overhead (and the intensity limit is raised so that the runs are not
stopped by it). The agent's own cold start (spawn, initialize, session/new),
measured directly over stdio in the same run, is subtracted.

The daemon, per run: kill -9 the daemon (its agent is orphaned), start a new one, and time
* kill -> ready: the new daemon says READY=1 on its `$NOTIFY_SOCKET`, as it does to systemd
  once its listener serves (interpreter, imports, SQLite, state load,
  orphan reclaim);
* kill -> chat warm again: a `warm` request sent at ready returns (respawn, initialize,
  session/resume);
* kill -> first chunk of a prompt sent once warm.
The agent's own cold start (spawn, initialize, session/new, first chunk), measured directly
over stdio in the same run, is subtracted: what is left is what the restart adds. The
interpreter's start and the daemon's imports are timed separately, as components.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import trio

from protocol import deltas as d
from protocol import messages as m
from tests.support.harness import ROOT, actor, subscribe

from .bench_replay import fill_chat
from .common import ECHO_ARGV, BenchDaemon, Context, Result, bench_config, median, ms
from .direct import direct_agent
from .wire import TimedClient, timed_client


async def _with_big_log(ctx: Context, daemon: BenchDaemon) -> dict[str, float] | None:
    """kill -9 -> ready again with a large delta log (10 chats x 100k deltas, the default
    retention per chat): what the startup work that scales with the log costs. Full runs
    only (filling takes a while)."""
    if ctx.quick:
        return None
    chats, per_chat = 10, 100_000
    for _ in range(chats):
        await fill_chat(daemon, per_chat)
    times: list[float] = []
    for index in range(4):
        await daemon.settled_cpu()  # idle: the last run's work is done
        killed = time.perf_counter()
        daemon.kill9()
        daemon.start(log_level="info", wait=False)
        ready = daemon.wait_ready(30)
        if index:
            times.append(ms(ready - killed))
    ctx.say(f"  with {chats * per_chat} deltas logged: kill->ready {median(times):.0f} ms")
    return {"deltas": chats * per_chat, "kill_to_ready": median(times)}


EVERY_IMPORT = ("import daemon.cli.main, daemon.cli.chat, daemon.service.root; "
                "daemon.cli.main.build_parser()")
"""What `stoker daemon` imports before it can start: the CLI (all its subcommands), the
server, and every subsystem (the root's tree imports each, enabled or not)."""


def _process_seconds(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


async def _first_chunk(daemon: BenchDaemon, chat: str) -> tuple[float, float]:
    """(chat warm again, first chunk of a prompt) as perf_counter times."""
    async with timed_client(daemon.socket) as client:
        await subscribe(client, chat)
        await client.request(m.Warm(id=0, chat=chat))
        warm = time.perf_counter()
        return warm, (await client.timed_turn(chat, "hello again")).first_chunk


async def _wait_status(client: TimedClient, chat: str, state: str, generation: int,
                       timeout: float = 30.0) -> float:
    """The arrival time of the actor's `status` delta with `state` in a generation after
    `generation`."""
    with trio.fail_after(timeout):
        while True:
            for stamp, delta in client.stamps:
                body = delta.body
                if (delta.chat == chat and isinstance(body, d.Status) and body.state == state
                        and body.generation > generation):
                    return stamp
            await client.next_event()


async def _agent_restarts(ctx: Context, runs: int) -> list[dict[str, float]]:
    """kill -9 of the agent -> the actor ready again, per run, with the agent's own cold
    start measured directly right after."""
    rows: list[dict[str, float]] = []
    daemon = BenchDaemon(config=bench_config(restart_backoff="0s", restart_max=1000))
    try:
        daemon.start_bench()
        async with timed_client(daemon.socket) as client:
            info: m.ChatInfo = await client.request(m.OpenChat(id=0, agent="echo",
                                                               cwd=str(daemon.work)))
            await subscribe(client, info.chat)
            await client.request(m.Warm(id=0, chat=info.chat))
            for index in range(runs + 1):
                await daemon.settled_cpu()  # idle: the last run's work is done
                detail = await actor(client, info.chat)
                if detail.pid is None or detail.state != "ready":
                    raise RuntimeError(f"the actor is not ready: {detail}")
                client.stamps.clear()
                killed = time.perf_counter()
                os.kill(detail.pid, signal.SIGKILL)
                crashed = await _wait_status(client, info.chat, "crashed",
                                             detail.generation - 1)
                ready = await _wait_status(client, info.chat, "ready", detail.generation)
                async with direct_agent(ECHO_ARGV, cwd=str(daemon.work)) as agent:
                    await agent.open_session(str(daemon.work))
                if index == 0:
                    continue  # warm-up
                rows.append({"kill_to_crashed": ms(crashed - killed),
                             "kill_to_ready": ms(ready - killed),
                             "agent_cold_session": ms(agent.session_at - agent.spawned)})
                ctx.say(f"  agent run {index}: kill->ready {rows[-1]['kill_to_ready']:.1f} "
                        f"ms, agent cold {rows[-1]['agent_cold_session']:.1f} ms")
    finally:
        daemon.close()
    return rows


TWO_PROCESS = ROOT / "tests" / "support" / "two_process_agent.py"


async def _crashes_mid_turn(ctx: Context, runs: int) -> dict[str, list[float]]:
    """kill -9 of a busy agent's leader -> its turn's `turn_ended` and its `crashed`
    status, as a subscriber sees them: the `echo` agent alone, and `two` (echo with a child
    in its process group that ignores SIGTERM and holds stderr; the default stop grace of
    5 s and restart backoff). The turn must end when the leader is gone and its stdout at
    EOF, not when the group is."""
    pidfile = ROOT / ".bench-two.pid"
    command = [sys.executable, str(TWO_PROCESS), str(pidfile), "stubborn"]
    extra = f"\n[agents.two]\ncommand = {json.dumps(command)}\n"
    daemon = BenchDaemon(config=bench_config(restart_max=1000, extra=extra))
    times: dict[str, list[float]] = {}
    try:
        daemon.start_bench()
        async with timed_client(daemon.socket) as client:
            for agent in ("echo", "two"):
                info: m.ChatInfo = await client.request(m.OpenChat(
                    id=0, agent=agent, cwd=str(daemon.work)))
                await subscribe(client, info.chat)
                ended_ms: list[float] = []
                crashed_ms: list[float] = []
                for index in range(runs + 1):
                    await client.request(m.Warm(id=0, chat=info.chat))
                    await daemon.settled_cpu()
                    client.stamps.clear()
                    accepted: m.PromptAccepted = await client.request(m.Prompt(
                        id=0, chat=info.chat, text="/sleep 60000"))
                    busy = await actor(client, info.chat, agent)
                    while busy.state != "busy":
                        await trio.sleep(0.005)
                        busy = await actor(client, info.chat, agent)
                    assert busy.pid is not None
                    killed = time.perf_counter()
                    os.kill(busy.pid, signal.SIGKILL)
                    crashed = await _wait_status(client, info.chat, "crashed",
                                                 busy.generation - 1)
                    with trio.fail_after(30):
                        while not any(isinstance(x.body, d.TurnEnded)
                                      and x.turn == accepted.turn for _, x in client.stamps):
                            await client.next_event()
                    ended = next(t for t, x in client.stamps
                                 if isinstance(x.body, d.TurnEnded) and x.turn == accepted.turn)
                    if index:
                        ended_ms.append(ms(ended - killed))
                        crashed_ms.append(ms(crashed - killed))
                times[f"{agent}_ended"] = ended_ms
                times[f"{agent}_crashed"] = crashed_ms
                ctx.say(f"  {agent}: kill -9 mid-turn -> turn_ended "
                        f"{median(ended_ms):.1f} ms (median of {runs})")
    finally:
        daemon.close()
        pidfile.unlink(missing_ok=True)
    return times


async def run(ctx: Context) -> Result:
    result = Result("restart", "Restart (kill -9 -> ready again)")
    crashes = await _crashes_mid_turn(ctx, 3 if ctx.quick else 7)
    for name, label in (("echo", "single-process echo"),
                        ("two", "two-process (a child ignoring SIGTERM)")):
        result.add(f"agent kill -9 mid-turn -> turn_ended, {label}",
                   median(crashes[f"{name}_ended"]), "ms",
                   target="<= 100 ms", check=lambda v: v <= 100)
        result.add(f"agent kill -9 mid-turn -> status crashed, {label}",
                   median(crashes[f"{name}_crashed"]), "ms")
    result.add("agent kill -9 mid-turn -> turn_ended, ratio two-process / single-process "
               "(floor)", median(crashes["two_ended"]) / median(crashes["echo_ended"]), "x")
    agent_rows = await _agent_restarts(ctx, 5 if ctx.quick else 15)

    def amed(key: str) -> float:
        return median([r[key] for r in agent_rows])

    result.add("agent kill -9 -> crash noticed (status crashed)", amed("kill_to_crashed"), "ms")
    result.add("agent kill -9 -> actor ready again (backoff 0)", amed("kill_to_ready"), "ms")
    result.add("agent's own cold start (spawn, initialize, session/new)",
               amed("agent_cold_session"), "ms")
    result.add("agent restart, ratio ready again / agent cold start (floor)",
               median([r["kill_to_ready"] / r["agent_cold_session"] for r in agent_rows]), "x")
    result.add("agent restart adds (ready again - agent cold start)",
               median([r["kill_to_ready"] - r["agent_cold_session"] for r in agent_rows]),
               "ms", target="<= 20 ms", check=lambda v: v <= 20)
    runs = 3 if ctx.quick else 7
    rows: list[dict[str, float]] = []
    daemon = BenchDaemon(config=bench_config())
    try:
        daemon.start_bench()
        async with daemon.client("bench-control") as client:
            info: m.ChatInfo = await client.request(m.OpenChat(id=0, agent="echo",
                                                               cwd=str(daemon.work)))
            await client.request(m.Prompt(id=0, chat=info.chat, text="first turn"))
            await client.request(m.Warm(id=0, chat=info.chat))
        for index in range(runs + 1):
            await daemon.settled_cpu()  # idle: the last run's work is done
            killed = time.perf_counter()
            daemon.kill9()
            daemon.start(log_level="info", wait=False)
            ready = daemon.wait_ready(30)
            warm, first = await _first_chunk(daemon, info.chat)
            async with direct_agent(ECHO_ARGV, cwd=str(daemon.work)) as agent:
                await agent.open_session(str(daemon.work))
                turn = await agent.prompt("hello again")
                assert turn.first_chunk is not None
            if index == 0:
                continue  # warm-up: page cache, the first reclaim
            rows.append({
                "kill_to_ready": ms(ready - killed),
                "kill_to_warm": ms(warm - killed),
                "kill_to_first_chunk": ms(first - killed),
                "agent_cold_session": ms(agent.session_at - agent.spawned),
                "agent_cold_first_chunk": ms(turn.first_chunk - agent.spawned),
            })
            ctx.say(f"  run {index}: kill->ready {rows[-1]['kill_to_ready']:.0f} ms, "
                    f"kill->warm {rows[-1]['kill_to_warm']:.0f} ms, agent cold "
                    f"{rows[-1]['agent_cold_session']:.0f} ms")
        big = await _with_big_log(ctx, daemon)
    finally:
        daemon.close()
    python = median([_process_seconds("pass") for _ in range(5)])
    imports = median([_process_seconds("import daemon.service.root") for _ in range(5)])
    everything = median([_process_seconds(EVERY_IMPORT) for _ in range(5)])

    def med(key: str) -> float:
        return median([r[key] for r in rows])

    added = median([r["kill_to_warm"] - r["agent_cold_session"] for r in rows])
    result.add("daemon kill -9 -> daemon ready", med("kill_to_ready"), "ms")
    result.add("daemon kill -9 -> chat warm again", med("kill_to_warm"), "ms")
    result.add("agent's own cold start, same runs", med("agent_cold_session"), "ms")
    result.add("daemon restart adds (chat warm again - agent cold start)", added, "ms")
    result.add("daemon restart, ratio chat warm again / agent cold start (floor)",
               median([r["kill_to_warm"] / r["agent_cold_session"] for r in rows]), "x")
    result.add("daemon kill -9 -> first chunk", med("kill_to_first_chunk"), "ms")
    result.add("agent's own cold first chunk", med("agent_cold_first_chunk"), "ms")
    result.add("daemon restart adds (first chunk)",
               median([r["kill_to_first_chunk"] - r["agent_cold_first_chunk"] for r in rows]),
               "ms")
    if big is not None:
        result.add(f"daemon kill -9 -> daemon ready, {big['deltas'] / 1e6:g}M deltas logged",
                   big["kill_to_ready"], "ms")
    result.add("component: interpreter start (python -c pass)", ms(python), "ms")
    result.add("component: interpreter + import daemon.service.root", ms(imports), "ms")
    result.add("component: interpreter + every module the daemon loads", ms(everything),
               "ms")
    result.add("component: the rest (state, reclaim, listeners; kill -> ready - imports)",
               med("kill_to_ready") - ms(everything), "ms")
    result.detail = {"runs": rows, "agent_runs": agent_rows, "crashes_mid_turn": crashes,
                     "python_start_ms": ms(python), "import_ms": ms(imports),
                     "every_import_ms": ms(everything),
                     "big_log": big}
    return result

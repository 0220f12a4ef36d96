"""Scenario 2, warm vs. cold: a cold turn (spawn, initialize, session/new, first chunk) vs. a
warm turn's first chunk, with `echo` and, when node/npm and the pinned qwen-code are there,
with the real `qwen --acp` against the scripted loopback LLM of the e2e tests.

Each is measured through the daemon (a new chat's first prompt starts its agent) and
directly over stdio (the floor), in the same run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from protocol import deltas as d
from protocol import messages as m
from tests.support.harness import subscribe

from .common import ECHO_ARGV, BenchDaemon, Context, Result, bench_config, median, ms
from .direct import direct_agent
from .wire import TimedClient, timed_client


async def _daemon_first_chunk(client: TimedClient, chat: str, text: str,
                              timeout: float) -> tuple[float, float]:
    """Send a prompt; (first chunk, end of turn) seconds after sending it."""
    client.stamps.clear()
    sent = time.perf_counter()
    accepted: m.PromptAccepted = await client.request(m.Prompt(id=0, chat=chat, text=text))
    while True:
        event = await client.next_event(timeout=timeout)
        if (isinstance(event, d.Delta) and event.turn == accepted.turn
                and isinstance(event.body, d.TurnEnded)):
            if event.body.error:
                raise RuntimeError(f"turn failed: {event.body.error}")
            break
    first = next(t for t, x in client.stamps
                 if x.turn == accepted.turn and isinstance(x.body, d.Text) and x.body.text)
    ended = next(t for t, x in client.stamps
                 if x.turn == accepted.turn and isinstance(x.body, d.TurnEnded))
    return first - sent, ended - sent


async def _via_daemon(daemon: BenchDaemon, agent: str, cwd: str, runs: int, text: str,
                      timeout: float) -> list[dict[str, float]]:
    rows: list[dict[str, float]] = []
    async with timed_client(daemon.socket) as client:
        for _ in range(runs):
            info: m.ChatInfo = await client.request(m.OpenChat(id=0, agent=agent, cwd=cwd))
            await subscribe(client, info.chat)
            cold, _ = await _daemon_first_chunk(client, info.chat, text, timeout)
            warm = [(await _daemon_first_chunk(client, info.chat, text, timeout))[0]
                    for _ in range(3)]
            rows.append({"cold": ms(cold), "warm": ms(median(warm))})
            await client.request(m.CloseChat(id=0, chat=info.chat))
    return rows


async def _direct(argv: Sequence[str], env: dict[str, str] | None, cwd: str, runs: int,
                  text: str, timeout: float) -> list[dict[str, float]]:
    rows: list[dict[str, float]] = []
    for _ in range(runs):
        async with direct_agent(argv, env=env, cwd=cwd) as agent:
            await agent.open_session(cwd, timeout=timeout)
            turn = await agent.prompt(text, timeout=timeout)
            assert turn.first_chunk is not None
            warm: list[float] = []
            for _ in range(3):
                again = await agent.prompt(text, timeout=timeout)
                assert again.first_chunk is not None
                warm.append(again.first_chunk - again.sent)
            rows.append({"cold": ms(turn.first_chunk - agent.spawned),
                         "spawn_to_initialized": ms(agent.initialized_at - agent.spawned),
                         "session_new": ms(agent.session_at - agent.initialized_at),
                         "warm": ms(median(warm))})
    return rows


def _report(result: Result, agent: str, via: list[dict[str, float]],
            direct: list[dict[str, float]]) -> None:
    cold_via = median([r["cold"] for r in via])
    cold_direct = median([r["cold"] for r in direct])
    warm_via = median([r["warm"] for r in via])
    warm_direct = median([r["warm"] for r in direct])
    result.add(f"{agent}: cold first chunk, via daemon", cold_via, "ms")
    result.add(f"{agent}: cold first chunk, direct (floor)", cold_direct, "ms")
    result.add(f"{agent}: cold, daemon overhead", cold_via - cold_direct, "ms")
    result.add(f"{agent}: cold, ratio daemon/direct", cold_via / cold_direct, "x")
    result.add(f"{agent}: warm first chunk, via daemon", warm_via, "ms")
    result.add(f"{agent}: warm first chunk, direct (floor)", warm_direct, "ms")
    result.add(f"{agent}: warm, ratio daemon/direct", warm_via / warm_direct, "x")
    result.add(f"{agent}: cold/warm ratio, via daemon", cold_via / warm_via, "x")
    result.detail[agent] = {"via_daemon": via, "direct": direct}


async def run(ctx: Context) -> Result:
    result = Result("cold", "Warm vs. cold (spawn, initialize, session/new, first chunk)")
    runs = 3 if ctx.quick else 7
    daemon = BenchDaemon(config=bench_config())
    try:
        daemon.start_bench()
        cwd = str(daemon.work)
        via = await _via_daemon(daemon, "echo", cwd, runs, "hello there", 30)
        direct = await _direct(ECHO_ARGV, None, cwd, runs, "hello there", 30)
        _report(result, "echo", via, direct)
        ctx.say(f"  echo cold via daemon {median([r['cold'] for r in via]):.1f} ms, "
                f"direct {median([r['cold'] for r in direct]):.1f} ms")
    finally:
        daemon.close()
    why = await _qwen(ctx, result)
    if why:
        result.skipped.append(f"qwen: {why}")
        ctx.say(f"  qwen skipped: {why}")
    return result


async def _qwen(ctx: Context, result: Result) -> str | None:
    """Measure qwen, or return why it cannot be."""
    try:
        from tests.e2e.agents import QWEN, QWEN_ARGS, QWEN_SETTINGS, ensure, qwen_env
        from tests.e2e.fake_llm import FakeLLM
        from tests.e2e.rig import agent_table
    except ImportError as exc:
        return f"the e2e helpers are not there ({exc})"
    installed = ensure(QWEN)
    if installed.binary is None:
        return installed.skip_reason
    runs = 1 if ctx.quick else 3
    with FakeLLM(default="Hello from the scripted model, streamed in pieces.") as llm:
        daemon = BenchDaemon()
        try:
            home = daemon.base / "home"
            workspace = daemon.base / "ws"
            for directory in (home / ".qwen", workspace):
                directory.mkdir(parents=True)
            (home / ".qwen" / "settings.json").write_text(json.dumps(QWEN_SETTINGS))
            env = qwen_env(llm.base_url, home, api_key="bench-key")
            argv = [str(installed.binary), *QWEN_ARGS]
            daemon.write_config(bench_config() + agent_table("qwen", argv, env))
            daemon.start_bench()
            via = await _via_daemon(daemon, "qwen", str(workspace), runs, "say hello", 120)
            direct = await _direct(argv, env, str(workspace), runs, "say hello", 120)
        finally:
            daemon.close()
    _report(result, f"qwen {installed.tool.version}", via, direct)
    ctx.say(f"  qwen cold via daemon {median([r['cold'] for r in via]):.0f} ms, "
            f"direct {median([r['cold'] for r in direct]):.0f} ms")
    return None


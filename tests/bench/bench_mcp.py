"""Scenario: what Stoker's MCP server costs per agent session, stdio against HTTP
(docs/TASKS.md). Two echo agents, one plain (offered `stoker mcp`, a process per session)
and one with `--mcp-http` (offered the daemon's own HTTP endpoint). For each session: the
agent is started first (`/pid`), then the time of its first tool call (`/mcp list_tasks`,
prompt sent to turn ended: over stdio it includes starting the server, which the echo agent
does on first use) and of a second one; the memory of what the agent started for it (the
`stoker mcp` process: RSS and USS) and the daemon's own RSS growth (over HTTP the daemon
imports the SDK once, at its first HTTP session: reported apart from the per-session
growth after it).
"""

from __future__ import annotations

import json
import time

import psutil

from daemon.client import Client
from protocol import messages as m
from tests.support.harness import agent_pid, turn

from .common import ECHO_ARGV, BenchDaemon, Context, Result, bench_config, median, ms

CPU_CALLS = 20
"""Warm tool calls per session over which the CPU per call is measured."""


def _children_cpu(pid: int) -> float:
    return float(sum(t.user + t.system for t in
                     (c.cpu_times() for c in psutil.Process(pid).children(recursive=True))))


async def _session(daemon: BenchDaemon, client: Client, chat: str, agent: str, cwd: str
                   ) -> tuple[float, float, int, int, float, float]:
    """(first tool call s, second tool call s, RSS, USS of the agent's children, daemon
    CPU s per warm call, CPU s of the agent's children per warm call)."""
    await client.request(m.OpenChat(id=0, chat=chat, agent=agent, cwd=cwd))
    pid = await agent_pid(client, chat)
    times = []
    for _ in range(2):
        sent = time.perf_counter()
        text = (await turn(client, chat, "/mcp list_tasks {}", timeout=120)).text
        times.append(time.perf_counter() - sent)
        assert json.loads(text) == {"tasks": []}, text
    rss = uss = 0
    for child in psutil.Process(pid).children(recursive=True):
        info = child.memory_full_info()
        rss += info.rss
        uss += info.uss
    daemon_cpu, server_cpu = daemon.cpu_seconds(), _children_cpu(pid)
    for _ in range(CPU_CALLS):
        await turn(client, chat, "/mcp list_tasks {}", timeout=120)
    daemon_cpu = (daemon.cpu_seconds() - daemon_cpu) / CPU_CALLS
    server_cpu = (_children_cpu(pid) - server_cpu) / CPU_CALLS
    return times[0], times[1], rss, uss, daemon_cpu, server_cpu


async def run(ctx: Context) -> Result:
    result = Result("mcp", "MCP server per session: stdio (stoker mcp) vs HTTP (daemon)")
    sessions = 4 if ctx.quick else 8
    agents = {"stdio": list(ECHO_ARGV), "http": [*ECHO_ARGV, "--mcp-http"]}
    extra = "".join(f"\n[agents.{name}]\ncommand = {json.dumps(argv)}\n"
                    for name, argv in agents.items())
    daemon = BenchDaemon(config=bench_config(max_warm=4 * sessions + 4, extra=extra))
    figures: dict[str, dict[str, list[float]]] = {}
    daemon_growth: dict[str, list[int]] = {}
    try:
        daemon.start_bench()
        async with Client.connect(daemon.socket, client="bench") as client:
            for transport in ("stdio", "http"):
                got = figures[transport] = {"first": [], "second": [], "rss": [], "uss": [],
                                            "daemon_cpu": [], "server_cpu": []}
                rss = daemon_growth[transport] = []
                for i in range(sessions):
                    await daemon.settled_cpu()
                    before = daemon.rss()
                    first, second, child_rss, child_uss, cpu, server_cpu = await _session(
                        daemon, client, f"{transport}-{i}", transport, str(daemon.work))
                    await daemon.settled_cpu()
                    rss.append(daemon.rss() - before)
                    got["first"].append(first)
                    got["second"].append(second)
                    got["rss"].append(child_rss)
                    got["uss"].append(child_uss)
                    got["daemon_cpu"].append(cpu)
                    got["server_cpu"].append(server_cpu)
                ctx.say(f"  {transport}: first tool call {[round(ms(x)) for x in got['first']]}"
                        f" ms, daemon RSS growth {[x // 1024 for x in rss]} KiB")
    finally:
        daemon.close()
    result.detail = {"sessions": sessions, "figures": figures, "daemon_growth": daemon_growth}
    mib = 1024 * 1024
    for transport, got in figures.items():
        result.add(f"{transport}: first tool call p50 (warm agent, new session)",
                   ms(median(got["first"])), "ms")
        result.add(f"{transport}: later tool call p50", ms(median(got["second"])), "ms")
        result.add(f"{transport}: processes per session, RSS", median(got["rss"]) / mib,
                   "MiB")
        result.add(f"{transport}: processes per session, USS", median(got["uss"]) / mib,
                   "MiB")
        result.add(f"{transport}: daemon CPU per warm tool call (whole turn)",
                   ms(median(got["daemon_cpu"])), "ms")
        result.add(f"{transport}: stoker mcp CPU per warm tool call",
                   ms(median(got["server_cpu"])), "ms")
        growth = daemon_growth[transport]
        result.add(f"{transport}: daemon RSS growth, first session", growth[0] / mib, "MiB")
        result.add(f"{transport}: daemon RSS growth per later session",
                   median(growth[1:]) / mib, "MiB")
    return result

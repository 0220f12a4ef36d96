"""Ingest alone (issue 22): one `/chunks N` turn to one Unix-socket subscriber, interleaved
run by run with the same turn of the same agent read directly over stdio (the floor), on a
daemon with `daemon.coalesce_chunks` at its default (a read's run of chunks is one delta)
and on one with it off (a delta per chunk). Rates are the agent's chunks per second: all of
them are in the subscriber's hands when its `turn_ended` arrives, however many deltas
carried them.

The same figures as the ingest rows of `fanout`, without its minutes of other transports:
`scripts/bench --only ingest` is the quick A/B for a change on the ingest path.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

from protocol import messages as m

from .bench_fanout import _direct_once, _once
from .common import BenchDaemon, Context, Result, bench_config, median

MODES = {"on": 16, "off": 0}
"""`daemon.coalesce_chunks` of the two daemons: the default (a read's run of chunks as one
delta) and one delta per chunk (the per-delta path, what the other scenarios measure)."""


async def run(ctx: Context) -> Result:
    chunks = 20_000 if ctx.quick else 100_000
    result = Result("ingest", f"Ingest (one /chunks {chunks} turn, 1 subscriber vs direct)")
    daemons = {mode: BenchDaemon(config=bench_config(websocket=False, coalesce_chunks=n))
               for mode, n in MODES.items()}
    rows: dict[str, list[dict[str, float]]] = {"on": [], "off": [], "direct": []}
    try:
        chats: dict[str, str] = {}
        for mode, daemon in daemons.items():
            daemon.start_bench()
            async with daemon.client("bench-control") as control:
                info: m.ChatInfo = await control.request(m.OpenChat(id=0, agent="echo",
                                                                    cwd=str(daemon.work)))
                await control.request(m.Warm(id=0, chat=info.chat))
                await _once(daemon, control, info.chat, "unix", 1, 1000, None, None)
                chats[mode] = info.chat
        for _ in range(max(3, ctx.runs)):
            for mode, daemon in daemons.items():
                async with daemon.client("bench-control") as control:
                    agent = _agent(daemon)
                    agent_cpu, own_cpu = _cpu(agent), time.process_time()
                    row = await _once(daemon, control, chats[mode], "unix", 1, chunks, None,
                                      None)
                # The rest of the pipeline, for the CPU-bound ratio: the agent's and the
                # subscriber's (this process counts the frames) CPU over the same turn.
                # Per 100k of the agent's chunks: with coalescing a delta holds many.
                row["agent_cpu_per_100k"] = (_cpu(agent) - agent_cpu) / (chunks / 1e5)
                row["subscriber_cpu_per_100k"] = (time.process_time() - own_cpu) / (
                    chunks / 1e5)
                row["chunk_rate"] = chunks / row["seconds"]
                row["cpu_per_100k_chunks"] = row["cpu"] / (chunks / 1e5)
                rows[mode].append(row)
            direct = await _direct_once(chunks, str(daemons["off"].work))
            rows["direct"].append(direct)
            ctx.say(f"  ingest: 1 subscriber {rows['on'][-1]['chunk_rate'] / 1e3:.0f}k chunks/s "
                    f"in {rows['on'][-1]['delivered']:.0f} deltas (coalescing on), "
                    f"{rows['off'][-1]['chunk_rate'] / 1e3:.0f}k (off, lagged "
                    f"{rows['off'][-1]['lagged']:.0f}), direct stdio "
                    f"{direct['rate'] / 1e3:.0f}k")
    finally:
        for daemon in daemons.values():
            daemon.close()

    def med(key: str, field: str) -> float:
        return median([r[field] for r in rows[key]])

    def ratio(mode: str) -> float:
        return median([u["chunk_rate"] / x["rate"]
                       for u, x in zip(rows[mode], rows["direct"], strict=True)])

    result.add("ingest: 1 subscriber, the agent's chunks delivered/s (coalescing on, the "
               "default)", med("on", "chunk_rate"), "chunks/s")
    result.add("ingest: deltas that carried them (coalescing on)", med("on", "delivered"),
               "deltas")
    result.add("ingest: 1 subscriber, chunks delivered/s (coalescing off: a delta each)",
               med("off", "chunk_rate"), "chunks/s")
    result.add("ingest: the same agent read directly over stdio (floor)", med("direct", "rate"),
               "chunks/s")
    result.add("ingest: daemon CPU per 100k chunks, coalescing on (its two threads)",
               med("on", "cpu_per_100k_chunks"), "s")
    result.add("ingest: daemon CPU per 100k chunks, coalescing off",
               med("off", "cpu_per_100k_chunks"), "s")
    result.add("ingest: direct stdio client's CPU per 100k (floor)",
               med("direct", "cpu_per_100k"), "s")
    result.add("ingest: the agent's CPU per 100k (daemon run, coalescing off)",
               med("off", "agent_cpu_per_100k"), "s")
    result.add("ingest: the subscriber's CPU per 100k (in the driver, coalescing off)",
               med("off", "subscriber_cpu_per_100k"), "s")
    result.add("ingest: lag events per turn (coalescing off)", med("off", "lagged"), "")
    result.add("ingest: ratio 1 subscriber / direct stdio, coalescing on", ratio("on"),
               "x", target=">= 0.6", check=lambda v: v >= 0.6)
    result.add("ingest: ratio 1 subscriber / direct stdio, coalescing off", ratio("off"), "x")
    detail: dict[str, Any] = {"chunks": chunks, "runs": rows}
    result.detail = detail
    return result


def _agent(daemon: BenchDaemon) -> psutil.Process:
    """The chat's echo agent (the daemon's only agent here)."""
    for child in daemon.process().children(recursive=True):
        if "daemon.echo_agent" in " ".join(child.cmdline()):
            return child
    raise RuntimeError("the echo agent is not running")


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)

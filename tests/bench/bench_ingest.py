"""Ingest alone (issue 22): one `/chunks N` turn to one Unix-socket subscriber, interleaved
run by run with the same turn of the same agent read directly over stdio (the floor).

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


async def run(ctx: Context) -> Result:
    chunks = 20_000 if ctx.quick else 100_000
    result = Result("ingest", f"Ingest (one /chunks {chunks} turn, 1 subscriber vs direct)")
    daemon = BenchDaemon(config=bench_config(websocket=False))
    rows: dict[str, list[dict[str, float]]] = {"unix": [], "direct": []}
    try:
        daemon.start_bench()
        async with daemon.client("bench-control") as control:
            info: m.ChatInfo = await control.request(m.OpenChat(id=0, agent="echo",
                                                                cwd=str(daemon.work)))
            await control.request(m.Warm(id=0, chat=info.chat))
            await _once(daemon, control, info.chat, "unix", 1, 1000, None, None)
            for _ in range(max(3, ctx.runs)):
                agent = _agent(daemon)
                agent_cpu, own_cpu = _cpu(agent), time.process_time()
                unix = await _once(daemon, control, info.chat, "unix", 1, chunks, None, None)
                # The rest of the pipeline, for the CPU-bound ratio: the agent's and the
                # subscriber's (this process counts the frames) CPU over the same turn.
                unix["agent_cpu_per_100k"] = (_cpu(agent) - agent_cpu) / (chunks / 1e5)
                unix["subscriber_cpu_per_100k"] = (time.process_time() - own_cpu) / (
                    chunks / 1e5)
                direct = await _direct_once(chunks, str(daemon.work))
                rows["unix"].append(unix)
                rows["direct"].append(direct)
                ctx.say(f"  ingest: 1 subscriber {unix['rate'] / 1e3:.0f}k deltas/s "
                        f"(lagged {unix['lagged']:.0f}), direct stdio "
                        f"{direct['rate'] / 1e3:.0f}k")
    finally:
        daemon.close()

    def med(key: str, field: str) -> float:
        return median([r[field] for r in rows[key]])

    result.add("ingest: 1 subscriber (Unix socket), delivered/s", med("unix", "rate"),
               "deltas/s")
    result.add("ingest: the same agent read directly over stdio (floor)", med("direct", "rate"),
               "deltas/s")
    result.add("ingest: daemon CPU per 100k (1 subscriber; its two threads)",
               med("unix", "cpu_per_100k_produced"), "s")
    result.add("ingest: direct stdio client's CPU per 100k (floor)",
               med("direct", "cpu_per_100k"), "s")
    result.add("ingest: the agent's CPU per 100k (daemon run)",
               med("unix", "agent_cpu_per_100k"), "s")
    result.add("ingest: the subscriber's CPU per 100k (in the driver)",
               med("unix", "subscriber_cpu_per_100k"), "s")
    result.add("ingest: lag events per turn", med("unix", "lagged"), "")
    result.add("ingest: ratio 1 subscriber / direct stdio",
               median([u["rate"] / x["rate"] for u, x in zip(rows["unix"], rows["direct"],
                                                             strict=True)]),
               "x", target=">= 0.6", check=lambda v: v >= 0.6)
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

"""Scenario 1, turn overhead: a warm turn's first chunk and end of turn through the daemon vs.
the same `echo` agent driven directly over stdio, interleaved turn by turn in one run.

The daemon path: the daemon's own `Client` (timestamps taken in its reader task) sends
`prompt`, the daemon queues it durably, its actor sends `session/prompt`, the agent streams
chunks, the hub publishes them, the connection's writer sends them. The direct path: the
same `JsonRpcConnection` and `decode_session_update` the daemon uses, with no daemon.
Overhead = daemon - direct for each percentile of each run; the medians over runs are shown.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from protocol import messages as m
from tests.support.harness import subscribe

from .common import (
    ECHO_ARGV,
    BenchDaemon,
    Context,
    HostShare,
    Result,
    bench_config,
    median,
    ms,
    percentile,
)
from .direct import DirectAgent, direct_agent
from .wire import TimedClient, timed_client

PROMPT = "hello there world"
"""Three words: three `agent_message_chunk`s."""


ACKS: list[float] = []
"""Seconds from sending each measured prompt to its `PromptAccepted` reply (durably queued:
the daemon answers after the store committed the prompt)."""


async def _daemon_turn(client: TimedClient, chat: str) -> tuple[float, float]:
    client.stamps.clear()
    times = await client.timed_turn(chat, PROMPT)
    ACKS.append(times.acked - times.sent)
    return times.first_chunk - times.sent, times.ended - times.sent


async def _direct_turn(agent: DirectAgent) -> tuple[float, float]:
    turn = await agent.prompt(PROMPT)
    assert turn.first_chunk is not None, turn
    assert turn.chunks == 3, turn
    return turn.first_chunk - turn.sent, turn.ended - turn.sent


def _at_most(limit: float) -> Callable[[float], bool]:
    return lambda value: value <= limit


async def run(ctx: Context) -> Result:
    result = Result("turn", "Turn overhead (warm echo turn: daemon vs. direct stdio)")
    turns = 60 if ctx.quick else 300
    warmup = 10
    daemon = BenchDaemon(config=bench_config())
    per_run: list[dict[str, float]] = []
    try:
        daemon.start_bench()
        async with timed_client(daemon.socket) as client, \
                direct_agent(ECHO_ARGV, cwd=str(daemon.work)) as agent:
            info: m.ChatInfo = await client.request(m.OpenChat(id=0, agent="echo",
                                                               cwd=str(daemon.work)))
            await subscribe(client, info.chat)
            await client.request(m.Warm(id=0, chat=info.chat))
            await agent.open_session(str(Path(daemon.work)))
            for _ in range(warmup):
                await _daemon_turn(client, info.chat)
                await _direct_turn(agent)
            for run_index in range(ctx.runs):
                via: list[tuple[float, float]] = []
                raw: list[tuple[float, float]] = []
                cpu0 = daemon.cpu_seconds()
                host = HostShare()
                ACKS.clear()
                for _ in range(turns):
                    via.append(await _daemon_turn(client, info.chat))
                    raw.append(await _direct_turn(agent))
                cpu = daemon.cpu_seconds() - cpu0
                others, steal = host.read()
                row = {
                    "daemon_first_p50": ms(percentile([x[0] for x in via], 50)),
                    "daemon_first_p99": ms(percentile([x[0] for x in via], 99)),
                    "direct_first_p50": ms(percentile([x[0] for x in raw], 50)),
                    "direct_first_p99": ms(percentile([x[0] for x in raw], 99)),
                    "daemon_end_p50": ms(percentile([x[1] for x in via], 50)),
                    "daemon_end_p99": ms(percentile([x[1] for x in via], 99)),
                    "direct_end_p50": ms(percentile([x[1] for x in raw], 50)),
                    "direct_end_p99": ms(percentile([x[1] for x in raw], 99)),
                    "daemon_cpu_ms_per_turn": ms(cpu / turns),
                    "prompt_ack_p50": ms(percentile(ACKS, 50)),
                    "host_others_cpus": others,
                    "host_steal_cpus": steal,
                }
                per_run.append(row)
                ctx.say(f"  run {run_index + 1}: first chunk p50 daemon "
                        f"{row['daemon_first_p50']:.2f} ms vs direct "
                        f"{row['direct_first_p50']:.2f} ms; the rest of the host used "
                        f"{others:.2f} CPUs (steal {steal:.2f})")
    finally:
        daemon.close()

    def med(key: str) -> float:
        return median([r[key] for r in per_run])

    def over(kind: str, q: str) -> float:
        return median([r[f"daemon_{kind}_{q}"] - r[f"direct_{kind}_{q}"] for r in per_run])

    result.detail = {"turns_per_run": turns, "runs": per_run, "prompt": PROMPT}
    for kind, label in (("first", "first chunk"), ("end", "end of turn")):
        for q in ("p50", "p99"):
            result.add(f"{label} {q}, via daemon", med(f"daemon_{kind}_{q}"), "ms")
            result.add(f"{label} {q}, direct (floor)", med(f"direct_{kind}_{q}"), "ms")
            if kind == "first":
                limit = 1.0 if q == "p50" else 5.0
                result.add(f"{label} {q}, daemon overhead", over(kind, q), "ms",
                           target=f"<= {limit:g} ms", check=_at_most(limit))
            else:
                result.add(f"{label} {q}, daemon overhead", over(kind, q), "ms")
            result.add(f"{label} {q}, ratio daemon/direct",
                       med(f"daemon_{kind}_{q}") / med(f"direct_{kind}_{q}"), "x")
    result.add("prompt accepted (durable) p50", med("prompt_ack_p50"), "ms")
    result.add("daemon CPU per warm turn", med("daemon_cpu_ms_per_turn"), "ms")
    result.add("the rest of the host during the runs (CPUs busy, not the bench's)",
               med("host_others_cpus"), "CPUs")
    result.add("of which steal (other guests)", med("host_steal_cpus"), "CPUs")
    return result

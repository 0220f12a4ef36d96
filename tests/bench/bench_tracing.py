"""Scenario 9, tracing cost (issue 19: "the fan-out and turn scenarios with tracing on cost at
most 5% more than before"): the turn and fan-out scenarios' daemon paths, against daemons
that differ only in tracing, interleaved in one run.

- `off`: `[traces] metrics = false`: the hub calls no tap per delta.
- `on`: the default: the metrics' tap (`Metrics.observe`) on every published delta.
- `otel`: the default plus `[traces] otlp_endpoint` to a collector stand-in in this process
  (tests/integration/test_otel.py's), when the `otel` extra is installed.

The three daemons run side by side (idle but for the one measured); each round measures
each in turn, the order rotating from round to round. A round: `TURNS` warm echo turns
(wall time to `turn_ended` and the daemon's CPU per turn), then one `/chunks N` turn to one
Unix-socket subscriber (the fan-out scenario's `_once`: delivered deltas per second, the
daemon's CPU per 100k deltas, settled). Reported: the median over rounds of each figure,
the ratio on/off (and otel/off) of the medians, and the spread of the per-round ratios
(min..max): when that spread is wider than 5% the machine's noise is larger than what is
being measured.

What no daemon switch turns off, the per-delta bookkeeping of the running turn for
`turn_ended.timing` (`backend.core._note`), is timed in process instead, together with the
metrics' tap: ns per text delta (the common case) and per tool-call delta, and that cost as
a share of the daemon's CPU per delta measured above. And the tap alone where it is called:
`Hub.publish` of a text delta over a real store, without and with the tap, alternating
(40 rounds of 5,000; the loop thread's CPU).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.actors import mailbox as mb
from daemon.actors.backend.core import _note
from daemon.channels.hub import Hub, new_epoch
from daemon.store.sqlite import Store
from daemon.traces.metrics import Metrics
from protocol import deltas as d
from protocol import messages as m
from tests.support.harness import subscribe

from .bench_fanout import _once
from .common import BenchDaemon, Context, Result, bench_config, median, ms
from .wire import TimedClient, timed_client

PROMPT = "hello there world"


def _at_most(limit: float) -> Callable[[float], bool]:
    return lambda value: value <= limit


def _hook_ns(rounds: int = 200_000) -> dict[str, float]:
    """ns per call of the hot-path hooks, in process (best of 5)."""
    metrics = Metrics()
    metrics.observe("c", 1.0, 1, d.TurnStarted(agent="echo", prompt="p"))
    job = mb.PromptJob(turn=1, content=[], summary="")
    text = d.Text(text=" chunk")
    tool = d.ToolUpdate(tool_call_id="t1", status="in_progress")
    _note(job, text)  # the first output is noted: the rest is the common case

    def best(fn: Callable[[], None]) -> float:
        times = []
        for _ in range(5):
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
        return min(times) / rounds * 1e9

    def observe_text() -> None:
        observe = metrics.observe
        for _ in range(rounds):
            observe("c", 2.0, 1, text)

    def note_text() -> None:
        for _ in range(rounds):
            _note(job, text)

    def observe_tool() -> None:
        observe = metrics.observe
        for _ in range(rounds):
            observe("c", 2.0, 1, tool)

    def note_tool() -> None:
        for _ in range(rounds):
            _note(job, tool)

    def empty() -> None:
        for _ in range(rounds):
            pass

    def whole_turns() -> None:
        # A warm echo turn's deltas, as the hub publishes them (the chat is busy, then
        # ready again): per turn, the tap's and _note's work at its start and end too.
        observe = metrics.observe
        sequence: list[d.DeltaBody] = [
            d.TurnStarted(agent="echo", prompt=PROMPT),
            d.Status(agent="echo", state="busy", reason="", pid=1, generation=1),
            d.Text(text="hello"), d.Text(text=" there"), d.Text(text=" world"),
            d.Usage(input_tokens=3, output_tokens=3),
            d.TurnEnded(stop_reason="end_turn", timing=d.TurnTiming(
                accepted=1.0, started=1.0, first_output=1.1, ended=1.2)),
            d.Status(agent="echo", state="ready", reason="", pid=1, generation=1)]
        for number in range(2, rounds // 50 + 2):
            turn_job = mb.PromptJob(turn=number, content=[], summary="")
            for body in sequence:
                _note(turn_job, body)
                observe("w", 2.0, number, body)

    loop = best(empty)
    return {"observe_text": best(observe_text) - loop, "note_text": best(note_text) - loop,
            "observe_tool": best(observe_tool) - loop, "note_tool": best(note_tool) - loop,
            "turn": best(whole_turns) * 50}


async def _publish_ns(rounds: int, count: int = 20_000) -> dict[str, list[float]]:
    """`Hub.publish` of a text delta with no tap and with the metrics' tap, each hub over
    its own real store, alternating round by round: ns per delta of the loop thread's CPU
    (`thread_time`: the writer thread's commits excluded; they do not see the tap)."""
    out: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        async with Store.open(Path(tmp) / "off.sqlite") as s_off, \
                Store.open(Path(tmp) / "on.sqlite") as s_on:
            metrics = Metrics()
            hubs = {"off": Hub(s_off, ring_size=8192),
                    "on": Hub(s_on, ring_size=8192, tap=metrics.observe)}
            stores = {"off": s_off, "on": s_on}
            for hub in hubs.values():
                hub.open_channel("c", new_epoch())
                hub.publish("c", 1, d.TurnStarted(agent="echo", prompt=PROMPT))
            text = d.Text(text=" chunk")
            for index in range(rounds + 1):
                for name in ("off", "on") if index % 2 else ("on", "off"):
                    hub = hubs[name]
                    began = time.thread_time()
                    for _ in range(count):
                        hub.publish("c", 1, text)
                    spent = time.thread_time() - began
                    await stores[name].flush()
                    if index:  # the first round warms up
                        out[name].append(spent / count * 1e9)
    return out


async def _turns(daemon: BenchDaemon, client: TimedClient, chat: str,
                 count: int) -> dict[str, float]:
    ends: list[float] = []
    cpu0 = daemon.cpu_seconds()
    for _ in range(count):
        client.stamps.clear()
        times = await client.timed_turn(chat, PROMPT)
        ends.append(times.ended - times.sent)
    cpu = await daemon.settled_cpu() - cpu0
    return {"turn_end_p50": median(ends), "turn_cpu": cpu / count}


async def run(ctx: Context) -> Result:
    # Enough work per round that the kernel's 10 ms CPU accounting tick is a few per cent.
    turns = 150 if ctx.quick else 400
    chunks = 50_000 if ctx.quick else 100_000
    rounds = max(ctx.runs, 6 if ctx.quick else 10)
    result = Result("tracing", f"Tracing cost (on vs. off: {turns} warm turns and one "
                               f"/chunks {chunks} turn per round, {rounds} rounds)")
    variants: dict[str, str] = {"off": "\n[traces]\nmetrics = false\n", "on": ""}
    rows: dict[str, list[dict[str, float]]] = {}
    daemons: dict[str, BenchDaemon] = {}
    with contextlib.ExitStack() as stack:
        try:
            import opentelemetry.sdk  # noqa: F401

            from tests.integration.test_otel import collector
            found, endpoint = stack.enter_context(collector())
            variants["otel"] = f'\n[traces]\notlp_endpoint = "{endpoint}"\n'
        except ImportError:
            found = None
            result.skipped.append("otel: the `otel` extra is not installed")
        try:
            async with contextlib.AsyncExitStack() as clients:
                chats: dict[str, str] = {}
                controls: dict[str, TimedClient] = {}
                for name, extra in variants.items():
                    daemon = BenchDaemon(config=bench_config(extra=extra))
                    daemons[name] = daemon
                    daemon.start_bench()
                    client = await clients.enter_async_context(
                        timed_client(daemon.socket, f"bench-{name}"))
                    info: m.ChatInfo = await client.request(m.OpenChat(
                        id=0, agent="echo", cwd=str(daemon.work)))
                    await subscribe(client, info.chat)
                    await client.request(m.Warm(id=0, chat=info.chat))
                    # A second chat for the fan-out turn: the timed client is not
                    # subscribed to it (one raw subscriber counts its deltas).
                    fan: m.ChatInfo = await client.request(m.OpenChat(
                        id=0, agent="echo", cwd=str(daemon.work)))
                    await client.request(m.Warm(id=0, chat=fan.chat))
                    chats[name], controls[name] = info.chat, client
                    chats[name + ":fan"] = fan.chat
                    rows[name] = []
                    # Warm-up: the same work once, unmeasured.
                    await _turns(daemon, client, info.chat, 10)
                    await _once(daemon, client, fan.chat, "unix", 1, 2000, None, None)
                names = list(variants)
                for index in range(rounds):
                    shift = index % len(names)
                    order = names[shift:] + names[:shift]
                    if index % 2:
                        order.reverse()
                    for name in order:
                        daemon, client = daemons[name], controls[name]
                        row = await _turns(daemon, client, chats[name], turns)
                        fan_row = await _once(daemon, client, chats[name + ":fan"], "unix",
                                              1, chunks, None, None)
                        row["fan_rate"] = fan_row["rate"]
                        row["fan_cpu_100k"] = fan_row["cpu_per_100k_produced"]
                        rows[name].append(row)
                    ctx.say(f"  round {index + 1}: " + ", ".join(
                        f"{n} {ms(rows[n][-1]['turn_cpu']):.2f} ms CPU/turn "
                        f"{rows[n][-1]['fan_cpu_100k']:.2f} s CPU/100k" for n in names))
        finally:
            for daemon in daemons.values():
                daemon.close()
    spans = len(found.spans) if found is not None else 0

    def med(name: str, key: str) -> float:
        return median([r[key] for r in rows[name]])

    figures = (("turn_cpu", "daemon CPU per warm turn", "ms", ms, False),
               ("turn_end_p50", "warm turn, prompt to turn_ended p50", "ms", ms, False),
               ("fan_cpu_100k", "fan-out: daemon CPU per 100k deltas", "s", float, False),
               ("fan_rate", "fan-out: deltas/s to one subscriber", "/s", float, True))
    detail: dict[str, Any] = {"turns": turns, "chunks": chunks, "rounds": rounds,
                              "rows": rows, "otel_spans_received": spans}
    for key, label, unit, scale, higher_better in figures:
        for name in variants:
            result.add(f"{label}, tracing {name}", scale(med(name, key)), unit)
        for name in variants:
            if name == "off":
                continue
            per_round = [(a[key] / b[key]) if not higher_better else (b[key] / a[key])
                         for a, b in zip(rows[name], rows["off"], strict=True)]
            ratio = med(name, key) / med("off", key)
            if higher_better:
                ratio = 1 / ratio
            spread = f"rounds {min(per_round):.3f}..{max(per_round):.3f}"
            result.add(f"{label}: cost {name}/off", ratio, "x", target="<= 1.05",
                       check=_at_most(1.05), note=spread)
            detail[f"{key}:{name}/off"] = per_round
    hooks = _hook_ns()
    detail["hook_ns"] = hooks
    per_delta_ns = med("off", "fan_cpu_100k") / 1e5 * 1e9
    for key, label in (("observe_text", "metrics tap, text delta"),
                       ("note_text", "turn timing (_note), text delta"),
                       ("observe_tool", "metrics tap, tool_update delta"),
                       ("note_tool", "turn timing (_note), tool_update delta")):
        result.add(f"{label}", hooks[key], "ns")
    share = (hooks["observe_text"] + hooks["note_text"]) / per_delta_ns
    result.add("tap + _note per text delta, share of the daemon's CPU per delta",
               share * 100, "%", target="<= 5 %", check=_at_most(5.0))
    result.add("tap + _note over a whole warm turn's 8 deltas", hooks["turn"] / 1e3, "us")
    per_turn_ns = med("off", "turn_cpu") * 1e9
    result.add("tap + _note per warm turn, share of the daemon's CPU per turn",
               hooks["turn"] / per_turn_ns * 100, "%", target="<= 5 %", check=_at_most(5.0))
    published = await _publish_ns(40, 5000)
    detail["publish_ns"] = published
    for name in ("off", "on"):
        result.add(f"in process: Hub.publish per text delta, tap {name}",
                   median(published[name]), "ns", note=f"min {min(published[name]):.0f}")
    per_round = [a / b for a, b in zip(published["on"], published["off"], strict=True)]
    best = min(published["on"]) / min(published["off"])
    result.add("in process: Hub.publish per text delta: cost on/off",
               median(published["on"]) / median(published["off"]), "x", target="<= 1.05",
               check=_at_most(1.05), note=f"min/min {best:.3f}, rounds "
               f"{min(per_round):.3f}..{max(per_round):.3f}")
    if found is not None:
        result.add("otel: spans received by the collector", float(spans), "")
    result.detail = detail
    return result

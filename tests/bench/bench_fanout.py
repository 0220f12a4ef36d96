"""Scenario 3, fan-out: one `/chunks N` turn (N = 100k; 20k with --quick) to 1, 8 and 64
subscribers, over the Unix socket and the WebSocket, and to 1 and 8 Server-Sent Events
streams (`GET /api/chats/{chat}/events`, `sse.py`).

Subscribers are raw counting clients in this process (see `wire.py`), subscribed live before
the prompt. Reported: aggregate delivered deltas per second (all subscribers' deltas over
the wall time from prompt to the last subscriber's `turn_ended`), lag events, and the
daemon's CPU seconds (its own process: agent excluded; measured until the daemon is idle
again, so the store's batched commits of the turn count too) per 100k deltas produced and
per 100k delivered. The floor: `pump.py` writes the same frames to the same subscribers
over a Unix socket with nothing else to do.

Also, in process: the publish-to-delivery latency of one delta (a real `Hub` over a real
`Store` in a temporary directory, `Hub.publish` until the frame is in a live subscriber's
outbox, one at a time): what delivering only committed deltas adds to every first chunk
(before that change the delta was in the outbox when `publish` returned: 0).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from daemon.channels.channel import Outbox
from daemon.channels.hub import Hub, new_epoch
from daemon.store.sqlite import Store
from protocol import deltas as d
from protocol import messages as m
from tests.support.harness import short_tmpdir

from .common import BenchDaemon, Context, Result, bench_config, median, percentile
from .sse import SseSubscriber
from .wire import RawSubscriber, Tally, Transport, open_subscribers

SIZES = (1, 8, 64)
SSE_SIZES = (1, 8)


async def _count_all(subs: list[Any], marker: bytes) -> list[Tally]:
    tallies: list[Tally] = [Tally() for _ in subs]

    async def one(index: int) -> None:
        tallies[index] = await subs[index].count_until(marker)

    async with trio.open_nursery() as nursery:
        for index in range(len(subs)):
            nursery.start_soon(one, index)
    return tallies


async def _once(daemon: BenchDaemon, control: Any, chat: str, transport: str, count: int,
                chunks: int, ws_url: str | None, token: str | None) -> dict[str, float]:
    subs: list[Any]
    if transport == "sse":
        assert ws_url is not None
        assert token is not None
        subs = [SseSubscriber(ws_url.replace("ws://", "http://"), token)
                for _ in range(count)]
    else:
        wire: Transport = "ws" if transport == "ws" else "unix"
        subs = await open_subscribers(wire, count, socket=daemon.socket, ws_url=ws_url,
                                      token=token)
    try:
        for sub in subs:
            await sub.subscribe(chat, None)
        cpu0 = daemon.cpu_seconds()
        tallies: list[Tally] = []
        async with trio.open_nursery() as nursery:
            async def counting() -> None:
                tallies.extend(await _count_all(subs, b"turn_ended"))

            nursery.start_soon(counting)
            await trio.lowlevel.checkpoint()
            sent = time.perf_counter()
            await control.request(m.Prompt(id=0, chat=chat, text=f"/chunks {chunks}"))
        wall = max(t.ended_at for t in tallies) - sent
        cpu = await daemon.settled_cpu() - cpu0
    finally:
        for sub in subs:
            await sub.aclose()
    delivered = sum(t.deltas for t in tallies)
    produced = delivered / count
    return {"subscribers": count, "delivered": delivered, "seconds": wall,
            "rate": delivered / wall, "lagged": sum(t.lagged for t in tallies),
            "resyncs": sum(t.resynced for t in tallies),
            "cpu": cpu, "cpu_per_100k_produced": cpu / (produced / 1e5),
            "cpu_per_100k_delivered": cpu / (delivered / 1e5)}


async def _pump_once(chunks: int, count: int) -> dict[str, float]:
    base = short_tmpdir("pump")
    path = base / "p.sock"
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is timed
        [sys.executable, "-m", "tests.bench.pump", str(path), str(chunks), str(count)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == "ready", line
        streams = [await trio.open_unix_socket(str(path)) for _ in range(count)]
        subs = [RawSubscriber(stream, "unix") for stream in streams]
        sent = time.perf_counter()
        tallies = await _count_all(subs, b"turn_ended")
        wall = max(t.ended_at for t in tallies) - sent
        for sub in subs:
            await sub.aclose()
    finally:
        proc.wait(30)
        Path(path).unlink(missing_ok=True)
        base.rmdir()
    delivered = sum(t.deltas for t in tallies)
    return {"subscribers": count, "delivered": delivered, "seconds": wall,
            "rate": delivered / wall}


async def delivery_latency(rounds: int) -> list[float]:
    """Seconds from `Hub.publish` to the frame in a live subscriber's outbox, per delta,
    one delta at a time (a pause between, as between a streaming agent's chunks)."""
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with Store.open(Path(tmp) / "db.sqlite") as store:
            hub = Hub(store, ring_size=8192)
            hub.open_channel("c", new_epoch())
            outbox = Outbox(max_frames=1024, max_bytes=1 << 24, hard_max_bytes=1 << 30)
            sub = hub.subscribe("c", outbox, "framed", 0)
            await hub.catch_up(sub)  # at the head: joins the live set
            outbox.take(1 << 30)
            for i in range(rounds):
                began = time.perf_counter()
                hub.publish("c", 1, d.Text(text=f" c{i}"))
                while not outbox.frames:
                    await outbox.wait()
                latencies.append(time.perf_counter() - began)
                outbox.take(1 << 30)
                await trio.sleep(0.001)
    return latencies


async def run(ctx: Context) -> Result:
    chunks = 20_000 if ctx.quick else 100_000
    result = Result("fanout", f"Fan-out (one /chunks {chunks} turn)")
    daemon = BenchDaemon(config=bench_config(websocket=True))
    rows: dict[str, list[dict[str, float]]] = {}
    try:
        daemon.start_bench()
        token = daemon.cli("token").stdout.strip()
        async with daemon.client("bench-control") as control:
            status: m.StatusResult = await control.request(m.GetStatus(id=0))
            ws_url = status.websocket
            info: m.ChatInfo = await control.request(m.OpenChat(id=0, agent="echo",
                                                                cwd=str(daemon.work)))
            await control.request(m.Warm(id=0, chat=info.chat))
            # One small turn first: lazy imports, SQLite pages, the agent's first prompt.
            await _once(daemon, control, info.chat, "unix", 1, 1000, ws_url, token)
            transports: list[str] = ["unix", "ws", "sse"] if ws_url else ["unix"]
            if not ws_url:
                result.skipped.append("websocket: the daemon did not report a URL")
            for transport in transports:
                for count in SSE_SIZES if transport == "sse" else SIZES:
                    key = f"{transport}-{count}"
                    runs = ctx.runs if count == 8 else max(1, ctx.runs - 1)
                    for _ in range(runs):
                        row = await _once(daemon, control, info.chat, transport, count,
                                          chunks, ws_url, token)
                        rows.setdefault(key, []).append(row)
                        ctx.say(f"  {key}: {row['rate'] / 1e3:.0f}k deltas/s, "
                                f"{row['cpu_per_100k_produced']:.2f} CPU s per 100k, "
                                f"lagged {row['lagged']:.0f}")
    finally:
        daemon.close()
    for count in SIZES:
        key = f"pump-{count}"
        for _ in range(max(1, ctx.runs - 1)):
            row = await _pump_once(chunks, count)
            rows.setdefault(key, []).append(row)
        ctx.say(f"  {key}: {median([r['rate'] for r in rows[key]]) / 1e3:.0f}k deltas/s")

    def med(key: str, field: str) -> float:
        return median([r[field] for r in rows[key]])

    for transport in ("unix", "ws", "sse"):
        for count in SIZES:
            key = f"{transport}-{count}"
            if key not in rows:
                continue
            label = {"unix": "Unix socket", "ws": "WebSocket", "sse": "SSE"}[transport]
            if transport == "unix" and count == 8:
                result.add(f"{label}, {count} subscribers: delivered/s", med(key, "rate"),
                           "deltas/s", target=">= 100k/s", check=lambda v: v >= 100_000)
            else:
                result.add(f"{label}, {count} subscribers: delivered/s", med(key, "rate"),
                           "deltas/s")
            result.add(f"{label}, {count} subscribers: daemon CPU per 100k produced",
                       med(key, "cpu_per_100k_produced"), "s")
            result.add(f"{label}, {count} subscribers: daemon CPU per 100k delivered",
                       med(key, "cpu_per_100k_delivered"), "s")
            result.add(f"{label}, {count} subscribers: lag events", med(key, "lagged"), "")
            resyncs = sum(r["resyncs"] for r in rows[key])
            if resyncs:
                result.skipped.append(f"{label}, {count} subscribers: {resyncs} subscribers "
                                      "were resynced (history lost): rates not comparable")
    for count in SIZES:
        key = f"pump-{count}"
        result.add(f"raw pump (floor), {count} subscribers: delivered/s", med(key, "rate"),
                   "deltas/s")
    latencies = await delivery_latency(200 if ctx.quick else 1000)
    for q in (50, 99):
        result.add(f"publish to a live subscriber's outbox, in process, p{q}",
                   percentile(latencies, q) * 1e3, "ms")
    ctx.say(f"  publish -> outbox p50 {percentile(latencies, 50) * 1e3:.3f} ms, "
            f"p99 {percentile(latencies, 99) * 1e3:.3f} ms")
    result.detail = {"chunks": chunks, "runs": rows}
    return result

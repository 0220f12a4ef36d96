"""Scenario 7, stalled client: a subscriber that never reads must not slow anyone else.

Issue 5 asks that a client that never reads does not slow a 5000-chunk turn for another
client by more than 10%. Per run, one reading subscriber times a `/chunks 5000` turn (prompt
sent -> its `turn_ended` read), alone and with stalled subscribers next to it (connected,
subscribed live, never reading a byte during the turn), the two cases interleaved so that
load drifts hit both alike. Stalled subscribers fill their socket buffers, then their
bounded send queues (`[channels] subscriber_queue`), and get `lagged`; after each run they
drain and the lag events they saw are counted, which shows the overflow path was taken.

The floor is the same turn with the reader alone, in the same run.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from protocol import messages as m

from .common import BenchDaemon, Context, Result, bench_config, median
from .wire import RawSubscriber

CHUNKS = 5000
STALLED = (1, 8)


async def _once(daemon: BenchDaemon, control: Any, chat: str, stalled: int,
                reading_peers: int = 0) -> dict[str, float]:
    reader = await RawSubscriber.unix(daemon.socket)
    idle = [await RawSubscriber.unix(daemon.socket) for _ in range(stalled)]
    peers = [await RawSubscriber.unix(daemon.socket) for _ in range(reading_peers)]
    try:
        for sub in [reader, *idle, *peers]:
            await sub.subscribe(chat, None)
        async with trio.open_nursery() as nursery:
            tally: list[float] = []

            async def read() -> None:
                got = await reader.count_until(b"turn_ended", timeout=120)
                if got.deltas < CHUNKS:
                    raise RuntimeError(f"the reader got {got.deltas} of {CHUNKS} deltas")
                tally.append(got.ended_at)

            nursery.start_soon(read)
            for peer in peers:
                nursery.start_soon(peer.count_until, b"turn_ended", 120)
            await trio.lowlevel.checkpoint()
            sent = time.perf_counter()
            await control.request(m.Prompt(id=0, chat=chat, text=f"/chunks {CHUNKS}"))
        wall = tally[0] - sent
        lagged = 0
        for sub in idle:  # now drain: each resumes from the ring up to the turn's end
            lagged += (await sub.count_until(b"turn_ended", timeout=120)).lagged
    finally:
        for sub in [reader, *idle, *peers]:
            await sub.aclose()
    return {"stalled": stalled, "seconds": wall, "lagged": lagged}


async def run(ctx: Context) -> Result:
    result = Result("stall", f"Stalled clients (a {CHUNKS}-chunk turn, timed by one reader)")
    runs = 10 if ctx.quick else 40  # a run is ~0.1 s; the turn is short, so many of them
    rows: dict[int, list[dict[str, float]]] = {0: [], **{n: [] for n in STALLED}}
    peer_rows: list[dict[str, float]] = []
    daemon = BenchDaemon(config=bench_config())
    try:
        daemon.start_bench()
        async with daemon.client("bench-control") as control:
            info: m.ChatInfo = await control.request(m.OpenChat(id=0, agent="echo",
                                                                cwd=str(daemon.work)))
            await control.request(m.Warm(id=0, chat=info.chat))
            await _once(daemon, control, info.chat, 0)  # warm-up
            for index in range(runs):
                for stalled in rows:
                    rows[stalled].append(await _once(daemon, control, info.chat, stalled))
                peer_rows.append(await _once(daemon, control, info.chat, 0, reading_peers=1))
                ctx.say(f"  run {index + 1}: " + ", ".join(
                    f"{n} stalled {rows[n][-1]['seconds'] * 1e3:.0f} ms" for n in rows)
                    + f", 1 reading peer {peer_rows[-1]['seconds'] * 1e3:.0f} ms")
    finally:
        daemon.close()
    alone = median([r["seconds"] for r in rows[0]])
    result.add("turn, reader alone (floor)", alone * 1e3, "ms")
    peer = median([r["seconds"] for r in peer_rows])
    result.add("turn, reader + 1 reading peer", peer * 1e3, "ms")
    result.add("slowdown with 1 reading peer (what any subscriber costs)",
               (peer / alone - 1) * 100, "%")
    for stalled in STALLED:
        took = median([r["seconds"] for r in rows[stalled]])
        result.add(f"turn, reader + {stalled} stalled", took * 1e3, "ms")
        slowdown = (took / alone - 1) * 100
        if stalled == 1:
            result.add("slowdown with 1 stalled client", slowdown, "%", target="<= 10%",
                       check=lambda v: v <= 10)
        else:
            result.add(f"slowdown with {stalled} stalled clients", slowdown, "%")
        result.add(f"lag events per run, {stalled} stalled",
                   median([r["lagged"] for r in rows[stalled]]), "")
    result.detail = {"runs": {str(k): v for k, v in rows.items()}, "reading_peer": peer_rows}
    return result

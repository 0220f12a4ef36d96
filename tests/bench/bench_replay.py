"""Scenario 4, replay: resume 10k and 100k deltas from the ring and from the persisted log.

One chat gets a `/chunks 100000` turn (20k with --quick) in a daemon whose ring holds all
of it. A raw subscriber then subscribes with `since = head - K` and `live = false` and counts
until `replay_complete`: that is the ring. The daemon is then restarted (SIGTERM, start),
which empties the ring, and the same subscriptions are served from the SQLite log.
"""

from __future__ import annotations

import time

import trio

from protocol import messages as m

from .common import BenchDaemon, Context, Result, bench_config, median
from .wire import RawSubscriber


async def _replay(daemon: BenchDaemon, chat: str, since: int) -> dict[str, float]:
    sub = await RawSubscriber.unix(daemon.socket)
    try:
        cpu0 = daemon.cpu_seconds()
        sent = time.perf_counter()
        await sub.subscribe(chat, since, live=False, wait_complete=False)
        tally = await sub.count_until(b"replay_complete")
        wall = tally.ended_at - sent
        cpu = daemon.cpu_seconds() - cpu0
    finally:
        await sub.aclose()
    return {"deltas": tally.deltas, "seconds": wall, "rate": tally.deltas / wall, "cpu": cpu}


async def fill_chat(daemon: BenchDaemon, chunks: int) -> tuple[str, int]:
    """A new echo chat with one `/chunks N` turn; (chat, head seq)."""
    async with daemon.client("bench-control") as control:
        info: m.ChatInfo = await control.request(m.OpenChat(id=0, agent="echo",
                                                            cwd=str(daemon.work)))
        sub = await RawSubscriber.unix(daemon.socket)
        try:
            await sub.subscribe(info.chat, None)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sub.count_until, b"turn_ended")
                await control.request(m.Prompt(id=0, chat=info.chat,
                                               text=f"/chunks {chunks}"))
        finally:
            await sub.aclose()
        # The turn's trailing status delta and the log's last commit.
        await daemon.settled_cpu()
        detail: m.ChatDetail = await control.request(m.Inspect(id=0, chat=info.chat))
        return info.chat, detail.chat.head_seq


async def _head(daemon: BenchDaemon, chat: str) -> int:
    async with daemon.client("bench-control") as control:
        detail: m.ChatDetail = await control.request(m.Inspect(id=0, chat=chat))
        return detail.chat.head_seq


async def run(ctx: Context) -> Result:
    big = 20_000 if ctx.quick else 100_000
    sizes = (10_000, big)
    result = Result("replay", f"Replay ({', '.join(f'{s // 1000}k' for s in sizes)} deltas)")
    daemon = BenchDaemon(config=bench_config(ring_size=big + 4096))
    rows: dict[str, list[dict[str, float]]] = {}
    try:
        daemon.start_bench()
        chat, head = await fill_chat(daemon, big)
        for source in ("ring", "log"):
            if source == "log":
                daemon.stop()
                daemon.start_bench()
                head = await _head(daemon, chat)  # the restart published a status delta
            for size in sizes:
                key = f"{source}-{size}"
                await _replay(daemon, chat, head - size)  # warm-up (page cache, imports)
                for _ in range(ctx.runs):
                    row = await _replay(daemon, chat, head - size)
                    if row["deltas"] != size:
                        raise RuntimeError(f"replayed {row['deltas']} of {size} deltas")
                    rows.setdefault(key, []).append(row)
                ctx.say(f"  {key}: {median([r['rate'] for r in rows[key]]) / 1e3:.0f}k "
                        "deltas/s")
    finally:
        daemon.close()
    for source in ("ring", "log"):
        for size in sizes:
            key = f"{source}-{size}"
            rate = median([r["rate"] for r in rows[key]])
            name = f"from the {source}, {size // 1000}k deltas"
            if source == "ring":
                result.add(name, rate, "deltas/s", target=">= 200k/s",
                           check=lambda v: v >= 200_000)
            else:
                result.add(name, rate, "deltas/s")
            result.add(f"{name}: daemon CPU per 100k",
                       median([r["cpu"] / (r["deltas"] / 1e5) for r in rows[key]]), "s")
    result.detail = {"runs": rows}
    return result

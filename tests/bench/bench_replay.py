"""Scenario 4, replay: resume 10k and 100k deltas from the ring and from the persisted log.

One chat gets a `/chunks 100000` turn (20k with --quick) in a daemon whose ring holds all
of it. A raw subscriber then subscribes with `since = head - K` and `live = false` and counts
until `replay_complete`: that is the ring. The daemon is then restarted (SIGTERM, start),
which empties the ring, and the same subscriptions are served from the SQLite log.

Two figures use the default `ring_size` (issue 22): the hub's replay itself, in process (a
real `Hub` over a real `Store`, a subscriber with the default queue bound replayed pass by
pass from a full ring, frames taken but not sent: the floor of the ring path, no socket;
per CPU second of the thread),
and the same replay end to end through a daemon with the default config.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import trio

from daemon.channels.channel import Outbox
from daemon.channels.hub import Hub, new_epoch
from daemon.config.file import ChannelsConfig
from daemon.store.sqlite import Store
from protocol import deltas as d
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


async def replay_in_process(runs: int) -> dict[str, float]:
    """Deltas/s of `Hub.catch_up` replaying a full default-size ring (all but its oldest
    entry) to one subscriber whose outbox has the default bounds, median of `runs`."""
    defaults = ChannelsConfig()
    size = defaults.ring_size
    rates: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with Store.open(Path(tmp) / "db.sqlite") as store:
            hub = Hub(store, ring_size=size)
            hub.open_channel("c", new_epoch())
            for i in range(size):
                hub.publish("c", 1, d.Text(text=f" c{i}"))
            await store.flush()
            head = hub.head("c")
            for _ in range(runs + 1):  # the first is a warm-up
                outbox = Outbox(max_frames=defaults.subscriber_queue,
                                max_bytes=int(defaults.subscriber_bytes),
                                hard_max_bytes=1 << 30)
                sub = hub.subscribe("c", outbox, "framed", head - size + 1)
                got = 0
                # CPU time of this (the event loop's) thread: on a machine shared with other
                # work, wall time measured the neighbours more than the replay.
                began = time.thread_time()
                while outbox.lagging:
                    await hub.catch_up(sub)
                    got += len(outbox.take(1 << 30))
                rates.append((size - 1) / (time.thread_time() - began))
                hub.unsubscribe(sub)
                if got != size:  # the deltas and replay_complete
                    raise RuntimeError(f"replayed {got - 1} of {size - 1} deltas")
    return {"rate": median(rates[1:]), "deltas": float(size - 1)}


async def _replay_default_ring(ctx: Context) -> float:
    """Deltas/s of a ring replay through a daemon with the default `ring_size`."""
    size = ChannelsConfig().ring_size - 192
    daemon = BenchDaemon(config=bench_config())
    try:
        daemon.start_bench()
        chat, head = await fill_chat(daemon, size + 1000)
        await _replay(daemon, chat, head - size)  # warm-up
        rates = []
        for _ in range(ctx.runs):
            row = await _replay(daemon, chat, head - size)
            if row["deltas"] != size:
                raise RuntimeError(f"replayed {row['deltas']} of {size} deltas")
            rates.append(row["rate"])
        return median(rates)
    finally:
        daemon.close()


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
    hub_rate = (await replay_in_process(ctx.runs))["rate"]
    ctx.say(f"  hub replay, default ring: {hub_rate / 1e6:.2f}M deltas/s")
    result.add(f"hub replay from a full default ring ({ChannelsConfig().ring_size}), in "
               "process", hub_rate, "deltas/s", target=">= 1M/s",
               check=lambda v: v >= 1_000_000)
    wire_rate = await _replay_default_ring(ctx)
    ctx.say(f"  ring replay, default ring, via the daemon: {wire_rate / 1e3:.0f}k deltas/s")
    result.add("from the default ring (8k deltas), via the daemon", wire_rate, "deltas/s")
    result.detail = {"runs": rows}
    return result

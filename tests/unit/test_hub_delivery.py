"""Delivered means committed: the hub hands a delta to subscribers (and to its ring, head and
snapshot) only once the store has committed its batch, so after a crash nothing a client
received is missing from the log. Real hub over a real SQLite store, with the writer's
commit held in its thread by a gate."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import msgspec
import trio

from daemon.channels.channel import Outbox
from daemon.channels.hub import Hub, new_epoch
from daemon.store.sqlite import Store
from protocol import deltas as d
from protocol import messages as m
from protocol.framing import HEADER_SIZE

_decoder = msgspec.msgpack.Decoder(m.ClientSideServerMessage)


def _seqs(outbox: Outbox) -> list[int]:
    out = []
    for frame in outbox.take(1 << 30):
        message = _decoder.decode(frame[HEADER_SIZE:])
        if isinstance(message, d.Delta):
            out.append(message.seq)
    return out


async def test_a_delta_reaches_subscribers_only_after_its_commit(tmp_path: Path) -> None:
    # inline_rows=0: every commit in the writer's thread, where the gate can hold it.
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0, inline_rows=0
                          ) as store:
        hub = Hub(store, ring_size=64)
        hub.open_channel("c", new_epoch())
        outbox = Outbox(max_frames=1024, max_bytes=1 << 20, hard_max_bytes=1 << 30)
        sub = hub.subscribe("c", outbox, "framed", 0)
        await hub.catch_up(sub)  # at the head: joins the live set
        outbox.take(1 << 30)
        gate = threading.Event()
        commit = store._commit_sync
        committed: list[int] = []

        def held(ops: list[tuple[str, Any, bool]],
                 deltas: list[tuple[str, int, float, bytes]]) -> None:
            gate.wait(10)
            commit(ops, deltas)
            committed.extend(seq for _, seq, _, _ in deltas)

        store._commit_sync = held  # type: ignore[method-assign]
        try:
            for i in range(10):
                assert hub.publish("c", 1, d.Text(text=f"t{i}")) == i + 1
            with trio.fail_after(5):
                while store._deltas:  # the writer took the batch; its commit waits
                    await trio.sleep(0.001)
            ch = hub.channel("c")
            assert ch is not None
            assert (ch.head, len(ch.ring), len(outbox.frames)) == (0, 0, 0)
            assert hub.snapshot("c").turn_text == ""
            assert hub.statistics()["undelivered"] == 10
        finally:
            gate.set()
        await store.flush()
        assert committed == list(range(1, 11))
        assert _seqs(outbox) == list(range(1, 11))
        assert hub.head("c") == 10
        assert hub.statistics()["undelivered"] == 0


async def test_backlog_is_bounded_and_wait_for_room_is_released_by_the_commit(
        tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0, max_pending=100,
                          inline_rows=0) as store:
        hub = Hub(store, ring_size=64)
        hub.open_channel("c", new_epoch())
        gate = threading.Event()
        commit = store._commit_sync

        def held(ops: list[tuple[str, Any, bool]],
                 deltas: list[tuple[str, int, float, bytes]]) -> None:
            gate.wait(10)
            commit(ops, deltas)

        store._commit_sync = held  # type: ignore[method-assign]
        released = trio.Event()

        async def writer_like_an_agent() -> None:
            for _ in range(150):
                hub.publish("c", 1, d.Text(text="x"))
                await hub.wait_for_room()
            released.set()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer_like_an_agent)
                with trio.fail_after(5):
                    while not store.backlogged():
                        await trio.sleep(0.001)
                await trio.sleep(0.05)
                assert not released.is_set()
                assert hub.statistics()["undelivered"] == 100
                gate.set()
        finally:
            gate.set()
        assert released.is_set()
        await store.flush()
        assert hub.head("c") == 150

"""Reads of the delta log see every delta submitted before them, including a batch the
writer has taken and is still committing in its thread (a lagging subscriber's catch-up
otherwise found no rows, raised the channel's floor past them and resynced the subscriber)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import trio

from daemon.store import Store


async def test_read_deltas_waits_for_the_batch_in_flight(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        gate = threading.Event()
        commit = store._commit_sync

        def held(ops: list[tuple[str, Any, bool]],
                 deltas: list[tuple[str, int, float, bytes]]) -> None:
            gate.wait(10)
            commit(ops, deltas)

        store._commit_sync = held  # type: ignore[method-assign]
        for seq in range(1, 11):
            store.append_delta("c", seq, float(seq), b"x%d" % seq)
        with trio.fail_after(5):
            while store._deltas:  # the writer took the batch; its commit waits on the gate
                await trio.sleep(0.001)
        assert store.pending == 10

        async def release() -> None:
            await trio.sleep(0.05)
            gate.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(release)
            rows = await store.read_deltas("c", 0, 10)
        assert [seq for seq, _ in rows] == list(range(1, 11))
        assert rows[0][1] == b"x1"

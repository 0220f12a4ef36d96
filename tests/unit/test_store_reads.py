"""Reads of the delta log never wait for the writer: the hub asks only for delivered deltas,
which are committed, so a commit that is slow or cannot finish (a full disk, retried) must not
stall a subscriber's catch-up from the log."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import trio

from daemon.store.sqlite import Store


async def test_read_deltas_does_not_wait_for_the_batch_in_flight(tmp_path: Path) -> None:
    # inline_rows=0: every commit in the writer's thread, where the gate can hold it.
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0, inline_rows=0
                          ) as store:
        for seq in range(1, 6):
            store.append_delta("c", seq, float(seq), b"x%d" % seq)
        await store.flush()
        gate = threading.Event()
        commit = store._commit_sync

        def held(ops: list[tuple[str, Any, bool]],
                 deltas: list[tuple[str, int, float, bytes]]) -> None:
            gate.wait(10)
            commit(ops, deltas)

        store._commit_sync = held  # type: ignore[method-assign]
        try:
            for seq in range(6, 11):
                store.append_delta("c", seq, float(seq), b"x%d" % seq)
            with trio.fail_after(5):
                while store._deltas:  # the writer took the batch; its commit waits on the gate
                    await trio.sleep(0.001)
            assert store.pending == 5
            with trio.fail_after(5):
                rows = await store.read_deltas("c", 0, 10)
            assert [seq for seq, _, _ in rows] == [1, 2, 3, 4, 5]
            assert rows[0][1:] == (1.0, b"x1")
        finally:
            gate.set()
        await store.flush()
        assert [seq for seq, _, _ in await store.read_deltas("c", 0, 10)] == list(range(1, 11))

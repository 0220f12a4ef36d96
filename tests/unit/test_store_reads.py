"""Reads of the delta log see every delta submitted before them, including a batch the
writer has taken and is still committing in its thread (a lagging subscriber's catch-up
otherwise found no rows, raised the channel's floor past them and resynced the subscriber)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from daemon.store.sqlite import Store


async def test_read_deltas_waits_for_the_batch_in_flight(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        gate, committed = threading.Event(), threading.Event()
        commit, query = store._commit_sync, store._query_sync
        queried_after_commit: list[bool] = []

        def held(ops: list[tuple[str, Any, bool]],
                 deltas: list[tuple[str, int, float, bytes]]) -> None:
            gate.wait(10)
            commit(ops, deltas)
            committed.set()

        def observed(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
            queried_after_commit.append(committed.is_set())
            return query(sql, params)

        store._commit_sync = held  # type: ignore[method-assign]
        store._query_sync = observed  # type: ignore[method-assign]
        for seq in range(1, 11):
            store.append_delta("c", seq, float(seq), b"x%d" % seq)
        with trio.fail_after(5):
            while store._deltas:  # the writer took the batch; its commit waits on the gate
                await trio.sleep(0.001)
        assert store.pending == 10

        got: list[list[tuple[int, bytes]]] = []

        async def read() -> None:
            got.append(await store.read_deltas("c", 0, 10))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            # Release the commit once the read waits for it (or, if it does not wait, once
            # it has queried): an event to wait for, not a delay that the read may outrun.
            with trio.fail_after(5):
                while not (store._committed_changed.statistics().tasks_waiting
                           or queried_after_commit):
                    await trio.sleep(0.001)
            assert got == [], "read_deltas returned with a batch still in flight"
            gate.set()
        [rows] = got
        assert queried_after_commit == [True]
        assert [seq for seq, _ in rows] == list(range(1, 11))
        assert rows[0][1] == b"x1"

"""Where the store's writer commits (store/batch.py): a small batch on the event loop, anything
that could hold the loop in the writer's thread. Real SQLite files; a second connection plays
the other process that holds the database's write lock."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import trio
import trio.testing

from daemon.store import batch
from daemon.store.sqlite import Store


async def _taken(store: Store) -> None:
    """Until the writer took what was enqueued (its commit may still be under way)."""
    with trio.fail_after(30):
        while store._deltas or store._ops:
            await trio.sleep(0.001)


async def test_a_small_batch_commits_on_the_loop_and_a_large_one_in_the_thread(
        tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        for seq in range(1, 11):
            store.append_delta("c", seq, float(seq), b"x")
            await store.flush()
        assert store.inline_commits == store.commits >= 10
        before = (store.commits, store.inline_commits)
        rows = [("c", seq, float(seq), b"y") for seq in range(11, 11 + batch.INLINE_ROWS + 1)]
        store.append_deltas(rows, len(rows))
        await store.flush()
        assert store.commits == before[0] + 1
        assert store.inline_commits == before[1]
        assert [r[0] for r in await store.read_deltas("c", 0, 1000)] == list(range(1, 76))


async def test_a_bulk_statement_commits_in_the_thread(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        for seq in range(1, 6):
            store.append_delta("c", seq, float(seq), b"x")
        await store.flush()
        inline = store.inline_commits
        store.execute("DELETE FROM deltas WHERE chat=? AND seq<?", ("c", 4), bulk=True)
        await store.flush()
        assert store.inline_commits == inline
        assert [r[0] for r in await store.read_deltas("c", 0, 100)] == [4, 5]


async def test_a_lock_held_by_another_process_never_holds_the_loop(tmp_path: Path) -> None:
    """The writer connection waits for no lock on the loop: the inline attempt fails at once
    and the thread waits for the lock (and commits once it is free)."""
    path = tmp_path / "db.sqlite"
    async with Store.open(path, commit_interval=0.0) as store:
        store.append_delta("c", 1, 1.0, b"a")
        await store.flush()
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            other.execute("BEGIN IMMEDIATE")  # the write lock, as another process would
            inline = store.inline_commits
            store.append_delta("c", 2, 2.0, b"b")
            await _taken(store)
            began = time.monotonic()
            await trio.sleep(0.05)
            # Had the attempt waited for the lock on the loop (busy_timeout: 30 s), this
            # task could not have run until it gave up.
            assert time.monotonic() - began < 10
            assert store.pending == 1
        finally:
            other.execute("ROLLBACK")
            other.close()
        with trio.fail_after(60):
            await store.flush()
        assert store.inline_commits == inline
        assert store.unavailable is None
        assert [r[0] for r in await store.read_deltas("c", 0, 10)] == [1, 2]


async def test_small_commits_checkpoint_the_wal_in_the_thread(tmp_path: Path) -> None:
    """Automatic checkpoints are off on the writer (one would sync the disk inside a commit
    on the loop): the thread runs them, so the WAL stays bounded."""
    path = tmp_path / "db.sqlite"
    wal = Path(str(path) + "-wal")
    data = b"z" * (60 << 10)
    total = 3 * batch.CHECKPOINT_BYTES
    async with Store.open(path, commit_interval=0.0) as store:
        largest = 0
        for seq in range(1, total // len(data) + 1):
            store.append_delta("c", seq, float(seq), data)
            await store.flush()
            largest = max(largest, wal.stat().st_size)
        assert store.inline_commits < store.commits  # the checkpoints' batches
        assert largest < 2 * batch.CHECKPOINT_BYTES, largest
        assert len(await store.read_deltas("c", 0, 1000)) == total // len(data)


async def test_state_writes_of_tasks_woken_together_share_one_commit(tmp_path: Path) -> None:
    """A prompt queued (a statement, a delta), then taken by the actor it woke (more
    statements, a delta): one commit, not two. The writer takes two more trips round the
    scheduler before committing state writes, so the woken task's writes join them.
    (Without them, trio runs the writer before the actor in half of the steps: twenty
    rounds would all share by chance once in a million.)"""
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.005) as store:
        store.execute("CREATE TABLE t (x INTEGER)")
        await store.flush()
        send, receive = trio.open_memory_channel[int](0)

        async def actor() -> None:
            async for n in receive:
                store.execute("INSERT INTO t VALUES (?)", (-n,))
                store.append_delta("c", 2 * n + 2, 0.0, b"taken")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(actor)
            await trio.testing.wait_all_tasks_blocked()  # the actor waits in its mailbox
            for n in range(20):
                before = store.commits
                store.execute("INSERT INTO t VALUES (?)", (n,))
                store.append_delta("c", 2 * n + 1, 0.0, b"queued")
                await send.send(n)
                await store.flush()
                await _taken(store)
                await store.flush()
                assert store.commits == before + 1, f"round {n}"
            nursery.cancel_scope.cancel()
        assert len(await store.read_deltas("c", 0, 100)) == 40


async def test_a_slow_commit_on_the_loop_sends_the_next_ones_to_the_thread(
        tmp_path: Path) -> None:
    """A commit the disk holds (here a statement made slow by a SQL function that sleeps:
    the real case is a WAL write under writeback pressure) holds the event loop once; the
    commits after it go to the writer's thread for `INLINE_PAUSE`, where a slow write holds
    only the writer. The loop stays responsive meanwhile."""
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        assert store._writer is not None

        def slow() -> int:
            # The slow disk itself, not a wait for something: the statement blocks the
            # committing thread (a voluntary switch, as a held write does) for longer than
            # `INLINE_SLOW` by construction, so the outcome does not depend on timing.
            time.sleep(2.5 * batch.INLINE_SLOW)
            return 1

        store._writer.create_function("slow", 0, slow)
        store.execute("CREATE TABLE t (x INTEGER)")
        await store.flush()
        inline = store.inline_commits
        store.execute("INSERT INTO t VALUES (slow())")
        with trio.fail_after(30):
            await store.flush()
        assert (store.inline_commits, store.slow_inline_commits) == (inline + 1, 1)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await trio.lowlevel.checkpoint()
                ticks += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            for _ in range(3):
                before = ticks
                store.execute("INSERT INTO t VALUES (slow())")
                with trio.fail_after(30):
                    await store.flush()
                assert ticks > before  # the loop ran while the thread committed
            nursery.cancel_scope.cancel()
        assert store.inline_commits == inline + 1
        assert store.slow_inline_commits == 1
        rows = await store.query("SELECT COUNT(*) FROM t")
        assert rows[0][0] == 4


async def test_commit_now_commits_what_waits_in_the_callers_task(tmp_path: Path) -> None:
    """An agent's output is committed by its reader right after the read (`commit_now`),
    with the state writes waiting for the writer's trips (in order: everything enqueued),
    and the observers told before it returns: no trip through the writer task. The writer,
    woken by the enqueueing, then finds nothing to commit."""
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        store.execute("CREATE TABLE t (x INTEGER)")
        await store.flush()
        told: list[int] = []
        store.on_commit(told.append)
        commits = store.commits
        assert not store.commit_now()  # nothing waits
        store.execute("INSERT INTO t VALUES (1)")
        assert not store.commit_now()  # state writes alone are the writer's to gather
        ticket = store.append_delta("c", 1, 1.0, b"chunk")
        assert store.commit_now()
        assert (store.committed, told, store.pending) == (ticket, [ticket], 0)
        assert store.commits == commits + 1
        await trio.testing.wait_all_tasks_blocked()
        assert store.commits == commits + 1
        assert told == [ticket]
        assert [r[0] for r in await store.read_deltas("c", 0, 10)] == [1]


async def test_commit_now_leaves_to_the_writer_what_is_not_for_the_loop(
        tmp_path: Path) -> None:
    """A batch too large for the loop, a bulk statement, a store that cannot write: nothing
    done, the writer commits as before (in its thread, retrying)."""
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        rows = [("c", seq, float(seq), b"y") for seq in range(1, batch.INLINE_ROWS + 2)]
        store.append_deltas(rows, len(rows))
        assert not store.commit_now()
        await store.flush()
        store.execute("DELETE FROM deltas WHERE chat=? AND seq<?", ("c", 3), bulk=True)
        store.append_delta("c", 100, 1.0, b"z")
        assert not store.commit_now()
        await store.flush()
        store._unavailable = "disk full (simulated)"
        store.append_delta("c", 101, 1.0, b"z")
        assert not store.commit_now()
        store._unavailable = None
        await store.flush()
        assert len(await store.read_deltas("c", 0, 1000)) == batch.INLINE_ROWS + 1 - 2 + 2


async def test_commit_now_never_overtakes_a_commit_in_the_thread(tmp_path: Path) -> None:
    """While the writer's thread commits a batch, a delta enqueued after it waits for the
    next commit: committed now, it would be durable before what was enqueued first."""
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        assert store._writer is not None
        gate = threading.Event()

        def held() -> int:
            gate.wait(60)  # the thread's commit, held until the test has looked
            return 1

        store._writer.create_function("held", 0, held)
        store.execute("CREATE TABLE t (x INTEGER)")
        await store.flush()
        store.execute("INSERT INTO t VALUES (held())", bulk=True)
        with trio.fail_after(30):
            while not store._in_thread:
                await trio.sleep(0.001)
        ticket = store.append_delta("c", 1, 1.0, b"after")
        assert not store.commit_now()
        gate.set()
        with trio.fail_after(30):
            await store.flush()
        assert store.committed == ticket
        assert [r[0] for r in await store.read_deltas("c", 0, 10)] == [1]

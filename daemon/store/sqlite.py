"""The store: SQLite (WAL) behind one writer.

Everything durable goes through here: chats, actor records (state, ACP session id, pids for
orphan reclaim, capabilities, usage), the prompt queue, the delta log, state transitions.

Why one writer: SQLite allows one writer at a time, and a commit per delta would cap the
daemon at a few thousand deltas per second. Writers therefore *enqueue* statements
(synchronously, never blocking the caller) and the writer task commits whatever has gathered
as one transaction: a small batch on the event loop (tens of microseconds), anything larger,
a retention delete, a retry and the WAL checkpoints in a worker thread (batch.py says why
and where the line is). `flush()` waits until everything enqueued so far is
committed: callers use it where durability matters before they answer (a prompt is
acknowledged only once it is in the durable queue).

Deltas are a group commit: a batch holding a delta is committed at once (no gathering delay),
and whatever is published while that commit runs forms the next batch, so the
batch grows with the load and a lone delta waits for one commit only. `append_delta` returns
a ticket; `on_commit` callbacks learn, right after each commit, the ticket up to which
everything is committed: the hub delivers a delta to subscribers only then, so nothing a
client received can be missing from the log after a crash. Deltas not yet committed are
bounded (`max_pending` rows, `max_pending_bytes`): `wait_for_room` is the backpressure the
agents' readers wait on, which also bounds the publish-to-commit lag.

Reads (reads.py) go through a second connection. `synchronous=NORMAL` in WAL mode survives
a crash of the daemon process (what orphan reclaim and the durable queue need) though not a
power loss of the last few commits.

A commit that fails with an error a retry can fix (a full disk, an I/O error, a lock held by
another process) is retried with backoff, the batch kept, for as long as it takes; it never
fails the store. Meanwhile `unavailable` says why, agents' output waits (`wait_for_room`),
a client's request that writes is answered `StorageUnavailable` after `patience`
(`wait_writable`, and `flush` under `FLUSH_PATIENCE`) instead of holding its connection, and
reads go on. A stop on a full disk gives up on what it cannot commit after that same
patience, and logs how much was lost.

A damaged file is never worked around. At start-up the daemon refuses an empty (0-byte) file
and runs `PRAGMA quick_check` (a full read, a fraction of a second per hundred MB); while it
runs, a commit or read that meets damage (or any error the writer cannot retry) fails the
store: every `flush` waiter gets `DatabaseUnusable`, the store cancels what runs inside
`Store.open` (the whole daemon, whose actors stop their agents on the way out) and `Store.open`
raises `DatabaseUnusable`. Its message names the file, the fault and what to do, and the CLI
prints it and exits 1. Before this, a dead writer left `Store.open` waiting, shielded, on a
commit that never came: start-up hung and SIGTERM was ignored.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from daemon.log import Log
from daemon.store import batch as batches
from daemon.store import opening
from daemon.store.batch import Batch
from daemon.store.commits import Commits, GaveUp
from daemon.store.faults import (
    FLUSH_PATIENCE,
    STORAGE_PATIENCE,
    DatabaseUnusable,
    StoreClosed,
    unusable,
)
from daemon.store.progress import Progress
from daemon.store.reads import Reads

ROWS_PER_INSERT = batches.ROWS_PER_INSERT


class Store(Commits, Progress, Reads):
    """Owns the database. Create with `Store.open(path)`."""

    def __init__(self, path: Path, *, commit_interval: float, batch_max: int,
                 max_pending: int = 10_000, max_pending_bytes: int = 16 << 20,
                 inline_rows: int = batches.INLINE_ROWS,
                 patience: float = STORAGE_PATIENCE) -> None:
        self.path = path
        self.patience = patience
        """Seconds a request (and the final flush) waits while the store cannot commit."""
        self.commit_interval = commit_interval
        """How long statements without a delta gather before their commit."""
        self.batch_max = batch_max
        self.max_pending = max_pending
        """Deltas enqueued and not yet committed, past which `wait_for_room` waits."""
        self.max_pending_bytes = max_pending_bytes
        self.inline_rows = inline_rows
        """Batches of at most this many deltas and statements commit on the event loop
        (batch.py; 0: every commit in the writer's thread)."""
        self._log = Log("store")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._rows_per_insert = ROWS_PER_INSERT
        self._ops: list[tuple[str, Any, bool]] = []
        self._deltas: list[tuple[str, int, float, bytes]] = []
        self._deltas_bytes = 0
        """The size of the rows in `_deltas`."""
        self._bulk = False
        """A `bulk` statement is among `_ops` (the batch commits in the writer's thread)."""
        self._since_checkpoint = 0
        """`Batch.weight` committed since the last WAL checkpoint."""
        self._uncommitted_deltas = 0
        self._uncommitted_bytes = 0
        """Deltas (and their bytes) enqueued or in the commit under way."""
        self._on_commit: list[Callable[[int], None]] = []
        self._submitted = 0
        self._committed = 0
        self._work = trio.Event()
        self._delta_waiting = trio.Event()
        """Set by `append_delta`: ends the gathering of a batch of statements at once."""
        self._committed_changed = trio.Event()
        self._read_lock = trio.Lock()
        self._threads = trio.CapacityLimiter(2)
        """The store's own worker threads (the writer's and the reader's, each used by one
        task at a time), apart from trio's default limiter: threads that other parts hold
        for long (an agent's file request on a slow disk) must never delay a commit."""
        self._closed = False
        self._unavailable: str | None = None
        """Why the last commit attempt failed, while the writer retries it (set from its
        thread, cleared after a commit)."""
        self._give_up = threading.Event()
        """Set at close when a batch cannot be committed: the retrying thread stops."""
        self._failure: DatabaseUnusable | None = None
        """Set once the database has failed for good; see the module docstring."""
        self._scope: trio.CancelScope | None = None
        """The scope of everything inside `Store.open`, cancelled when the store fails."""
        self.commits = 0
        self.inline_commits = 0
        """Of `commits`, those made on the event loop."""
        self.slow_inline_commits = 0
        """Of those, the ones that took over `batch.INLINE_SLOW` (each sends the next
        commits to the thread for `batch.INLINE_PAUSE`)."""
        self._inline_after = -math.inf
        """Until then (trio time), every commit goes to the thread."""
        self._in_thread = False
        self.rows_written = 0
        self.write_errors = 0
        self.dropped = 0
        """Writes enqueued after the store failed, which can never be committed."""
        self._commit_timer: Callable[[float], None] | None = None
        """`time_commits`' observer."""

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: Path, *, commit_interval: float = 0.005, batch_max: int = 20000,
        max_pending: int = 10_000, max_pending_bytes: int = 16 << 20,
        inline_rows: int = batches.INLINE_ROWS, patience: float = STORAGE_PATIENCE,
    ) -> AsyncIterator[Store]:
        store = cls(path, commit_interval=commit_interval, batch_max=batch_max,
                    max_pending=max_pending, max_pending_bytes=max_pending_bytes,
                    inline_rows=inline_rows, patience=patience)
        await trio.to_thread.run_sync(store._open_sync, limiter=store._threads)
        body_error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                store._scope = nursery.cancel_scope
                nursery.start_soon(store._writer_loop)
                try:
                    yield store
                except BaseException as exc:
                    # Re-raised below, outside the nursery, so the caller sees its own
                    # exception rather than an ExceptionGroup wrapping it.
                    body_error = exc
                finally:
                    with trio.CancelScope(shield=True), contextlib.suppress(DatabaseUnusable):
                        await store._final_flush()
                    nursery.cancel_scope.cancel()
        finally:
            store._closed = True
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(store._close_sync, limiter=store._threads)
        if store._failure is not None:
            # The cause of whatever the body ended with (often the Cancelled of our own
            # cancel, which must not escape its scope): the one thing to report.
            raise store._failure from None
        if body_error is not None:
            raise body_error

    def _open_sync(self) -> None:
        """Open both connections on a sound database (opening.py), or raise
        `DatabaseUnusable` and leave nothing open."""
        self._writer, self._reader = opening.open_connections(self.path)
        batches.prepare_writer(self._writer)
        limit = self._writer.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._rows_per_insert = max(1, min(ROWS_PER_INSERT, limit // 4))

    def _close_sync(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
        self._writer = self._reader = None

    # ------------------------------------------------------------------ writes

    def execute(self, sql: str, params: Sequence[Any] = (), *, bulk: bool = False) -> None:
        """Enqueue one statement. Never blocks; committed within `commit_interval`.
        `bulk`: its cost depends on the data (a retention delete), so its batch commits in
        the writer's thread, never on the event loop (batch.py).
        After the store failed, dropped (counted in `dropped`): the failure was reported
        once, and cleanup that records a last state must not fail on it."""
        self._enqueue(sql, params, False, bulk)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._enqueue(sql, list(rows), True, False)

    def _enqueue(self, sql: str, params: Any, many: bool, bulk: bool) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")
        if self._failure is not None:
            self.dropped += 1
            return
        self._ops.append((sql, params, many))
        if bulk or (many and len(params) > batches.INLINE_ROWS):
            self._bulk = True
        self._submitted += 1
        self._work.set()

    def prune_transitions(self, before: float) -> None:
        """Enqueue the deletion of state transitions older than `before` (by the `ts`
        index: the rows it deletes, not the table)."""
        self.execute("DELETE FROM transitions WHERE ts<?", (before,), bulk=True)

    def append_delta(self, chat: str, seq: int, ts: float, data: bytes) -> int:
        """Enqueue a delta for the log; returns its ticket, which `on_commit` callbacks are
        given once it is committed. Deltas are inserted with one executemany per batch."""
        if self._closed:
            raise StoreClosed("the store is closed")
        if self._failure is not None:
            self.dropped += 1
            return self._submitted + 1  # never committed: the daemon is stopping
        self._deltas.append((chat, seq, ts, data))
        self._deltas_bytes += len(data)
        self._uncommitted_deltas += 1
        self._uncommitted_bytes += len(data)
        self._submitted += 1
        self._work.set()
        self._delta_waiting.set()
        return self._submitted

    def append_deltas(self, rows: list[tuple[str, int, float, bytes]], nbytes: int) -> int:
        """`append_delta` for a batch of rows, `nbytes` their data's total size: one ticket
        for the lot (they are always committed together: the writer takes the queue
        between two awaits, and this adds to it in one step)."""
        if self._closed:
            raise StoreClosed("the store is closed")
        if self._failure is not None:
            self.dropped += len(rows)
            return self._submitted + 1  # never committed: the daemon is stopping
        self._deltas.extend(rows)
        self._deltas_bytes += nbytes
        self._uncommitted_deltas += len(rows)
        self._uncommitted_bytes += nbytes
        self._submitted += len(rows)
        self._work.set()
        self._delta_waiting.set()
        return self._submitted

    async def flush(self) -> None:
        """Wait until everything enqueued before this call is committed; `DatabaseUnusable`
        if the store has failed (now or while waiting), since that never happens then.

        Under `FLUSH_PATIENCE` (a client's request), `StorageUnavailable` once that long has
        passed while the store cannot commit: the client is answered instead of left waiting
        for a disk to be freed. A store that is only slow is waited for."""
        target = self._submitted
        patience = FLUSH_PATIENCE.get()
        deadline = trio.current_time() + patience if patience is not None else math.inf
        while self._committed < target:
            if self._failure is not None:
                raise self._failure
            if self._writer is None:
                return
            self._work.set()
            with trio.move_on_at(deadline):
                await self._committed_changed.wait()
            if self._committed < target and trio.current_time() >= deadline:
                if self._unavailable is not None:
                    raise self.unavailable_error(
                        "the request was not confirmed durable; it takes effect if the "
                        "daemon can write again")
                deadline = trio.current_time() + 1.0  # slow, not failing: look again

    async def _final_flush(self) -> None:
        """At close: commit what is pending. If the store cannot commit (a full disk) for
        `patience`, give up on it, say how much is lost, and let the daemon stop."""
        while self.pending and self._failure is None and self._writer is not None:
            with trio.move_on_after(self.patience):
                await self.flush()
                return
            if self._unavailable is not None:
                self._log.error("stopping with writes not committed: the database cannot be "
                                "written", file=str(self.path), error=self._unavailable,
                                lost=self.pending)
                self._give_up.set()
                return

    def _fail(self, exc: BaseException) -> DatabaseUnusable:
        """Fail the store for good because of `exc`: report it once, wake every `flush`
        waiter (each raises) and cancel everything inside `Store.open`, which then raises
        the returned `DatabaseUnusable`."""
        if self._failure is None:
            self._failure = exc if isinstance(exc, DatabaseUnusable) else unusable(self.path, exc)
            self._log.error("database failed; stopping", file=str(self.path),
                            error=str(self._failure))
            self._ops.clear()
            self._deltas.clear()
            self._uncommitted_deltas = self._uncommitted_bytes = self._deltas_bytes = 0
            event, self._committed_changed = self._committed_changed, trio.Event()
            event.set()
            if self._scope is not None:
                self._scope.cancel()
        return self._failure

    async def _writer_loop(self) -> None:
        try:
            await self._write_batches()
        except GaveUp:
            return
        except Exception as exc:
            # Whatever stopped the writer (damage, or a bug), no commit comes any more:
            # the store fails rather than leave `flush` waiters hanging.
            self._fail(exc)

    async def _write_batches(self) -> None:
        while True:
            await self._work.wait()
            self._work = trio.Event()
            if not self._deltas and len(self._ops) < self.batch_max:
                # Let a burst of statements gather into one transaction, until a delta
                # comes: deltas are delivered only once committed, so each waits for one
                # commit and no more (a group commit: what arrives meanwhile forms the next
                # batch). A turn's first chunk follows its state writes by microseconds.
                with trio.move_on_after(self.commit_interval):
                    await self._delta_waiting.wait()
            self._delta_waiting = trio.Event()
            if self._ops:
                # State writes: two more trips round the scheduler first, so that what the
                # tasks their writer woke write before they next wait (a prompt queued,
                # then taken by the actor: its state, record and transition) joins this
                # commit instead of forming the next: one commit and one delivery to each
                # subscriber per step of a turn (issue 22). Those tasks run in the scheduler
                # batch after the writer's; this task may have run in that same batch,
                # after the writer, hence two. Deltas alone (an agent's output) commit at
                # once: every other task's step would come before them.
                await trio.lowlevel.cancel_shielded_checkpoint()
                await trio.lowlevel.cancel_shielded_checkpoint()
            batch = Batch(self._ops, self._deltas, self._deltas_bytes, self._bulk)
            self._ops, self._deltas, self._deltas_bytes, self._bulk = [], [], 0, False
            ops, deltas, nbytes = batch.ops, batch.deltas, batch.nbytes
            target = self._submitted
            if batch:
                began = time.perf_counter()
                self._since_checkpoint += batch.weight()
                due = self._since_checkpoint >= batches.CHECKPOINT_BYTES
                if due or self._unavailable is not None or not batch.small(self.inline_rows) \
                        or trio.current_time() < self._inline_after \
                        or not self._commit_inline(batch):
                    # Not cancellable: a half-applied batch must still be committed or
                    # rolled back in its thread; shutdown flushes before cancelling this task.
                    self._in_thread = True
                    try:
                        with trio.CancelScope(shield=True):
                            await trio.to_thread.run_sync(self._commit_sync, ops, deltas,
                                                          limiter=self._threads)
                    finally:
                        self._in_thread = False
                    if due:
                        self._since_checkpoint = 0
                if self._commit_timer is not None:
                    self._commit_timer(time.perf_counter() - began)
            if batch or target != self._committed:
                self._done(target, len(deltas), nbytes)

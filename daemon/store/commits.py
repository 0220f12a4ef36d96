"""How the store's batches are committed: on the event loop (small ones, in one attempt), in
the writer's thread (the rest, retried), and right after a publish (`commit_now`: an agent's
output while the writer is idle, without waiting for the writer task's turn). batch.py says
what goes where and why; sqlite.py's writer task decides when.

`Commits` is a base of `Store`: the commit itself and what follows every commit (the ticket,
the observers, the waiters), whoever made it."""

from __future__ import annotations

import contextlib
import resource
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import trio

from daemon.log import Log
from daemon.store import batch as batches
from daemon.store.batch import Batch
from daemon.store.faults import DatabaseUnusable, is_damage


class GaveUp(Exception):
    """The store closed while a batch could not be committed (shutdown on a full disk)."""


def _thread_waits() -> int:
    """How many times the calling thread has blocked (voluntary context switches): what
    tells a commit the disk held from one a busy machine preempted."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw


class Commits:
    """`Store`'s commits: inline, in the thread, and `commit_now`."""

    inline_rows: int
    commits: int
    inline_commits: int
    slow_inline_commits: int
    rows_written: int
    write_errors: int
    _log: Log
    _writer: sqlite3.Connection | None
    _rows_per_insert: int
    _ops: list[tuple[str, Any, bool]]
    _deltas: list[tuple[str, int, float, bytes]]
    _deltas_bytes: int
    _bulk: bool
    _since_checkpoint: int
    _uncommitted_deltas: int
    _uncommitted_bytes: int
    _on_commit: list[Callable[[int], None]]
    _commit_timer: Callable[[float], None] | None
    _submitted: int
    _committed: int
    _committed_changed: trio.Event
    _closed: bool
    _unavailable: str | None
    _failure: DatabaseUnusable | None
    _inline_after: float
    _give_up: threading.Event
    _in_thread: bool
    """The writer task waits for its thread to commit the batch it took."""

    def commit_now(self) -> bool:
        """Commit what waits, here, when deltas are among it, no commit is under way (in
        the writer's thread) and the batch is one the writer would commit on the event loop
        anyway: an agent's output is delivered from its reader's task, without waiting for
        the writer task's turn of the scheduler, nor for the trips it takes to gather state
        writes (which join this commit: everything enqueued commits, in order). A wake-up
        less on a warm turn's first chunk (issue 22). True if it committed (the writer,
        woken by the enqueueing, then finds nothing); False: nothing done, the writer
        commits as usual."""
        deltas = self._deltas
        if (not deltas or self._in_thread or self._closed or self._unavailable is not None
                or self._failure is not None or self._writer is None
                or trio.current_time() < self._inline_after):
            return False
        batch = Batch(self._ops, deltas, self._deltas_bytes, self._bulk)
        weight = batch.weight()
        if (not batch.small(self.inline_rows)
                or self._since_checkpoint + weight >= batches.CHECKPOINT_BYTES):
            return False  # the thread's (a checkpoint is due with it)
        target = self._submitted
        began = time.perf_counter()
        try:
            committed = self._commit_inline(batch)
        except Exception:
            # Damage (or a bug), rolled back: the writer meets it again and fails the
            # store, as it does for its own commits; the agent's reader is not the place.
            return False
        if not committed:
            return False  # rolled back; the writer's thread retries it
        self._ops, self._deltas, self._deltas_bytes, self._bulk = [], [], 0, False
        self._since_checkpoint += weight
        if self._commit_timer is not None:
            self._commit_timer(time.perf_counter() - began)
        self._done(target, len(deltas), batch.nbytes)
        return True

    def _done(self, target: int, ndeltas: int, nbytes: int) -> None:
        """Everything enqueued up to `target` is committed: tell the observers and waiters."""
        self._committed = target
        self._unavailable = None
        if ndeltas:
            self._uncommitted_deltas -= ndeltas
            self._uncommitted_bytes -= nbytes
        for callback in self._on_commit:
            try:
                callback(target)
            except Exception:
                self._log.exception("commit callback failed")
        event, self._committed_changed = self._committed_changed, trio.Event()
        event.set()

    def _bad_statement(self, sql: str, exc: sqlite3.IntegrityError) -> None:
        self.write_errors += 1
        self._log.error("statement failed", sql=sql[:120], error=str(exc))

    def _commit_inline(self, batch: Batch) -> bool:
        """Commit a small batch on the event loop, in one attempt (batch.py): False, the
        batch rolled back, on an error a retry could fix (the thread then retries it)."""
        conn = self._writer
        assert conn is not None
        began = time.perf_counter()
        waits = _thread_waits()
        try:
            batches.apply(conn, batch, self._rows_per_insert, self._bad_statement)
        except sqlite3.OperationalError as exc:
            if is_damage(exc):
                raise
            return False
        self.commits += 1
        self.inline_commits += 1
        self.rows_written += len(batch.deltas) + len(batch.ops)
        took = time.perf_counter() - began
        if took > batches.INLINE_SLOW and _thread_waits() > waits:
            # The commit waited (the disk: writeback under memory pressure, a slow device;
            # or the GIL), not merely preempted by a busy machine: the next commits go to
            # the thread, where a slow write holds only the writer.
            self._inline_after = trio.current_time() + batches.INLINE_PAUSE
            self.slow_inline_commits += 1
            self._log.warning("a commit on the event loop was slow; commits go to the "
                              "writer's thread for a while", ms=round(took * 1000, 1),
                              seconds=batches.INLINE_PAUSE)
        return True

    def _commit_sync(
        self, ops: list[tuple[str, Any, bool]], deltas: list[tuple[str, int, float, bytes]]
    ) -> None:
        """Commit a batch in the writer's thread, retrying what a retry can fix; then a WAL
        checkpoint if one is due (`CHECKPOINT_BYTES`)."""
        conn = self._writer
        assert conn is not None
        batch = Batch(ops, deltas)
        batches.set_busy_timeout(conn, batches.BUSY_TIMEOUT_MS)
        try:
            self._commit_retrying(conn, batch)
            if self._since_checkpoint >= batches.CHECKPOINT_BYTES:
                batches.checkpoint(conn)
        finally:
            with contextlib.suppress(sqlite3.Error):
                batches.set_busy_timeout(conn, 0)

    def _commit_retrying(self, conn: sqlite3.Connection, batch: Batch) -> None:
        attempt = 0
        while True:
            try:
                batches.apply(conn, batch, self._rows_per_insert, self._bad_statement)
                self.commits += 1
                self.rows_written += len(batch.deltas) + len(batch.ops)
                return
            except sqlite3.Error as exc:
                if is_damage(exc) or not isinstance(exc, sqlite3.OperationalError):
                    # Damage (or worse): no retry can commit this batch.
                    raise
                # Disk full, I/O error, locked by an outside process: keep the batch and retry
                # (clients' writes meanwhile get `storage_unavailable`, agents' output waits).
                attempt += 1
                self.write_errors += 1
                self._unavailable = str(exc)
                self._log.error("commit failed; retrying", error=str(exc), attempt=attempt)
                if self._give_up.wait(min(2.0, 0.05 * 2**attempt)):
                    raise GaveUp from exc

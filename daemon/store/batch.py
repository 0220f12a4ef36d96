"""One write batch: what the store's writer commits as one transaction, and where it commits it.

A small batch (a turn's state writes, a few streamed deltas) is committed **on the event
loop**, in one attempt: with `synchronous=NORMAL` in WAL mode a commit writes the WAL and does
not wait for the disk, so a handful of rows costs ~50-100 us of CPU. Handed to the writer's
thread instead, the same commit took 0.4-0.8 ms from hand-over to callback on a quiet
machine (two thread hops, and the thread waiting for the GIL behind the busy loop at every
statement), and a turn's first chunk waited for one or two of them: 1.8 ms of daemon
overhead on a warm turn against the 1 ms target (issue 22; docs/PERFORMANCE.md).

Everything that could hold the loop goes to the thread, which also retries:
- a batch with more than `INLINE_ROWS` deltas or statements, more than `INLINE_BYTES`, or a
  statement marked `bulk` (retention deletes: their cost is the rows they find);
- a batch after a failed commit (the store is `unavailable`), and a batch when the inline
  attempt fails with an error a retry could fix: the writer connection waits for no lock on
  the loop (`busy_timeout` 0 there), so a database locked by another process costs the loop
  one failed statement, and the thread waits for the lock as before;
- every batch for `INLINE_PAUSE` after an inline commit that took over `INLINE_SLOW` and
  blocked on the way (a voluntary context switch of the loop's thread: the disk held a
  write, under writeback pressure or on a slow device; preemption on a busy machine does not
  count): such a disk holds the loop once, then only the writer's thread;
- a WAL checkpoint: automatic checkpoints are off on the writer connection (one runs inside
  the COMMIT that crosses its threshold and syncs the disk), and the thread runs a passive
  one after the commit that brings the WAL past `CHECKPOINT_BYTES` since the last.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

INLINE_ROWS = 64
"""Deltas, and separately statements, a batch committed on the event loop may hold."""
INLINE_BYTES = 256 << 10
"""Delta bytes a batch committed on the event loop may hold."""
INLINE_SLOW = 0.02
"""Seconds an inline commit may take before the loop stops committing for `INLINE_PAUSE`:
a small batch takes 50-100 us; 20 ms means the disk held the write (writeback under
memory pressure, a slow or failing device), and the next commits would too."""
INLINE_PAUSE = 10.0
"""Seconds every commit goes to the writer's thread after a slow inline one."""
CHECKPOINT_BYTES = 4 << 20
"""Bytes written (roughly: deltas' data, a page per commit) between two WAL checkpoints;
SQLite's automatic checkpoint runs at 1000 pages, the same order."""
BUSY_TIMEOUT_MS = 30_000
"""How long a commit in the writer's thread waits for a lock another process holds."""
PAGE = 4096
ROWS_PER_INSERT = 256
"""Deltas inserted by one statement (at most; fewer where SQLite allows fewer parameters)."""

_INSERT_DELTAS = "INSERT OR REPLACE INTO deltas(chat, seq, ts, data) VALUES "

Op = tuple[str, Any, bool]
"""A statement: its SQL, its parameters (a list of rows for an `executemany`), many."""
DeltaRow = tuple[str, int, float, bytes]
"""A delta's log row: chat, seq, ts, encoded delta."""


@dataclass(slots=True)
class Batch:
    """Statements and deltas enqueued since the last commit, committed together."""

    ops: list[Op] = field(default_factory=list)
    deltas: list[DeltaRow] = field(default_factory=list)
    nbytes: int = 0
    """The size of the deltas' data."""
    bulk: bool = False
    """A statement whose cost depends on the data (marked `bulk`, or an `executemany` of
    more than `INLINE_ROWS` rows) is in the batch."""

    def __bool__(self) -> bool:
        return bool(self.ops or self.deltas)

    def add(self, sql: str, params: Any, many: bool, bulk: bool) -> None:
        self.ops.append((sql, params, many))
        if bulk or (many and len(params) > INLINE_ROWS):
            self.bulk = True

    def small(self, inline_rows: int) -> bool:
        """Cheap enough to commit on the event loop."""
        return (not self.bulk and len(self.deltas) <= inline_rows
                and len(self.ops) <= inline_rows and self.nbytes <= INLINE_BYTES)

    def weight(self) -> int:
        """Roughly what committing it adds to the WAL, for `CHECKPOINT_BYTES`."""
        return self.nbytes + PAGE * (1 + len(self.ops) // 16)


@functools.cache
def _insert_deltas_sql(rows: int) -> str:
    """One INSERT of `rows` deltas (made once per size: the connection caches the prepared
    statement by its text)."""
    return _INSERT_DELTAS + ",".join(["(?,?,?,?)"] * rows)


def insert_deltas(conn: sqlite3.Connection, deltas: list[DeltaRow], rows_per_insert: int
                  ) -> None:
    """Insert a batch of deltas by multi-row INSERTs of up to `rows_per_insert` rows (then
    halving, so a handful of statement sizes serve every batch). `executemany` steps once
    per row, and each step releases and takes back the GIL: against a busy event loop the
    writer waited for the GIL row by row (measured: 13 us per row against 3 with 256-row
    statements, and twice the CPU)."""
    chain = itertools.chain.from_iterable
    start, left, size = 0, len(deltas), rows_per_insert
    while left:
        while size > left:
            size //= 2
        conn.execute(_insert_deltas_sql(size), list(chain(deltas[start:start + size])))
        start += size
        left -= size


def apply(conn: sqlite3.Connection, batch: Batch, rows_per_insert: int,
          bad_statement: Callable[[str, sqlite3.IntegrityError], None]) -> None:
    """Commit `batch` as one transaction, in one attempt: on an error it is rolled back and
    the error raised. A statement that breaks a constraint (a bug) is reported to
    `bad_statement` and skipped: it must not roll back everyone else's data."""
    try:
        conn.execute("BEGIN")
        if batch.deltas:
            insert_deltas(conn, batch.deltas, rows_per_insert)
        for sql, params, many in batch.ops:
            try:
                if many:
                    conn.executemany(sql, params)
                else:
                    conn.execute(sql, params)
            except sqlite3.IntegrityError as exc:
                bad_statement(sql, exc)
        conn.execute("COMMIT")
    except sqlite3.Error:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise


def set_busy_timeout(conn: sqlite3.Connection, ms: int) -> None:
    conn.execute(f"PRAGMA busy_timeout={int(ms)}")


def prepare_writer(conn: sqlite3.Connection) -> None:
    """The writer connection's settings for `apply` on the loop: no automatic checkpoint
    (the thread runs them, `checkpoint`), no waiting for another process's lock."""
    conn.execute("PRAGMA wal_autocheckpoint=0")
    set_busy_timeout(conn, 0)


def checkpoint(conn: sqlite3.Connection) -> None:
    """A passive checkpoint: copies what it can of the WAL into the database without
    waiting for readers (the next writes reuse the WAL from its start once it is all
    copied). Errors are left to the next one."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error:
        pass

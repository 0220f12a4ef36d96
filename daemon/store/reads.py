"""The store's reads: a second connection (WAL lets it read while the writer writes), used in
a worker thread of the store's own, one read at a time. A read sees what is committed; a read
that meets damage fails the store (`DatabaseUnusable`), as a commit that meets it does.

`Reads` is a base of `Store`, which opens, closes and fails the connection it reads on."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import trio

from daemon.store.faults import DatabaseUnusable, StoreClosed, is_damage


class Reads:
    """The read side of `Store`: `query`, `query_each` and `read_deltas`."""

    _reader: sqlite3.Connection | None
    _read_lock: trio.Lock
    _threads: trio.CapacityLimiter
    _fail: Callable[[BaseException], DatabaseUnusable]
    """`Store._fail`: fail the store for good (a read met damage)."""

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read on the reader connection. Sees what is committed (call `flush` first
        to see your own recent writes)."""
        async with self._read_lock:
            with self._reading():
                return await trio.to_thread.run_sync(self._query_sync, sql, params,
                                                     limiter=self._threads)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """A read that meets damage fails the store (and raises `DatabaseUnusable`): the
        daemon would otherwise go on serving with part of its state unreadable."""
        try:
            yield
        except sqlite3.Error as exc:
            if is_damage(exc):
                raise self._fail(exc) from None
            raise

    def _query_sync(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        conn = self._reader
        if conn is None:
            raise StoreClosed("the store is closed")
        return conn.execute(sql, params).fetchall()

    async def query_each(self, sql: str, params: Sequence[Sequence[Any]]
                         ) -> list[list[tuple[Any, ...]]]:
        """Run one read per parameter tuple, all in one trip to the reader's thread: a keyed
        lookup per chat costs a few index probes each, where one GROUP BY over the table
        reads every row of it."""
        async with self._read_lock:
            with self._reading():
                return await trio.to_thread.run_sync(self._query_each_sync, sql, params,
                                                     limiter=self._threads)

    def _query_each_sync(self, sql: str, params: Sequence[Sequence[Any]]
                         ) -> list[list[tuple[Any, ...]]]:
        return [self._query_sync(sql, one) for one in params]

    async def read_deltas(
        self, chat: str, after: int, upto: int, limit: int = 5000
    ) -> list[tuple[int, float, bytes]]:
        """Logged deltas of `chat` with `after < seq <= upto`, oldest first, as (seq, ts,
        data). Sees only what is committed: the hub asks only for delivered deltas, which
        are."""
        rows = await self.query(
            "SELECT seq, ts, data FROM deltas WHERE chat=? AND seq>? AND seq<=? "
            "ORDER BY seq LIMIT ?",
            (chat, after, upto, limit),
        )
        return [(int(seq), float(ts), bytes(data)) for seq, ts, data in rows]

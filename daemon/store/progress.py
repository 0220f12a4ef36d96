"""What the store's users see of its progress and health: the ticket up to which everything
is committed and the observers told after each commit (the hub delivers a delta only then),
the backpressure on uncommitted deltas (`wait_for_room`), and whether the store can write
(`wait_writable`, `unavailable`, `failure`).

`Progress` is a base of `Store`: it reads the state the writer keeps (sqlite.py) and
changes none of it beyond registering observers."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import trio

from daemon.store.faults import DatabaseUnusable, StorageUnavailable


class Progress:
    """`Store`'s commit ticket, backpressure and availability, read from the writer's state."""

    path: Path
    patience: float
    max_pending: int
    max_pending_bytes: int
    commits: int
    rows_written: int
    write_errors: int
    dropped: int
    _writer: sqlite3.Connection | None
    _on_commit: list[Callable[[int], None]]
    _commit_timer: Callable[[float], None] | None
    _submitted: int
    _committed: int
    _uncommitted_deltas: int
    _uncommitted_bytes: int
    _committed_changed: trio.Event
    _unavailable: str | None
    _failure: DatabaseUnusable | None

    def time_commits(self, observe: Callable[[float], None]) -> None:
        """Call `observe(seconds)` in the writer task after each commit: how long the batch
        took from its hand-over to the writer thread to its commit (for metrics; it must be
        cheap and never raise)."""
        self._commit_timer = observe

    def on_commit(self, callback: Callable[[int], None]) -> None:
        """Call `callback(ticket)` after each commit: everything enqueued up to `ticket`
        (`append_delta`'s return value) is committed. Runs in the writer task, so it must
        not block; an exception in it is logged, never lets the writer die."""
        self._on_commit.append(callback)

    @property
    def committed(self) -> int:
        """The ticket up to which everything is committed."""
        return self._committed

    def backlogged(self) -> bool:
        """Whether uncommitted deltas are at their bound (`wait_for_room` would wait)."""
        return (self._uncommitted_deltas >= self.max_pending
                or self._uncommitted_bytes >= self.max_pending_bytes)

    async def wait_for_room(self) -> None:
        """Wait while uncommitted deltas are at their bound: the backpressure the agents'
        readers apply, so a store that cannot keep up (or cannot commit at all: a full
        disk) slows the agents' output instead of growing the daemon's memory."""
        while self.backlogged() and self._failure is None and self._writer is not None:
            await self._committed_changed.wait()

    async def wait_writable(self, patience: float | None = None) -> None:
        """Return at once while the store commits; while it cannot, wait up to `patience`
        seconds (default: the store's) for it to recover, then raise `StorageUnavailable`.
        Requests that write call it first, so that they change nothing when they cannot be
        made durable."""
        deadline = trio.current_time() + (self.patience if patience is None else patience)
        while self._unavailable is not None and self._failure is None:
            if trio.current_time() >= deadline:
                raise self.unavailable_error("nothing was changed; retry later")
            with trio.move_on_at(deadline):
                await self._committed_changed.wait()

    def unavailable_error(self, outcome: str) -> StorageUnavailable:
        return StorageUnavailable(
            f"storage unavailable: the daemon cannot write its database {self.path} "
            f"({self._unavailable}); {outcome}",
            detail={"error": self._unavailable, "pending": self.pending})

    @property
    def unavailable(self) -> str | None:
        """Why commits fail at the moment (None while they succeed)."""
        return self._unavailable

    @property
    def failure(self) -> DatabaseUnusable | None:
        """Why the store failed, once it has."""
        return self._failure

    @property
    def pending(self) -> int:
        return self._submitted - self._committed

    def statistics(self) -> dict[str, int]:
        return {
            "pending": self.pending,
            "commits": self.commits,
            "rows_written": self.rows_written,
            "write_errors": self.write_errors,
            "dropped": self.dropped,
        }

"""The store: SQLite (WAL) behind one writer.

Everything durable goes through here: chats, actor records (state, ACP session id, pids for
orphan reclaim, capabilities, usage), the prompt queue, the delta log, state transitions.

Why one writer: SQLite allows one writer at a time, and a commit per delta would cap the
daemon at a few thousand deltas per second. Writers therefore *enqueue* statements
(synchronously, never blocking the caller) and the writer task commits whatever has gathered,
every few milliseconds, in a worker thread, as one transaction. `flush()` waits until
everything enqueued so far is committed: callers use it where durability matters before they
answer (a prompt is acknowledged only once it is in the durable queue).

Reads go through a second connection (WAL lets it read while the writer writes), also in a
worker thread. `synchronous=NORMAL` in WAL mode survives a crash of the daemon process (what
orphan reclaim and the durable queue need) though not a power loss of the last few commits.

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
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from daemon.log import Log

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chats (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    cwd TEXT NOT NULL,
    workspace TEXT,
    computer TEXT,
    policy TEXT,
    title TEXT,
    mcp BLOB,
    epoch TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    closed INTEGER NOT NULL DEFAULT 0,
    next_turn INTEGER NOT NULL DEFAULT 1,
    head_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS actors (
    chat TEXT NOT NULL,
    agent TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    session_id TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    pgid INTEGER,
    pid_start REAL,
    computer TEXT,
    marker TEXT,
    info BLOB,
    usage BLOB,
    turns INTEGER NOT NULL DEFAULT 0,
    last_activity REAL,
    updated REAL NOT NULL,
    PRIMARY KEY (chat, agent)
);
CREATE TABLE IF NOT EXISTS deltas (
    chat TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (chat, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS prompts (
    chat TEXT NOT NULL,
    turn INTEGER NOT NULL,
    agent TEXT NOT NULL,
    content BLOB NOT NULL,
    by TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (chat, turn)
);
CREATE TABLE IF NOT EXISTS transitions (
    chat TEXT NOT NULL,
    agent TEXT NOT NULL,
    ts REAL NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    generation INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS transitions_ts ON transitions (ts);
CREATE INDEX IF NOT EXISTS transitions_chat ON transitions (chat, agent, ts);
-- workspaces subsystem (daemon/workspaces.py): one git worktree per workspace, and a
-- tombstone per soft delete (the reaper's journal: an interrupted delete is finished from it)
CREATE TABLE IF NOT EXISTS workspaces (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    path TEXT NOT NULL,
    branch TEXT NOT NULL,
    base TEXT NOT NULL,
    computer TEXT,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    orphaned_at REAL,
    reason TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    common_dir TEXT NOT NULL DEFAULT '',
    diff_hash TEXT NOT NULL DEFAULT '',
    tombstone TEXT
);
CREATE TABLE IF NOT EXISTS tombstones (
    id TEXT PRIMARY KEY,
    workspace TEXT,
    path TEXT NOT NULL,
    trash TEXT NOT NULL,
    computer TEXT,
    common_dir TEXT NOT NULL DEFAULT '',
    branch TEXT NOT NULL DEFAULT '',
    head TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    trashed_at REAL,
    purged_at REAL
);
-- tasks subsystem (daemon/tasks/): a task is a chat with a parent; its SQL is in
-- daemon/tasks/records.py
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    agent TEXT NOT NULL,
    title TEXT NOT NULL,
    origin TEXT NOT NULL,
    depth INTEGER NOT NULL,
    state TEXT NOT NULL,
    prompt TEXT NOT NULL DEFAULT '',
    turn INTEGER,
    since INTEGER NOT NULL DEFAULT 0,
    result TEXT NOT NULL DEFAULT '',
    stop_reason TEXT,
    error TEXT,
    notified INTEGER NOT NULL DEFAULT 1,
    tokens INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    ended REAL
);
CREATE INDEX IF NOT EXISTS tasks_parent ON tasks (parent);
-- workflows subsystem (daemon/workflows/): runs, their steps (each a task) and the cache of
-- step results by spec; its SQL is in daemon/workflows/records.py
CREATE TABLE IF NOT EXISTS workflow_runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    source TEXT NOT NULL,
    inputs TEXT NOT NULL,
    cwd TEXT NOT NULL,
    base TEXT NOT NULL DEFAULT '',
    chat TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    created REAL NOT NULL,
    ended REAL,
    origin TEXT
);
CREATE TABLE IF NOT EXISTS workflow_units (
    run TEXT NOT NULL,
    unit TEXT NOT NULL,
    step TEXT NOT NULL,
    idx INTEGER,
    item TEXT,
    state TEXT NOT NULL,
    key TEXT NOT NULL DEFAULT '',
    prompt TEXT NOT NULL DEFAULT '',
    task TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT NOT NULL DEFAULT '',
    tokens INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    started REAL,
    ended REAL,
    PRIMARY KEY (run, unit)
);
CREATE TABLE IF NOT EXISTS workflow_cache (
    key TEXT PRIMARY KEY,
    result TEXT NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
"""


class StoreClosed(RuntimeError):
    """A write was attempted after the store closed (a shutdown-ordering bug)."""


DAMAGE_ADVICE = ("restore it from a backup, or move it aside (with its -wal and -shm files) "
                 "to start with an empty database; see \"Backup and restore\" in "
                 "docs/OPERATIONS.md")
"""What an operator can do about a damaged database file."""

SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26


class DatabaseUnusable(Exception):
    """The database file cannot be used: damaged, not a database, or not openable.

    The message is for the operator and is complete on its own: the file, the fault, and
    what to do (`advice`; `DAMAGE_ADVICE` unless said otherwise).
    """

    def __init__(self, path: Path, fault: str, advice: str = DAMAGE_ADVICE) -> None:
        super().__init__(f"the database {path} cannot be used: {fault}. To fix it: {advice}")
        self.path = path
        self.fault = fault
        self.advice = advice


def is_damage(exc: BaseException) -> bool:
    """Whether `exc` says the file itself is bad (SQLITE_CORRUPT, SQLITE_NOTADB, with any
    extended code), which no retry can fix."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)


def unusable(path: Path, exc: BaseException) -> DatabaseUnusable:
    """The `DatabaseUnusable` that `exc`, met on the database `path`, amounts to."""
    if is_damage(exc):
        return DatabaseUnusable(path, f"it is damaged ({exc})")
    if isinstance(exc, sqlite3.Error):
        return DatabaseUnusable(path, f"SQLite failed ({exc})",
                                "check the file, its directory (owner, mode) and free space; "
                                "if it is damaged, " + DAMAGE_ADVICE)
    return DatabaseUnusable(path, f"the store failed ({type(exc).__name__}: {exc})",
                            "this is a bug in Stoker; please report it with the log")


def quick_check(conn: sqlite3.Connection) -> str | None:
    """None when `PRAGMA quick_check` finds the database sound, else its first findings.
    Damage bad enough to stop the check raises, as any other statement would."""
    rows = conn.execute("PRAGMA quick_check").fetchall()
    if rows == [("ok",)]:
        return None
    return "; ".join(str(row[0]) for row in rows[:3])


def empty_file(path: Path) -> bool:
    """Whether `path` exists with 0 bytes: what SQLite would take for a new, empty database,
    but which an existing state dir only holds after its contents were lost."""
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return False


EMPTY_FAULT = "the file is empty (0 bytes), so whatever it held is gone"


class Store:
    """Owns the database. Create with `Store.open(path)`."""

    def __init__(self, path: Path, *, commit_interval: float, batch_max: int) -> None:
        self.path = path
        self.commit_interval = commit_interval
        self.batch_max = batch_max
        self._log = Log("store")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._ops: list[tuple[str, Any, bool]] = []
        self._deltas: list[tuple[str, int, float, bytes]] = []
        self._submitted = 0
        self._committed = 0
        self._work = trio.Event()
        self._committed_changed = trio.Event()
        self._read_lock = trio.Lock()
        self._threads = trio.CapacityLimiter(2)
        """The store's own worker threads (the writer's and the reader's, each used by one
        task at a time), apart from trio's default limiter: threads that other parts hold
        for long (an agent's file request on a slow disk) must never delay a commit."""
        self._closed = False
        self._failure: DatabaseUnusable | None = None
        """Set once the database has failed for good; see the module docstring."""
        self._scope: trio.CancelScope | None = None
        """The scope of everything inside `Store.open`, cancelled when the store fails."""
        self.commits = 0
        self.rows_written = 0
        self.write_errors = 0
        self.dropped = 0
        """Writes enqueued after the store failed, which can never be committed."""

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: Path, *, commit_interval: float = 0.005, batch_max: int = 20000
    ) -> AsyncIterator[Store]:
        store = cls(path, commit_interval=commit_interval, batch_max=batch_max)
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
                        await store.flush()
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

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _open_sync(self) -> None:
        """Open both connections on a sound database, or raise `DatabaseUnusable` (and
        leave nothing open): a damaged file is refused before anything is written to it."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if empty_file(self.path):
            raise DatabaseUnusable(self.path, EMPTY_FAULT)
        existed = self.path.exists()
        writer: sqlite3.Connection | None = None
        try:
            writer = self._connect()
            found = quick_check(writer) if existed else None
            if found is not None:
                raise DatabaseUnusable(self.path, f"PRAGMA quick_check found damage: {found}")
            writer.executescript(SCHEMA)
            self._migrate(writer)
            row = writer.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                writer.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)",
                               (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise DatabaseUnusable(
                    self.path, f"its schema version {row[0]} is newer than this daemon's "
                    f"{SCHEMA_VERSION}", "upgrade stoker, or use another state dir")
            with contextlib.suppress(OSError):
                self.path.chmod(0o600)
            self._reader = self._connect()
        except BaseException as exc:
            if writer is not None:
                writer.close()
            if isinstance(exc, sqlite3.Error):
                raise unusable(self.path, exc) from None
            raise
        self._writer = writer

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Columns added after a table first shipped (CREATE TABLE IF NOT EXISTS does not
        add them to an existing database)."""
        added = {"actors": [("marker", "TEXT")],
                 "tasks": [("tokens", "INTEGER NOT NULL DEFAULT 0")]}
        for table, columns in added.items():
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def _close_sync(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
        self._writer = self._reader = None

    # ------------------------------------------------------------------ writes

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Enqueue one statement. Never blocks; committed within `commit_interval`.
        After the store failed, dropped (counted in `dropped`): the failure was reported
        once, and cleanup that records a last state must not fail on it."""
        self._enqueue(sql, params, False)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._enqueue(sql, list(rows), True)

    def _enqueue(self, sql: str, params: Any, many: bool) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")
        if self._failure is not None:
            self.dropped += 1
            return
        self._ops.append((sql, params, many))
        self._submitted += 1
        self._work.set()

    def append_delta(self, chat: str, seq: int, ts: float, data: bytes) -> None:
        """Enqueue a delta for the log. Deltas are inserted with one executemany per batch."""
        if self._closed:
            raise StoreClosed("the store is closed")
        if self._failure is not None:
            self.dropped += 1
            return
        self._deltas.append((chat, seq, ts, data))
        self._submitted += 1
        self._work.set()

    async def flush(self) -> None:
        """Wait until everything enqueued before this call is committed; `DatabaseUnusable`
        if the store has failed (now or while waiting), since that never happens then."""
        target = self._submitted
        while self._committed < target:
            if self._failure is not None:
                raise self._failure
            if self._writer is None:
                return
            self._work.set()
            await self._committed_changed.wait()

    @property
    def failure(self) -> DatabaseUnusable | None:
        """Why the store failed, once it has."""
        return self._failure

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
            event, self._committed_changed = self._committed_changed, trio.Event()
            event.set()
            if self._scope is not None:
                self._scope.cancel()
        return self._failure

    @property
    def pending(self) -> int:
        return self._submitted - self._committed

    async def _writer_loop(self) -> None:
        try:
            await self._write_batches()
        except Exception as exc:
            # Whatever stopped the writer (damage, or a bug), no commit comes any more:
            # the store fails rather than leave `flush` waiters hanging.
            self._fail(exc)

    async def _write_batches(self) -> None:
        while True:
            await self._work.wait()
            self._work = trio.Event()
            if len(self._deltas) + len(self._ops) < self.batch_max:
                # Let a burst gather into one transaction.
                await trio.sleep(self.commit_interval)
            ops, self._ops = self._ops, []
            deltas, self._deltas = self._deltas, []
            target = self._submitted
            if ops or deltas:
                # Not cancellable: a half-applied batch must still be committed or rolled back
                # in its thread; shutdown flushes before cancelling this task anyway.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._commit_sync, ops, deltas,
                                                  limiter=self._threads)
            self._committed = target
            event, self._committed_changed = self._committed_changed, trio.Event()
            event.set()

    def _commit_sync(
        self, ops: list[tuple[str, Any, bool]], deltas: list[tuple[str, int, float, bytes]]
    ) -> None:
        conn = self._writer
        assert conn is not None
        attempt = 0
        while True:
            try:
                conn.execute("BEGIN")
                if deltas:
                    conn.executemany(
                        "INSERT OR REPLACE INTO deltas(chat, seq, ts, data) VALUES (?,?,?,?)",
                        deltas,
                    )
                for sql, params, many in ops:
                    try:
                        if many:
                            conn.executemany(sql, params)
                        else:
                            conn.execute(sql, params)
                    except sqlite3.IntegrityError as exc:
                        # One bad statement (a bug) must not roll back everyone else's data.
                        self.write_errors += 1
                        self._log.error("statement failed", sql=sql[:120], error=str(exc))
                conn.execute("COMMIT")
                self.commits += 1
                self.rows_written += len(deltas) + len(ops)
                return
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if is_damage(exc) or not isinstance(exc, sqlite3.OperationalError):
                    # Damage (or worse): no retry can commit this batch.
                    raise
                # Disk full, I/O error, locked by an outside process: keep the batch and retry.
                attempt += 1
                self.write_errors += 1
                self._log.error("commit failed; retrying", error=str(exc), attempt=attempt)
                time.sleep(min(5.0, 0.1 * 2**attempt))

    # ------------------------------------------------------------------ reads

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
    ) -> list[tuple[int, bytes]]:
        """Logged deltas of `chat` with `after < seq <= upto`, oldest first."""
        if self._committed < self._submitted:
            # Not only what is queued: a batch the writer took and is committing in its
            # thread is invisible to the reader too. Missing it made a lagging subscriber's
            # catch-up find no rows, raise the channel's floor past them and resync the
            # subscriber, losing history that was about to be committed (found by the
            # fan-out benchmark: a 100k-delta turn to a slow WebSocket subscriber).
            await self.flush()
        rows = await self.query(
            "SELECT seq, data FROM deltas WHERE chat=? AND seq>? AND seq<=? ORDER BY seq LIMIT ?",
            (chat, after, upto, limit),
        )
        return [(int(seq), bytes(data)) for seq, data in rows]

    def statistics(self) -> dict[str, int]:
        return {
            "pending": self.pending,
            "commits": self.commits,
            "rows_written": self.rows_written,
            "write_errors": self.write_errors,
            "dropped": self.dropped,
        }

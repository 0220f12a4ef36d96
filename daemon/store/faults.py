"""What can go wrong with the database, and what the operator is told.

A commit that a retry can fix (a full disk, an I/O error) makes the store *unavailable* for a
while: a client's request is answered `StorageUnavailable` after `STORAGE_PATIENCE`. A
damaged file makes it *unusable*: `DatabaseUnusable` names the file, the fault and the fix.
Kept apart from the store so that the doctor and the listeners can name these without the
store's machinery.
"""

from __future__ import annotations

import contextvars
import sqlite3
from pathlib import Path

from daemon.errors import StokerError
from protocol.errors import ErrorCode


class StoreClosed(RuntimeError):
    """A write was attempted after the store closed (a shutdown-ordering bug)."""


class StorageUnavailable(StokerError):
    """The store cannot commit (a full disk, an I/O error) and did not recover within the
    caller's patience. The store keeps retrying and recovers by itself."""

    code = ErrorCode.STORAGE_UNAVAILABLE


STORAGE_PATIENCE = 5.0
"""How long a client's request waits for a store that cannot commit before it is answered
`storage_unavailable`: the default of `[daemon] storage_patience` (`Store.patience`)."""

FLUSH_PATIENCE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "FLUSH_PATIENCE", default=None)
"""Set (by a connection, around a client's request) to bound how long `flush` waits while
the store cannot commit; None (background work) waits until it can."""


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

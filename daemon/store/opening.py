"""Opening the database file: the connections' settings (WAL, `synchronous=NORMAL`), the
checks before anything is written to it (an empty file, `PRAGMA quick_check`, a schema newer
than this daemon's), the schema and the migrations of tables that gained columns. A damaged
or unusable file is refused with `DatabaseUnusable` (faults.py) and nothing is left open."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from daemon.store.faults import (
    EMPTY_FAULT,
    DatabaseUnusable,
    empty_file,
    quick_check,
    unusable,
)
from daemon.store.schema import SCHEMA, SCHEMA_VERSION


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def open_connections(path: Path) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """The writer's and the reader's connections on a sound database at `path` (made if
    missing), or `DatabaseUnusable` (and nothing left open): a damaged file is refused
    before anything is written to it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if empty_file(path):
        raise DatabaseUnusable(path, EMPTY_FAULT)
    existed = path.exists()
    writer: sqlite3.Connection | None = None
    try:
        writer = connect(path)
        found = quick_check(writer) if existed else None
        if found is not None:
            raise DatabaseUnusable(path, f"PRAGMA quick_check found damage: {found}")
        writer.executescript(SCHEMA)
        migrate(writer)
        row = writer.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            writer.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise DatabaseUnusable(
                path, f"its schema version {row[0]} is newer than this daemon's "
                f"{SCHEMA_VERSION}", "upgrade stoker, or use another state dir")
        with contextlib.suppress(OSError):
            path.chmod(0o600)
        reader = connect(path)
    except BaseException as exc:
        if writer is not None:
            writer.close()
        if isinstance(exc, sqlite3.Error):
            raise unusable(path, exc) from None
        raise
    return writer, reader


def migrate(conn: sqlite3.Connection) -> None:
    """Columns added after a table first shipped (CREATE TABLE IF NOT EXISTS does not add
    them to an existing database)."""
    added = {"actors": [("marker", "TEXT")],
             "tasks": [("tokens", "INTEGER NOT NULL DEFAULT 0")]}
    for table, columns in added.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns:
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

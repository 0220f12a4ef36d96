"""Damage done to real SQLite files, the ways disks and people do it, for the tests of what
the store and `stoker doctor` make of it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

GARBAGE = 0xA5
"""The byte written over a page: as a b-tree page type it is invalid, so the damage is
certain to be found (random bytes could, rarely, look like a page)."""


def pages_of(db: Path, table: str) -> list[tuple[int, str]]:
    """(page number, page type) of every b-tree page of `table`, root first (SQLite's
    `dbstat` table)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT pageno, pagetype FROM dbstat WHERE name=? ORDER BY path",
                            (table,)).fetchall()
    return [(int(n), str(t)) for n, t in rows]


def page_size(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


def checkpoint(db: Path) -> None:
    """Move everything from the WAL into the main file (and empty the WAL), so damage to the
    main file is what any connection reads next."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0, "the checkpoint was blocked by a reader or writer"


def overwrite_page(db: Path, pageno: int) -> None:
    """Write garbage over page `pageno` (1-based) of the main file, in place."""
    size = page_size(db)
    fd = os.open(db, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([GARBAGE]) * size, (pageno - 1) * size)
        os.fsync(fd)
    finally:
        os.close(fd)


def middle_leaf(db: Path, table: str = "deltas") -> int:
    """The middle leaf page of `table`: damage deep inside, far from the header."""
    leaves = [n for n, kind in pages_of(db, table) if kind == "leaf"]
    assert len(leaves) >= 3, f"{table} too small to have a middle: {leaves}"
    return sorted(leaves)[len(leaves) // 2]


def damage(db: Path, how: str) -> None:
    """Damage the (closed, checkpointed) database `db`: `middle` (garbage over a middle
    page), `header` (over the first 100 bytes), `truncated` (cut in half) or `empty`
    (0 bytes)."""
    if how == "middle":
        overwrite_page(db, middle_leaf(db))
    elif how == "header":
        with open(db, "r+b") as fh:
            fh.write(bytes([GARBAGE]) * 100)
    elif how == "truncated":
        os.truncate(db, db.stat().st_size // 2)
    elif how == "empty":
        os.truncate(db, 0)
    else:
        raise ValueError(how)


def quick_check_fails(db: Path) -> bool:
    """Whether SQLite itself finds `db` damaged (the test's own damage is real)."""
    try:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return bool(conn.execute("PRAGMA quick_check").fetchall() != [("ok",)])
    except sqlite3.DatabaseError:
        return True

"""`stoker doctor`'s check of the database: is `stoker.db` sound, and if not, what to do.

It judges the file as the daemon's start-up does (`daemon/store/sqlite.py`: an empty file is
refused, `PRAGMA quick_check` must say ``ok``) and words a failure the same way, the file,
the fault and the remedy, so the doctor and a daemon that refuses to start agree. The check
opens the file read-only: safe while the daemon runs (WAL readers do not block its writer).
As elsewhere in the doctor, the facts are gathered by one small I/O function and the verdict
is a pure function of them.
"""

from __future__ import annotations

import contextlib
import sqlite3
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import trio

from daemon.doctor.report import Check
from daemon.store.faults import EMPTY_FAULT, DatabaseUnusable, is_damage, quick_check


@dataclass(frozen=True, slots=True)
class DatabaseFacts:
    """What the doctor found out about the database file."""

    exists: bool
    size: int = 0
    fault: str | None = None
    """Why the daemon would refuse the file (None when it is sound)."""
    damaged: bool = True
    """Whether `fault` is damage to the file (restore or move aside), rather than a file
    the check could not open (permissions)."""


def database_facts(path: Path) -> DatabaseFacts:
    """Look at the database file `path` (blocking: run it in a thread)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return DatabaseFacts(exists=False)
    if size == 0:
        return DatabaseFacts(exists=True, fault=EMPTY_FAULT)
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as conn:
            found = quick_check(conn)
    except sqlite3.Error as exc:
        if is_damage(exc):
            return DatabaseFacts(exists=True, size=size, fault=f"it is damaged ({exc})")
        return DatabaseFacts(exists=True, size=size, fault=f"it cannot be checked ({exc})",
                             damaged=False)
    if found is not None:
        return DatabaseFacts(exists=True, size=size,
                             fault=f"PRAGMA quick_check found damage: {found}")
    return DatabaseFacts(exists=True, size=size)


def database_verdict(path: Path, facts: DatabaseFacts) -> Check:
    """A missing file is fine (the daemon creates it); a damaged one fails with the words
    the daemon would refuse it with; one that cannot be opened fails with its error."""
    name = "database"
    if not facts.exists:
        return Check(name, "ok", f"{path} not created yet")
    if facts.fault is None:
        return Check(name, "ok", f"{path} passes quick_check ({facts.size / 1e6:.1f} MB)")
    if facts.damaged:
        return Check(name, "fail", str(DatabaseUnusable(path, facts.fault)))
    return Check(name, "fail", f"{path}: {facts.fault}; check its owner and mode, and its "
                 "directory's")


async def database_checkup(path: Path) -> Check:
    """The doctor's database row for the file `path`."""
    return database_verdict(path, await trio.to_thread.run_sync(database_facts, path))

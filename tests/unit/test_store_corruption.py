"""Issue 16: a damaged database, in-process with the real store on real SQLite files.

At start-up the store refuses the file with a message naming it, the fault and the remedy;
while it runs, damage met by the writer or a reader fails the store: `flush` waiters get the
error instead of waiting for ever, and `Store.open` ends with it. Every wait has a deadline,
so a regression fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import trio

from daemon.doctor.database import database_facts, database_verdict
from daemon.store.faults import DatabaseUnusable
from daemon.store.sqlite import Store
from tests.support.corrupt import (
    checkpoint,
    damage,
    overwrite_page,
    pages_of,
    quick_check_fails,
)

DAMAGE = ["middle", "header", "truncated", "empty"]


async def make_database(db: Path, deltas: int = 3000) -> None:
    """A real store's database with a delta log of many pages, closed and checkpointed."""
    async with Store.open(db) as store:
        for seq in range(1, deltas + 1):
            store.append_delta("chat", seq, float(seq), b"delta %d " % seq * 8)
        await store.flush()
    checkpoint(db)


@pytest.mark.parametrize("how", DAMAGE)
async def test_a_damaged_file_is_refused_at_start_up(tmp_path: Path, how: str) -> None:
    db = tmp_path / "stoker.db"
    await make_database(db)
    damage(db, how)
    if how != "empty":  # SQLite takes an empty file for a new database
        assert quick_check_fails(db)
    with trio.fail_after(20), pytest.raises(DatabaseUnusable) as refused:
        async with Store.open(db):
            pytest.fail("the store opened a damaged database")
    message = str(refused.value)
    assert str(db) in message
    assert "restore it from a backup, or move it aside" in message
    assert {"middle": "malformed", "header": "not a database", "truncated": "malformed",
            "empty": "0 bytes"}[how] in message

    verdict = database_verdict(db, database_facts(db))
    assert verdict.status == "fail"
    assert verdict.detail == message  # the doctor and the daemon say the same


async def test_a_sound_file_and_a_new_one_open(tmp_path: Path) -> None:
    db = tmp_path / "stoker.db"
    assert database_verdict(db, database_facts(db)).detail.endswith("not created yet")
    await make_database(db, deltas=10)
    async with Store.open(db) as store:
        assert await store.query("SELECT count(*) FROM deltas") == [(10,)]
    verdict = database_verdict(db, database_facts(db))
    assert verdict.status == "ok"
    assert "passes quick_check" in verdict.detail


async def test_damage_met_by_the_writer_fails_waiters_and_the_store(tmp_path: Path) -> None:
    db = tmp_path / "stoker.db"
    await make_database(db)
    flushed: list[BaseException] = []
    with trio.fail_after(20), pytest.raises(DatabaseUnusable) as failed:  # noqa: PT012
        async with Store.open(db) as store:
            root = pages_of(db, "deltas")[0][0]
            # Checkpointed and damaged behind the store's back; a write by another
            # connection makes the store's connections drop what they cached.
            checkpoint(db)
            overwrite_page(db, root)
            with contextlib.closing(sqlite3.connect(db)) as other:
                other.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('x', 'y')")
                other.commit()
            store.append_delta("chat", 10_000, 0.0, b"lost")
            try:
                await store.flush()
            except BaseException as exc:
                flushed.append(exc)
                raise
            pytest.fail("flush returned although the commit failed")
    assert str(db) in str(failed.value)
    assert "damaged" in str(failed.value)
    assert flushed
    assert isinstance(flushed[0], DatabaseUnusable | trio.Cancelled)
    assert store.failure is not None


async def test_damage_met_by_a_reader_fails_the_store(tmp_path: Path) -> None:
    db = tmp_path / "stoker.db"
    await make_database(db)
    with trio.fail_after(20), pytest.raises(DatabaseUnusable) as failed:  # noqa: PT012
        async with Store.open(db) as store:
            overwrite_page(db, pages_of(db, "deltas")[0][0])
            await store.query("SELECT count(*), sum(length(data)) FROM deltas")
            pytest.fail("the read of a damaged table succeeded")
    assert str(db) in str(failed.value)

"""Issue 16: the real daemon on a damaged database (one it created itself, then damaged as
disks and people do): it exits non-zero within a deadline, saying which file, what is wrong
and what to do, never hangs and never starts empty over lost history; `stoker doctor` says
the same. Damage found while the daemon runs stops it the same way, agents included.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from daemon.client import ClientError, RequestFailed
from protocol import messages as m
from tests.support.corrupt import checkpoint, damage, overwrite_page, pages_of
from tests.support.harness import (
    DaemonFactory,
    DaemonProcess,
    agent_pid,
    open_chat,
    turn,
    wait_gone,
)

EXIT_DEADLINE = 30.0


async def fill(daemon: DaemonProcess) -> None:
    """Chats with enough history that the delta log spans many pages."""
    async with daemon.client() as client:
        for i in range(2):
            info = await open_chat(client, f"c{i}", cwd=daemon.work)
            for _ in range(4):
                await turn(client, info.chat, "/chunks 300")


async def exit_status(daemon: DaemonProcess, timeout: float = EXIT_DEADLINE) -> int:
    """The daemon's exit status, waited for under a deadline (on a thread: no event loop
    blocked)."""
    proc = daemon.proc
    assert proc is not None
    with trio.fail_after(timeout):
        return await trio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)


def doctor_row(daemon: DaemonProcess) -> tuple[str, str]:
    done = daemon.cli("doctor", "--json", "--no-probe")
    rows = {row["check"]: (row["status"], row["detail"])
            for row in json.loads(done.stdout)["checks"]}
    status, detail = rows["database"]
    return str(status), str(detail)


@pytest.fixture(scope="module")
def filled_database() -> Iterator[Path]:
    """A database the real daemon wrote (`fill`), stopped cleanly and checkpointed: made
    once for the module; each test damages its own copy of it."""
    daemon = DaemonProcess()
    try:
        daemon.start()
        trio.run(fill, daemon)
        assert daemon.stop() == 0
        db = daemon.state_dir / "stoker.db"
        checkpoint(db)
        saved = Path(tempfile.mkdtemp(prefix="stkdb")) / "stoker.db"
        shutil.copyfile(db, saved)
    finally:
        with contextlib.suppress(AssertionError):  # it failed to start or stop: said above
            daemon.stop()
        leaked = daemon.cleanup()
        daemon.remove()
    assert not leaked, f"agent processes outlived the daemon: {leaked}"
    yield saved
    shutil.rmtree(saved.parent, ignore_errors=True)


@pytest.mark.parametrize("how", ["middle", "header", "truncated", "empty"])
async def test_the_daemon_refuses_a_damaged_database_and_says_why(
        daemon_factory: DaemonFactory, filled_database: Path, how: str) -> None:
    daemon = daemon_factory()
    daemon.state_dir.mkdir(mode=0o700, parents=True)
    db = daemon.state_dir / "stoker.db"
    shutil.copyfile(filled_database, db)
    damage(db, how)
    logged = len(daemon.log_text())

    daemon.start(wait=False)
    assert await exit_status(daemon) != 0
    said = daemon.log_text()[logged:]
    assert f"stoker: the database {db} cannot be used" in said, said[-3000:]
    assert "restore it from a backup, or move it aside" in said
    assert "Traceback" not in said

    status, detail = doctor_row(daemon)
    assert status == "fail"
    assert str(db) in detail
    assert "restore it from a backup" in detail


async def test_damage_found_while_running_stops_the_daemon_and_its_agents(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    daemon.start()
    await fill(daemon)
    db = daemon.state_dir / "stoker.db"
    async with daemon.client() as client:
        info = await open_chat(client, "victim", cwd=daemon.work)
        pid = await agent_pid(client, info.chat)
        # Damage the delta log's root page behind the daemon's back: checkpointed first so
        # the main file is what counts, then a write by another connection so the daemon's
        # connections drop what they cached and read the page from disk.
        checkpoint(db)
        overwrite_page(db, pages_of(db, "deltas")[0][0])
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as other:
            other.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('probe', 'x')")
            other.commit()
        # Appending this turn's deltas meets the damage.
        with contextlib.suppress(RequestFailed, ClientError, trio.BrokenResourceError):
            await client.request(m.Prompt(id=0, chat=info.chat, text="/chunks 50"))
        assert await exit_status(daemon) == 1
    said = daemon.log_text()
    assert f"stoker: the database {db} cannot be used: it is damaged" in said, said[-3000:]
    await wait_gone([pid], timeout=10)
    status, _detail = doctor_row(daemon)
    assert status == "fail"


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the sqlite3 tool is not installed")
async def test_the_documented_online_backup_is_sound_while_the_daemon_runs(
        daemon: DaemonProcess) -> None:
    """docs/OPERATIONS.md, "Backup and restore": `sqlite3 stoker.db ".backup FILE"`, taken
    while the daemon writes, is a sound database with the chats in it."""
    await fill(daemon)
    db, backup = daemon.state_dir / "stoker.db", daemon.base / "backup.db"
    async with daemon.client() as client:
        info = await open_chat(client, "busy", cwd=daemon.work)
        accepted = await client.request(m.Prompt(id=0, chat=info.chat, text="/chunks 3000"))
        done = await trio.to_thread.run_sync(lambda: subprocess.run(
            ["sqlite3", str(db), f".backup '{backup}'"], capture_output=True, text=True,
            timeout=60))
        assert done.returncode == 0, done.stderr
        assert accepted.turn == 1
    with contextlib.closing(sqlite3.connect(backup)) as conn:
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        chats = {row[0] for row in conn.execute("SELECT id FROM chats")}
    assert {"c0", "c1", "busy"} <= chats

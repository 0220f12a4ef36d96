"""Issue 16, disk full: while the daemon cannot write its database, clients' requests that
write are answered `storage_unavailable` after a bounded wait (the connection keeps serving),
reads of the log keep working, agents' output is held back instead of growing the daemon's
memory, and everything recovers by itself once space is free.

The fault is real: the daemon's state dir is a small tmpfs (mounted by this test, which needs
root; skipped otherwise). A ballast file leaves a few MB free, a flood turn fills them, and
removing the ballast frees the disk again.

The daemons here run with a short `[daemon] storage_patience` (`PATIENCE`), the wait these
tests measure: the default (5 s) would only make them wait longer for the same events.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import psutil
import pytest
import trio

from daemon.client import Client, RequestFailed
from protocol import deltas as d
from protocol import messages as m
from tests.support.harness import DaemonFactory, actor, open_chat, subscribe, turn, wait_log

TMPFS_SIZE = "64m"
HEADROOM = 3 << 20
"""What the ballast leaves free: room for a prompt, not for the flood's log."""
FLOOD = 200_000
"""Chunks of the turn that runs into the full disk (~20 MB of log)."""
PATIENCE = 1.0
"""The daemons' `storage_patience`, in seconds."""
PATIENT = f'[daemon]\nstorage_patience = "{PATIENCE:g}s"\ncoalesce_chunks = 0\n'
"""Their config. Without coalescing the flood is 200,000 deltas, far past the store's bound
of uncommitted ones, so the full disk holds it back (coalesced, it fits in the bound and
ends at once, and nothing is held back)."""
PROBE_INTERVAL, STALE_GRACE = 0.5, 1.0
"""The first test's liveness check: a hung verdict would come within their sum."""


def _mount_tmpfs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs",
                    str(path)], check=True, capture_output=True)


def _fill(path: Path, leave: int) -> None:
    """Write `path` until the file system has only `leave` bytes free."""
    stat = os.statvfs(path.parent)
    size = stat.f_bavail * stat.f_frsize - leave
    block = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as ballast:
        while size > 0:
            size -= ballast.write(block[:min(size, len(block))])


async def _refused(client: Client, request: object) -> RequestFailed:
    """Send `request`; it must fail, within the store's patience plus a margin."""
    began = trio.current_time()
    with trio.fail_after(PATIENCE * 3 + 5):
        try:
            await client.request(request)
        except RequestFailed as exc:
            failed = exc
        else:
            raise AssertionError(f"{type(request).__name__} was accepted on a full disk")
    assert trio.current_time() - began >= PATIENCE * 0.9, "no bounded wait first"
    return failed


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_full_disk_answers_storage_unavailable_holds_agents_back_and_recovers(
        daemon_factory: DaemonFactory) -> None:
    # A stale grace shorter than the full-disk phase (which lasts at least twice as long as a
    # hung verdict would take): an agent held back by the daemon is not taken for a hung one
    # (its turn must end normally once space is back).
    daemon = daemon_factory(config=PATIENT + f'[lifecycle]\nprobe_interval = "{PROBE_INTERVAL}s"'
                            f'\nstale_grace = "{STALE_GRACE}s"\n')
    _mount_tmpfs(daemon.state_dir)
    ballast = daemon.state_dir / "ballast"
    try:
        daemon.start()
        async with daemon.client("driver") as driver, daemon.client("watcher") as watcher:
            flood = await open_chat(driver, "flood", cwd=daemon.work)
            other = await open_chat(driver, "other", cwd=daemon.work)
            assert (await turn(driver, other.chat, "warm")).text == "warm"
            await subscribe(watcher, flood.chat, since=flood.head_seq, epoch=flood.epoch)
            await trio.to_thread.run_sync(_fill, ballast, HEADROOM)
            rss_full = psutil.Process(daemon.pid).memory_info().rss
            accepted = await driver.request(m.Prompt(id=0, chat=flood.chat,
                                                     text=f"/chunks {FLOOD}"))

            # The flood uses the headroom up: commits fail (the store says so in its log).
            await wait_log(daemon, "commit failed; retrying", timeout=60)
            held_since = trio.current_time()
            # Writes are refused after the bounded wait; the connection goes on serving.
            refused = await _refused(driver, m.Prompt(id=0, chat=other.chat, text="later"))
            assert refused.code == "storage_unavailable"
            assert "cannot write its database" in str(refused)
            new_chat = await _refused(driver, m.OpenChat(id=0, chat="fresh",
                                                         cwd=str(daemon.work)))
            assert new_chat.code == "storage_unavailable"
            await driver.request(m.Ping(id=0))
            # Nothing changed: the refused chat does not exist.
            with pytest.raises(RequestFailed) as missing:
                await driver.request(m.OpenChat(id=0, chat="fresh", create=False))
            assert missing.value.code == "unknown_chat"

            # The log (committed history) is served while nothing can be written.
            async with daemon.client("log") as reader:
                await subscribe(reader, flood.chat, since=0, live=False)
                with trio.fail_after(30):
                    while not isinstance(await reader.next_event(), m.ReplayComplete):
                        pass

            # The flood is held back: its turn still runs, and the daemon's memory did not
            # grow with it.
            assert (await actor(driver, flood.chat)).state == "busy"
            rss_held = psutil.Process(daemon.pid).memory_info().rss
            assert rss_held - rss_full < 48 << 20, (rss_full, rss_held)

            # The disk stays full at least twice as long as a hung verdict would take (the
            # steps above take about that long already): the stale grace is put to the test.
            await trio.sleep_until(held_since + 2 * (PROBE_INTERVAL + STALE_GRACE))
            # Space comes back: the flood resumes and ends once, new work is accepted.
            ballast.unlink()
            ends = 0
            with trio.fail_after(120):
                while True:
                    event = await watcher.next_event()
                    if (isinstance(event, d.Delta) and event.turn == accepted.turn
                            and isinstance(event.body, d.TurnEnded)):
                        ends += 1
                        assert event.body.error is None, event.body.error
                        break
            assert ends == 1
            assert (await turn(driver, other.chat, "after")).text.endswith("after")
            created = await open_chat(driver, "fresh", cwd=daemon.work)
            assert created.created
        assert daemon.stop() == 0
    finally:
        with contextlib.suppress(OSError):
            ballast.unlink()  # a failure above: let the daemon stop
        with contextlib.suppress(AssertionError):
            daemon.stop()
        _unmount(daemon.state_dir)


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_sigterm_on_a_full_disk_stops_the_daemon_and_says_what_was_lost(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=PATIENT)
    _mount_tmpfs(daemon.state_dir)
    ballast = daemon.state_dir / "ballast"
    try:
        daemon.start()
        async with daemon.client("driver") as driver:
            flood = await open_chat(driver, "flood", cwd=daemon.work)
            await trio.to_thread.run_sync(_fill, ballast, HEADROOM)
            await driver.request(m.Prompt(id=0, chat=flood.chat, text=f"/chunks {FLOOD}"))
            await wait_log(daemon, "commit failed; retrying", timeout=60)
        # The disk stays full: the shutdown gives up on what it cannot commit.
        status = await trio.to_thread.run_sync(daemon.stop, 30 + PATIENCE * 2)
        assert status == 0
        assert "stopping with writes not committed" in daemon.log_text()
    finally:
        with contextlib.suppress(OSError):
            ballast.unlink()
        with contextlib.suppress(AssertionError):
            daemon.stop()
        _unmount(daemon.state_dir)

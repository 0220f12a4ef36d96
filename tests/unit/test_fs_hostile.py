"""Issue 16: agent file access on hostile files (real FIFOs and sockets), and file requests
that hang in the kernel starving nothing but other file requests.

Every call that could block forever before the fix runs in an abandonable thread under a
deadline, so a regression fails the test instead of hanging the run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from daemon.execution.fs import AccessDenied, FileProblem, LocalFiles
from daemon.execution.local import FILE_THREADS, LocalExecutor
from daemon.store.sqlite import Store

T = TypeVar("T")


async def bounded(call: Callable[[], T], seconds: float = 10.0) -> T:
    """`call()` in a thread that the test abandons (failing) if it does not return in time."""
    with trio.fail_after(seconds):
        return await trio.to_thread.run_sync(call, abandon_on_cancel=True)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A real FIFO; at teardown a reader or writer stuck on it (a regression) is released."""
    path = tmp_path / "pipe"
    os.mkfifo(path)
    yield path
    for flags in (os.O_WRONLY, os.O_RDONLY):
        with contextlib.suppress(OSError):
            os.close(os.open(path, flags | os.O_NONBLOCK))


async def test_reading_a_fifo_is_refused_at_once(tmp_path: Path, fifo: Path) -> None:
    files = LocalFiles(str(tmp_path))
    with pytest.raises(FileProblem, match=r"pipe: is a FIFO \(named pipe\)"):
        await bounded(lambda: files.read_text(str(fifo)))


async def test_writing_a_fifo_is_refused_with_or_without_a_reader(
        tmp_path: Path, fifo: Path) -> None:
    files = LocalFiles(str(tmp_path))
    with pytest.raises(FileProblem, match="FIFO"):
        await bounded(lambda: files.write_text("pipe", "x"))
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(FileProblem, match="FIFO"):
            await bounded(lambda: files.write_text("pipe", "x"))
        assert os.read(reader, 16) == b""  # nothing was written into the pipe
    finally:
        os.close(reader)
    assert fifo.is_fifo()


async def test_sockets_are_neither_read_nor_written(tmp_path: Path) -> None:
    files = LocalFiles(str(tmp_path))
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as sock:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(FileProblem, match="is a socket"):
            await bounded(lambda: files.read_text("sock"))
        with pytest.raises(FileProblem, match="is a socket"):
            await bounded(lambda: files.write_text("sock", "x"))


def test_regular_files_still_read_written_and_truncated(tmp_path: Path) -> None:
    files = LocalFiles(str(tmp_path))
    (tmp_path / "a.txt").write_text("a much longer old content\n")
    files.write_text("a.txt", "new\n")
    assert (tmp_path / "a.txt").read_text() == "new\n"
    assert files.read_text("a.txt") == "new\n"
    files.write_text("sub/b.txt", "made")
    assert files.read_text(str(tmp_path / "sub" / "b.txt")) == "made"
    with pytest.raises(FileProblem, match="is a directory"):
        files.read_text("sub")
    with pytest.raises(FileProblem, match="no such file"):
        files.read_text("missing.txt")


def test_a_symlink_out_of_the_root_is_still_refused_for_writes(tmp_path: Path) -> None:
    (tmp_path / "target.txt").write_text("keep")
    files = LocalFiles(str(tmp_path / "inner"))
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "out").symlink_to(tmp_path / "target.txt")
    with pytest.raises(AccessDenied):
        files.write_text("out", "x")
    assert (tmp_path / "target.txt").read_text() == "keep"


class StuckFiles(LocalFiles):
    """`LocalFiles` whose reads hang, as on a network mount that stopped answering."""

    def __init__(self, root: str, gate: threading.Event, inside: list[int]) -> None:
        super().__init__(root)
        object.__setattr__(self, "gate", gate)
        object.__setattr__(self, "inside", inside)

    gate: threading.Event
    inside: list[int]

    def read_text(self, path: str, line: int | None = None, limit: int | None = None) -> str:
        self.inside.append(1)
        self.gate.wait(60)
        return ""


async def test_hung_file_requests_do_not_starve_the_store(tmp_path: Path) -> None:
    hung = 50  # more than trio's default limit of 40 worker threads
    gate, inside = threading.Event(), list[int]()
    files = LocalExecutor("test").files(str(tmp_path))
    files._files = StuckFiles(str(tmp_path), gate, inside)
    async with Store.open(tmp_path / "db.sqlite") as store:
        try:
            async with trio.open_nursery() as nursery:
                for i in range(hung):
                    nursery.start_soon(files.read_text, f"f{i}", None, None)
                with trio.fail_after(10):
                    while len(inside) < FILE_THREADS:
                        await trio.sleep(0.01)
                store.execute("INSERT INTO meta(key, value) VALUES ('probe', 'committed')")
                with trio.fail_after(10):
                    await store.flush()
                assert await store.query("SELECT value FROM meta WHERE key='probe'") == [
                    ("committed",)]
                assert len(inside) == FILE_THREADS, "file requests must queue for their own"
                gate.set()
        finally:
            gate.set()
    assert len(inside) == hung


async def test_a_cancelled_file_request_does_not_wait_for_its_thread(tmp_path: Path) -> None:
    gate, inside = threading.Event(), list[int]()
    files = LocalExecutor("test").files(str(tmp_path))
    files._files = StuckFiles(str(tmp_path), gate, inside)
    try:
        with trio.fail_after(10), trio.move_on_after(0.2) as waited:
            await files.read_text("f", None, None)
        assert waited.cancelled_caught
    finally:
        gate.set()

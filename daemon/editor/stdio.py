"""The editor's end of `stoker acp`: stdin and stdout as trio streams, optionally traced.

An editor reads the agent's stdout as JSON-RPC and nothing else; one stray `print` (ours or a
library's) would corrupt the protocol. So the ACP streams get private duplicates of fds 0 and
1, and fd 1 itself is pointed at stderr: whatever else writes to "stdout" lands in the log.

`STOKER_ACP_TRACE=FILE` appends every line written to the editor to FILE (and
`STOKER_ACP_TRACE_IN=FILE` every line read from it): the schema tests validate exactly what
went out, and it is the first thing to look at when an editor misbehaves.
"""

from __future__ import annotations

import os
import select
from collections.abc import Mapping
from typing import BinaryIO

import trio

TRACE_OUT_ENV = "STOKER_ACP_TRACE"
TRACE_IN_ENV = "STOKER_ACP_TRACE_IN"


class TracedSendStream(trio.abc.SendStream):
    """A send stream that appends what it sent to a file (flushed, so a killed process
    leaves a complete trace)."""

    def __init__(self, inner: trio.abc.SendStream, trace: BinaryIO) -> None:
        self._inner = inner
        self._trace = trace

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)
        self._trace.write(bytes(data))
        self._trace.flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._trace.close()


class TracedReceiveStream(trio.abc.ReceiveStream):
    def __init__(self, inner: trio.abc.ReceiveStream, trace: BinaryIO) -> None:
        self._inner = inner
        self._trace = trace

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = bytes(await self._inner.receive_some(max_bytes))
        if data:
            self._trace.write(data)
            self._trace.flush()
        return data

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._trace.close()


def take_stdio() -> tuple[int, int]:
    """Private duplicates of stdin and stdout for the protocol; afterwards fd 1 is stderr
    and fd 0 is /dev/null (children we start must not eat the editor's input)."""
    receive_fd = os.dup(0)
    send_fd = os.dup(1)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    return receive_fd, send_fd


def editor_streams(receive_fd: int, send_fd: int, env: Mapping[str, str]
                   ) -> tuple[trio.abc.ReceiveStream, trio.abc.SendStream]:
    """Trio streams over the two fds, traced as the environment asks."""
    receive: trio.abc.ReceiveStream = trio.lowlevel.FdStream(receive_fd)
    send: trio.abc.SendStream = trio.lowlevel.FdStream(send_fd)
    out_path = env.get(TRACE_OUT_ENV)
    if out_path:
        send = TracedSendStream(send, open(out_path, "ab"))  # noqa: SIM115
    in_path = env.get(TRACE_IN_ENV)
    if in_path:
        receive = TracedReceiveStream(receive, open(in_path, "ab"))  # noqa: SIM115
    return receive, send


async def wait_reader_gone(fd: int) -> None:
    """Return once nobody reads `fd` any more (the editor exited or closed our stdout): the
    kernel then reports POLLERR/POLLHUP on it, which `poll` always watches. A worker thread
    waits, a second at a time so that it never outlives a cancel by long."""
    poller = select.poll()
    poller.register(fd, 0)
    while not await trio.to_thread.run_sync(poller.poll, 1000, abandon_on_cancel=True):
        pass

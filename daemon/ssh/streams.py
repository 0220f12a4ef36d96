"""trio byte streams over asyncssh channel streams.

The backend actor reads an agent's stdout with `trio.abc.ReceiveStream.receive_some` and
writes its stdin with `send_all`, whatever the executor. These adapters give a remote
agent's SSH channel that shape; each call crosses into the SSH subsystem's asyncio loop
(`Bridge.call`). Channels are opened with `encoding=None`: bytes in, bytes out.

A channel that dies with its connection is end-of-file to the reader (the process watcher
then reports *why*, naming the computer) and `BrokenResourceError` to the writer, exactly
like a local pipe whose process died.
"""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from daemon.ssh.bridge import Bridge, BridgeClosed

DEFAULT_READ = 65536


def _channel_errors() -> tuple[type[BaseException], ...]:
    import asyncssh

    return (asyncssh.Error, OSError, BridgeClosed, EOFError)


class ChannelReceiveStream(trio.abc.ReceiveStream):
    """One output stream (stdout or stderr) of a remote process. `initial` is data read
    ahead of time (the rest of the launcher's first line)."""

    def __init__(self, bridge: Bridge, reader: Any, initial: bytes = b"") -> None:
        self._bridge = bridge
        self._reader = reader
        self._pending = initial
        self._closed = False
        self._eof = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        size = max_bytes or DEFAULT_READ
        if self._pending:
            data, self._pending = self._pending[:size], self._pending[size:]
            await trio.lowlevel.checkpoint()
            return data
        if self._eof:
            await trio.lowlevel.checkpoint()
            return b""
        try:
            data = await self._bridge.call(self._reader.read, size)
        except _channel_errors():
            data = b""
        if not data:
            self._eof = True
        return bytes(data)

    async def aclose(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()


class ChannelSendStream(trio.abc.SendStream):
    """A remote process's stdin. `aclose` sends EOF (how an ACP client says goodbye)."""

    def __init__(self, bridge: Bridge, writer: Any) -> None:
        self._bridge = bridge
        self._writer = writer
        self._closed = False
        self._lock = trio.StrictFIFOLock()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        payload = bytes(data)
        writer = self._writer

        async def write() -> None:
            writer.write(payload)
            await writer.drain()

        async with self._lock:
            try:
                await self._bridge.call(write)
            except _channel_errors() as exc:
                raise trio.BrokenResourceError(f"the remote process is gone: {exc}") from None

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        with contextlib.suppress(*_channel_errors()):
            await self._bridge.call_sync(self._writer.write_eof)

"""A WebSocket client's bytes on their way to trio-websocket, whose frame headers are read
as they arrive.

trio-websocket (over wsproto) enforces `max_message` only as a message's payload arrives:
a frame header declaring 2^62 bytes, then silence, left its connection waiting for that
payload until `idle_timeout`. `FrameScanner` follows the frames header by header (pure),
and `ClientStream` refuses a message whose declared length exceeds `max_message` as soon
as its header is read: close code 1009 (Message Too Big), then end of file for
trio-websocket, and the connection ends (`listener.WebSocketTransport` raises
`MessageTooLarge`, which the connection logs). The length declared is the frame's on the
wire, in bytes (no extension is negotiated: trio-websocket offers none).
"""

from __future__ import annotations

import struct

import trio

from daemon.listeners.websocket.auth import CLOSE_TIMEOUT, MESSAGE_TOO_BIG
from daemon.listeners.websocket.frames import frame_header

_CLOSE = 0x88
"""FIN + close opcode."""


class FrameScanner:
    """The headers of a client's frames, followed through its byte stream: what a data
    message declares (the sum of its frames' lengths, control frames aside) is known when
    its headers arrive, long before its payload."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._head = bytearray()
        """A header read in part."""
        self._skip = 0
        """Payload bytes of the current frame still to come."""
        self._message = 0
        """Bytes declared so far by the frames of the data message under way."""

    def feed(self, data: bytes) -> tuple[int, int] | None:
        """Follow `data`, the stream's next bytes. None, or (the offset in `data` where the
        header that takes a message past the limit starts, negative when it began in an
        earlier call; the message's declared size): the stream must then end there."""
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            head = self._head
            start = pos - len(head)
            if len(head) < 2:
                take = min(2 - len(head), end - pos)
                head += data[pos:pos + take]
                pos += take
                if len(head) < 2:
                    break
            size = header_size(head[1])
            take = min(size - len(head), end - pos)
            head += data[pos:pos + take]
            pos += take
            if len(head) < size:
                break
            declared = payload_length(head)
            first = head[0]
            self._head = bytearray()
            if first & 0x0F < 8:  # a data frame (text, binary, continuation)
                self._message += declared
                if self._message > self.limit:
                    return start, self._message
                if first & 0x80:
                    self._message = 0
            self._skip = declared
        return None


def header_size(second: int) -> int:
    """The length of a frame header from its second byte (mask bit, 7-bit length)."""
    short = second & 0x7F
    return 2 + (2 if short == 126 else 8 if short == 127 else 0) + (4 if second & 0x80 else 0)


def payload_length(head: bytes | bytearray) -> int:
    short = head[1] & 0x7F
    if short == 126:
        return int(struct.unpack_from(">H", head, 2)[0])
    if short == 127:
        return int(struct.unpack_from(">Q", head, 2)[0])
    return short


def close_frame(code: int, reason: str) -> bytes:
    """A server's close frame (unmasked)."""
    payload = struct.pack(">H", code) + reason.encode()[:123]
    return frame_header(len(payload), _CLOSE) + payload


class ClientStream(trio.abc.HalfCloseableStream):
    """The TCP stream as trio-websocket sees it: first the bytes the listener already read
    (the request head, and whatever followed it), then the socket's; every frame header on
    the way is read by a `FrameScanner`.

    A message over `max_message` ends the stream where its header starts: once the
    handshake's answer has gone out (wsproto must have said 101 for a close frame to mean
    anything), a close frame 1009 is written, then trio-websocket reads end of file and
    nothing more is written. `refused` holds the declared size for the transport."""

    def __init__(self, inner: trio.SocketStream, replay: bytes, *, head_size: int,
                 max_message: int) -> None:
        self._inner = inner
        self._replay = replay
        self._frames_from = head_size
        """Bytes still to come that are the request head, not frames."""
        self._scanner = FrameScanner(max_message)
        self.socket = inner.socket
        self.refused: int | None = None
        """The declared size of the message refused."""
        self._closed = False
        """Nothing more may be written (the close frame went, or is going)."""
        self._answered = False
        """The handshake's answer (101, or a refusal) went out."""
        self._upgraded = False
        self._sending = False
        self._wake: trio.Event | None = None
        """Set after each write, while a refusal waits for its turn to write."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.refused is not None:
            await self._refuse()
            return b""
        if self._replay:
            if max_bytes is None or max_bytes >= len(self._replay):
                data, self._replay = self._replay, b""
            else:
                data, self._replay = self._replay[:max_bytes], self._replay[max_bytes:]
            await trio.lowlevel.checkpoint()
        else:
            data = bytes(await self._inner.receive_some(max_bytes))
        if not data:
            return data
        head = min(self._frames_from, len(data))
        self._frames_from -= head
        found = self._scanner.feed(data[head:]) if head < len(data) else None
        if found is None:
            return data
        offset, self.refused = found
        before = data[:head + max(offset, 0)]
        if before:
            return before  # the frames before it are delivered; the next call refuses
        await self._refuse()
        return b""

    async def _refuse(self) -> None:
        if self._closed:
            return
        with trio.move_on_after(CLOSE_TIMEOUT):
            # After the handshake's answer, and never inside another write (trio-websocket
            # serializes its own writes with a lock this stream cannot see).
            while not self._answered or self._sending:
                self._wake = trio.Event()
                await self._wake.wait()
            self._closed = True
            if self._upgraded:
                reason = (f"message of {self.refused} bytes exceeds the limit of "
                          f"{self._scanner.limit} bytes")
                try:
                    await self._inner.send_all(close_frame(MESSAGE_TOO_BIG, reason))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        self._closed = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the connection was closed (message too big)")
        if not self._answered:
            self._answered = True
            self._upgraded = bytes(data[:13]) == b"HTTP/1.1 101 "
        self._sending = True
        try:
            await self._inner.send_all(data)
        finally:
            self._sending = False
            if self._wake is not None:
                self._wake.set()

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()

"""A raw Server-Sent Events subscriber for the fan-out bench: one HTTP connection to
`GET /api/chats/{chat}/events`, counting delta events as they arrive (chunked transfer
decoded by hand, no parsing of the events' JSON), like `wire.RawSubscriber` does for the
Unix socket and the WebSocket."""

from __future__ import annotations

import time
from urllib.parse import quote, urlsplit

import trio

from .wire import Tally

DELTA = b"event: delta\n"
LAGGED = b"event: lagged\n"
RESYNC = b"event: resync_required\n"


class SseSubscriber:
    transport = "sse"

    def __init__(self, base_url: str, token: str) -> None:
        parts = urlsplit(base_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._token = token
        self._stream: trio.SocketStream | None = None
        self._raw = bytearray()
        """Bytes received and not yet de-chunked."""
        self._chunk_left = 0
        """Payload bytes still to come in the current chunk (then its CRLF)."""
        self._body = bytearray()

    async def subscribe(self, chat: str, since: int | None) -> None:
        """Open the stream (live from the head) and read up to its `replay_complete`."""
        stream = await trio.open_tcp_stream(self._host, self._port)
        self._stream = stream
        query = "" if since is None else f"?since={since}"
        request = (f"GET /api/chats/{quote(chat, safe='')}/events{query} HTTP/1.1\r\n"
                   f"Host: {self._host}:{self._port}\r\n"
                   f"Authorization: Bearer {self._token}\r\n\r\n")
        await stream.send_all(request.encode())
        while b"\r\n\r\n" not in self._raw:
            data = await stream.receive_some(65536)
            if not data:
                raise ConnectionError("event stream: connection closed")
            self._raw += data
        head, _, rest = bytes(self._raw).partition(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
            raise ConnectionError(f"event stream refused: {head[:200]!r}")
        self._raw = bytearray(rest)
        self._body += self._dechunk()  # the first events may have come with the head
        while b"event: replay_complete" not in self._body:
            await self._receive()
        self._body.clear()

    def _dechunk(self) -> bytes:
        raw = self._raw
        out = bytearray()
        pos = 0
        while pos < len(raw):
            if self._chunk_left > 0:
                take = min(self._chunk_left, len(raw) - pos)
                out += raw[pos:pos + take]
                pos += take
                self._chunk_left -= take
                if self._chunk_left == 0:
                    self._chunk_left = -2  # its CRLF comes next
                continue
            if self._chunk_left < 0:
                take = min(-self._chunk_left, len(raw) - pos)
                pos += take
                self._chunk_left += take
                continue
            end = raw.find(b"\r\n", pos)
            if end < 0:
                break
            size = int(bytes(raw[pos:end]).split(b";")[0], 16)
            pos = end + 2
            if size == 0:
                raise ConnectionError("event stream ended")
            self._chunk_left = size
        del raw[:pos]
        return bytes(out)

    async def _receive(self) -> bytes:
        assert self._stream is not None
        data = await self._stream.receive_some(262144)
        if not data:
            raise ConnectionError("the daemon closed the event stream")
        self._raw += data
        body = self._dechunk()
        self._body += body
        return body

    async def count_until(self, marker: bytes, timeout: float = 300.0) -> Tally:
        with trio.fail_after(timeout):
            tally = Tally()
            carry = bytes(self._body)
            self._body.clear()
            while True:
                text = carry + await self._receive()
                self._body.clear()
                tally.deltas += text.count(DELTA)
                tally.lagged += text.count(LAGGED)
                tally.bytes += len(text) - len(carry)
                if RESYNC in text:
                    tally.resynced = True
                if marker in text or tally.resynced:
                    tally.ended_at = time.perf_counter()
                    return tally
                keep = max(len(DELTA), len(marker), len(RESYNC)) - 1
                carry = text[-keep:]
                # Whole patterns inside the carry were already counted; partial ones not.
                tally.deltas -= carry.count(DELTA)
                tally.lagged -= carry.count(LAGGED)

    async def aclose(self) -> None:
        if self._stream is not None:
            with trio.move_on_after(2):
                await self._stream.aclose()

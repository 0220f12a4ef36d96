"""Clients for the benchmarks: a timestamping `Client` for latencies, and raw subscribers
that count deltas without decoding them, for throughput.

Why raw subscribers: a fan-out of 100k deltas to 64 subscribers is 6.4M frames into one
client process; decoding each into a struct would make the client, not the daemon, the
bottleneck. A raw subscriber splits frames (Unix socket: 4-byte length; WebSocket: RFC 6455
frame headers), tells a delta from a control message by the first bytes of its msgpack
payload (every `Delta` starts with the map header and `type: "delta"`), decodes only control
messages (`lagged`, `replay_complete`, replies), and finds the end marker (`turn_ended` or
`replay_complete`) with one `bytes.find` per received chunk.
"""

from __future__ import annotations

import base64
import os
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
import trio

from daemon.client import Client
from protocol import deltas as d
from protocol import messages as m
from protocol.codec import ClientCodec

DELTA_PREFIX = b"\x86\xa4type\xa5delta"
"""How every msgpack-encoded `Delta` begins (a 6-field map whose first key is the tag)."""

Transport = Literal["unix", "ws"]

_unpack_u32 = struct.Struct(">I").unpack_from
_unpack_u16 = struct.Struct(">H").unpack_from
_unpack_u64 = struct.Struct(">Q").unpack_from


def _check_prefix() -> None:
    sample = msgspec.msgpack.encode(d.Delta(chat="c", seq=1, ts=0.0, turn=1,
                                            body=d.Text(text="x")))
    if not sample.startswith(DELTA_PREFIX):  # pragma: no cover - a protocol change
        raise RuntimeError(f"Delta no longer encodes with the expected prefix: {sample[:16]!r}")


_check_prefix()


class TimedClient(Client):
    """The daemon's own `Client`, stamping every delta with its arrival time
    (`time.perf_counter()` in the reader task, before anyone awaits it)."""

    def __init__(self, stream: trio.SocketStream, name: str) -> None:
        super().__init__(stream, name)
        self.stamps: list[tuple[float, d.Delta]] = []

    def _on_message(self, message: Any) -> None:
        if isinstance(message, d.Delta):
            self.stamps.append((time.perf_counter(), message))
        super()._on_message(message)

    async def timed_turn(self, chat: str, text: str, timeout: float = 30.0) -> TurnTimes:
        """Prompt `chat` (subscribed) and read until the turn's `turn_ended`."""
        sent = time.perf_counter()
        accepted: m.PromptAccepted = await self.request(m.Prompt(id=0, chat=chat, text=text))
        acked = time.perf_counter()
        while True:
            event = await self.next_event(timeout=timeout)
            if (isinstance(event, d.Delta) and event.turn == accepted.turn
                    and isinstance(event.body, d.TurnEnded)):
                break
        mine = [(t, x.body) for t, x in self.stamps if x.turn == accepted.turn]
        first = next(t for t, body in mine if isinstance(body, d.Text))
        ended = next(t for t, body in mine if isinstance(body, d.TurnEnded))
        return TurnTimes(sent=sent, acked=acked, first_chunk=first, ended=ended)


@dataclass
class TurnTimes:
    """`time.perf_counter()` moments of one turn, as its client saw them."""

    sent: float
    acked: float
    """`PromptAccepted` read: the prompt is durably queued."""
    first_chunk: float
    ended: float


@asynccontextmanager
async def timed_client(path: Path, name: str = "bench") -> AsyncIterator[TimedClient]:
    async with TimedClient.connect(path, client=name) as client:
        assert isinstance(client, TimedClient)
        yield client


@dataclass
class Tally:
    """What a raw subscriber counted until its end marker."""

    deltas: int = 0
    control: int = 0
    lagged: int = 0
    resynced: bool = False
    """A `resync_required` came instead: history was lost (counting stopped there)."""
    bytes: int = 0
    ended_at: float = 0.0


class RawSubscriber:
    """One connection that subscribes to one chat and counts what it receives."""

    def __init__(self, stream: trio.abc.Stream, transport: Transport) -> None:
        self._stream = stream
        self.transport: Transport = transport
        self._buf = bytearray()
        self._enc = msgspec.msgpack.Encoder()
        self._codec = ClientCodec("msgpack")
        self._ids = 0

    # ------------------------------------------------------------------ connecting

    @classmethod
    async def unix(cls, path: Path) -> RawSubscriber:
        stream = await trio.open_unix_socket(os.fspath(path))
        self = cls(stream, "unix")
        await self._hello()
        return self

    @classmethod
    async def websocket(cls, url: str, token: str) -> RawSubscriber:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        stream = await trio.open_tcp_stream(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n")
        await stream.send_all(request.encode())
        head = bytearray()
        while b"\r\n\r\n" not in head:
            data = await stream.receive_some(65536)
            if not data:
                raise ConnectionError("websocket handshake: connection closed")
            head += data
        header, _, rest = bytes(head).partition(b"\r\n\r\n")
        status = header.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(f"websocket handshake refused: {status!r}")
        self = cls(stream, "ws")
        self._buf += rest
        await self._hello()
        return self

    async def aclose(self) -> None:
        with trio.move_on_after(2):
            await self._stream.aclose()

    # ------------------------------------------------------------------ sending

    async def send(self, message: Any) -> None:
        payload = self._enc.encode(message)
        if self.transport == "unix":
            await self._stream.send_all(len(payload).to_bytes(4, "big") + payload)
            return
        # A client-to-server WebSocket frame: FIN + binary, masked (RFC 6455 5.3).
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = bytes([0x82, 0x80 | size])
        elif size < 65536:
            header = bytes([0x82, 0x80 | 126]) + size.to_bytes(2, "big")
        else:
            header = bytes([0x82, 0x80 | 127]) + size.to_bytes(8, "big")
        key = int.from_bytes(mask * (size // 4 + 1), "big") >> (8 * (4 - size % 4))
        masked = (int.from_bytes(payload, "big") ^ key).to_bytes(size, "big") if size else b""
        await self._stream.send_all(header + mask + masked)

    async def request(self, message: Any) -> Any:
        """Send a request and decode messages until its reply (nothing else is expected
        before it on a fresh connection)."""
        self._ids += 1
        message.id = self._ids
        await self.send(message)
        while True:
            reply = await self.next_message()
            if isinstance(reply, m.ErrorReply):
                raise RuntimeError(f"{reply.code}: {reply.message}")
            if isinstance(reply, m.RawReply) and reply.id == message.id:
                return self._codec.result(reply, type(message))

    # ------------------------------------------------------------------ receiving

    def _split(self, buf: bytearray, pos: int) -> tuple[int, int] | None:
        """(payload start, payload end) of the frame at `pos`, or None if incomplete."""
        n = len(buf)
        if self.transport == "unix":
            if n - pos < 4:
                return None
            end = pos + 4 + _unpack_u32(buf, pos)[0]
            return (pos + 4, end) if end <= n else None
        if n - pos < 2:
            return None
        length = buf[pos + 1] & 0x7F
        start = pos + 2
        if length == 126:
            if n - pos < 4:
                return None
            length = _unpack_u16(buf, pos + 2)[0]
            start = pos + 4
        elif length == 127:
            if n - pos < 10:
                return None
            length = _unpack_u64(buf, pos + 2)[0]
            start = pos + 10
        end = start + length
        return (start, end) if end <= n else None

    async def next_message(self) -> Any:
        """Decode the next message (for the handshake and requests, not for counting)."""
        while True:
            span = self._split(self._buf, 0)
            if span is not None:
                start, end = span
                payload = bytes(self._buf[start:end])
                del self._buf[:end]
                return self._codec.decode(payload)
            data = await self._stream.receive_some(262144)
            if not data:
                raise ConnectionError("the daemon closed the connection")
            self._buf += data

    async def _hello(self) -> None:
        await self.send(m.Hello(client="bench-sub", encoding="msgpack"))
        welcome = await self.next_message()
        if not isinstance(welcome, m.Welcome):
            raise RuntimeError(f"expected welcome, got {welcome!r}")

    async def subscribe(self, chat: str, since: int | None, *, live: bool = True,
                        wait_complete: bool = True) -> m.Subscribed:
        """Subscribe; with `wait_complete`, also read up to `replay_complete` (for a live
        subscription from the head: the subscriber is in the live set after that)."""
        cursor = None if since is None else m.Cursor(seq=since)
        sub: m.Subscribed = await self.request(m.Subscribe(id=0, chat=chat, since=cursor,
                                                           live=live))
        if wait_complete:
            while not isinstance(await self.next_message(), m.ReplayComplete):
                pass
        return sub

    async def count_until(self, marker: bytes, timeout: float = 300.0) -> Tally:
        """Count delta frames until the frame that contains `marker` (e.g. b"turn_ended",
        b"replay_complete") has been read, or a `resync_required` (which means the marker
        may never come). Control frames are decoded (lags counted)."""
        with trio.fail_after(timeout):
            return await self._count(marker)

    async def _count(self, marker: bytes) -> Tally:
        tally = Tally()
        buf = self._buf
        prefix = DELTA_PREFIX
        split = self._split
        stop_at = -1
        scan_from = 0
        pos = 0
        unix = self.transport == "unix"
        while True:
            if stop_at < 0:
                found = buf.find(marker, scan_from)
                if found >= 0:
                    stop_at = found
                else:
                    scan_from = max(0, len(buf) - len(marker) + 1)
            n = len(buf)
            while True:
                if unix:
                    # Inlined `_split` for the Unix socket: this loop runs per frame.
                    if n - pos < 4:
                        break
                    start = pos + 4
                    end = start + _unpack_u32(buf, pos)[0]
                    if end > n:
                        break
                else:
                    span = split(buf, pos)
                    if span is None:
                        break
                    start, end = span
                if buf.startswith(prefix, start):
                    tally.deltas += 1
                else:
                    tally.control += 1
                    message = self._codec.decode(bytes(buf[start:end]))
                    if isinstance(message, m.Lagged):
                        tally.lagged += 1
                    elif isinstance(message, m.ResyncRequired):
                        tally.resynced = True
                        stop_at = start
                pos = end
                if 0 <= stop_at < end:
                    tally.ended_at = time.perf_counter()
                    tally.bytes += pos
                    del buf[:pos]
                    return tally
            if pos:
                tally.bytes += pos
                del buf[:pos]
                scan_from = max(0, scan_from - pos)
                if stop_at >= 0:
                    stop_at -= pos
                pos = 0
            data = await self._stream.receive_some(262144)
            if not data:
                raise ConnectionError("the daemon closed the connection while counting")
            buf += data


async def open_subscribers(transport: Transport, count: int, *, socket: Path,
                           ws_url: str | None, token: str | None) -> list[RawSubscriber]:
    subs: list[RawSubscriber] = []
    for _ in range(count):
        if transport == "unix":
            subs.append(await RawSubscriber.unix(socket))
        else:
            assert ws_url is not None
            assert token is not None
            subs.append(await RawSubscriber.websocket(ws_url, token))
    return subs

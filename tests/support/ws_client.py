"""A small WebSocket client for the tests, on trio-websocket's own client.

It speaks the protocol the way an outside client would (JSON in text messages or msgpack in
binary ones), decodes with `protocol.codec.ClientCodec`, and keeps everything that is not a
reply in an event list, like `daemon.client.Client` does for the Unix socket, so the two can
be compared message for message.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from daemon.client import RequestFailed
from protocol import messages as m
from protocol.codec import ClientCodec, Encoding

MAX_MESSAGE = 64 * 1024 * 1024
"""What the client accepts from the daemon (trio-websocket's default is only 1 MiB)."""


def auth_headers(token: str | None, origin: str | None = None) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    if token is not None:
        headers.append((b"Authorization", f"Bearer {token}".encode()))
    if origin is not None:
        headers.append((b"Origin", origin.encode()))
    return headers


class WsClient:
    def __init__(self, ws: WebSocketConnection, encoding: Encoding) -> None:
        self.ws = ws
        self.encoding: Encoding = encoding
        self._codec = ClientCodec(encoding)
        self._enc: msgspec.json.Encoder | msgspec.msgpack.Encoder = (
            msgspec.json.Encoder() if encoding == "json" else msgspec.msgpack.Encoder())
        self._ids = itertools.count(1)
        self.events: collections.deque[Any] = collections.deque()
        self.raw_types: list[type[str] | type[bytes]] = []
        """The Python type (str = text message, bytes = binary) of every message received."""
        self.welcome: m.Welcome | None = None

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, *, token: str | None, encoding: Encoding = "json",
                      origin: str | None = None, subprotocols: list[str] | None = None,
                      client: str = "ws-test") -> AsyncIterator[WsClient]:
        """Open, send `hello` (in the frame type of `encoding`) and wait for `welcome`."""
        async with open_websocket_url(url, extra_headers=auth_headers(token, origin),
                                      subprotocols=subprotocols,
                                      max_message_size=MAX_MESSAGE) as ws:
            self = cls(ws, encoding)
            await self.send(m.Hello(encoding=encoding, client=client))
            welcome = await self.receive()
            assert isinstance(welcome, m.Welcome), welcome
            self.welcome = welcome
            yield self

    async def send(self, message: Any) -> None:
        data = self._enc.encode(message)
        await self.send_raw(data.decode() if self.encoding == "json" else data)

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send_message(data)

    async def receive(self, timeout: float = 10.0) -> Any:
        """The next message from the daemon, decoded; checks its frame type matches."""
        with trio.fail_after(timeout):
            raw = await self.ws.get_message()
        self.raw_types.append(type(raw))
        expected = str if self.encoding == "json" else bytes
        assert isinstance(raw, expected), f"{self.encoding} client got a {type(raw)} message"
        return self._codec.decode(raw)

    async def request(self, request: Any, timeout: float = 10.0) -> Any:
        """Send `request` with a fresh id; return its typed result or raise `RequestFailed`.
        Other messages received meanwhile are kept in `events`."""
        request.id = next(self._ids)
        await self.send(request)
        with trio.fail_after(timeout):
            while True:
                message = await self.receive()
                if isinstance(message, m.RawReply | m.ErrorReply) and message.id == request.id:
                    break
                self.events.append(message)
        if isinstance(message, m.ErrorReply):
            raise RequestFailed(message.code, message.message, message.detail)
        return self._codec.result(message, type(request))

    async def next_event(self, timeout: float = 10.0) -> Any:
        if self.events:
            return self.events.popleft()
        return await self.receive(timeout)

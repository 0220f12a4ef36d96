"""A trio client for the daemon's Unix socket: the CLI uses it, so do the tests.

    async with Client.connect(socket_path, client="cli") as client:
        info = await client.request(OpenChat(id=0, agent="echo"))
        await client.request(Subscribe(id=0, chat=info.chat, since=Cursor(seq=info.head_seq)))
        async for event in client.events():   # Delta, ReplayComplete, Lagged, ...
            ...

`request` fills in the `id`, waits for the matching reply and returns the typed result, or
raises `RequestFailed` carrying the daemon's error code. Everything that is not a reply goes
to `events()` in arrival order.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio

from protocol import messages as m
from protocol.codec import ClientCodec
from protocol.errors import ErrorCode
from protocol.framing import DEFAULT_MAX_FRAME, FrameEncoder, FrameReader

T = TypeVar("T")


class ClientError(Exception):
    """Talking to the daemon failed: the CLI prints it as one line and exits 1."""


class DaemonNotRunning(ClientError):
    """Nothing answers on the socket; the message says how to start the daemon, and the
    editor bridge catches it to start one itself."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"the daemon is not running (no answer on {path}: {why}); "
                         "start it with `stoker daemon` (or scripts/run)")
        self.path = path


class ConnectionClosed(ClientError):
    """The daemon closed the connection (shutdown, or it refused us)."""


class RequestFailed(ClientError):
    """The daemon answered a request with an error: its code, message and detail."""

    def __init__(self, code: ErrorCode | str, message: str, detail: Any = None) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message
        self.detail = detail


class _Waiter:
    __slots__ = ("event", "message")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.message: m.RawReply | m.ErrorReply | None = None


class Client:
    def __init__(self, stream: trio.SocketStream, name: str) -> None:
        self._stream = stream
        self._name = name
        self._codec = ClientCodec("msgpack")
        self._encoder = FrameEncoder(DEFAULT_MAX_FRAME)
        self._reader = FrameReader(1 << 31)
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._events: collections.deque[Any] = collections.deque()
        self._events_changed = trio.Event()
        self._orphan_errors: list[m.ErrorReply] = []
        self._closed: str | None = None
        self._send_lock = trio.Lock()
        self.welcome: m.Welcome | None = None
        self.socket_path: Path | None = None

    @classmethod
    @asynccontextmanager
    async def connect(cls, path: Path | str, *, client: str = "cli") -> AsyncIterator[Client]:
        path = Path(path)
        try:
            stream = await trio.open_unix_socket(os.fspath(path))
        except FileNotFoundError:
            raise DaemonNotRunning(path, "no such socket") from None
        except ConnectionRefusedError:
            raise DaemonNotRunning(path, "connection refused") from None
        except PermissionError as exc:
            raise ClientError(f"cannot connect to {path}: {exc.strerror}") from None
        except OSError as exc:
            raise DaemonNotRunning(path, exc.strerror or str(exc)) from None
        self = cls(stream, client)
        self.socket_path = path
        body_error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_loop)
            try:
                await self._send(m.Hello(client=client))
                self.welcome = await self._wait_event(m.Welcome)
                yield self
            except BaseException as exc:
                # Re-raised outside the nursery: callers catch RequestFailed, not a group.
                body_error = exc
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await stream.aclose()
        if body_error is not None:
            raise body_error

    async def _send(self, message: Any) -> None:
        data = self._encoder.encode(message)
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionClosed(f"connection to the daemon lost: {exc}") from None

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (tests use this for malformed frames)."""
        async with self._send_lock:
            await self._stream.send_all(data)

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._stream.receive_some(262144)
                if not data:
                    self._close("the daemon closed the connection")
                    return
                for payload in self._reader.feed(data):
                    self._on_message(self._codec.decode(payload))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._close(f"connection to the daemon lost: {exc}")

    def _close(self, why: str) -> None:
        if self._closed is None:
            self._closed = why
        for waiter in self._waiters.values():
            waiter.event.set()
        self._events_changed.set()

    def _on_message(self, message: Any) -> None:
        if isinstance(message, m.RawReply | m.ErrorReply):
            waiter = self._waiters.get(message.id) if message.id is not None else None
            if waiter is not None:
                waiter.message = message
                waiter.event.set()
                return
            if isinstance(message, m.ErrorReply):
                self._orphan_errors.append(message)
        self._events.append(message)
        self._events_changed.set()

    async def _wait_event(self, kind: type[T]) -> T:
        while True:
            while self._events:
                event = self._events.popleft()
                if isinstance(event, kind):
                    return event
                if isinstance(event, m.ErrorReply):
                    raise RequestFailed(event.code, event.message, event.detail)
            if self._closed is not None:
                raise ConnectionClosed(self._closed)
            self._events_changed = trio.Event()
            await self._events_changed.wait()

    async def request(self, request: Any) -> Any:
        """Send `request` (its id is assigned here) and return the typed result."""
        request_id = next(self._ids)
        request.id = request_id
        waiter = _Waiter()
        self._waiters[request_id] = waiter
        try:
            await self._send(request)
            await waiter.event.wait()
        finally:
            self._waiters.pop(request_id, None)
        message = waiter.message
        if message is None:
            raise ConnectionClosed(self._closed or "connection closed")
        if isinstance(message, m.ErrorReply):
            raise RequestFailed(message.code, message.message, message.detail)
        return self._codec.result(message, type(request))

    async def next_event(self, timeout: float | None = None) -> Any:
        """The next non-reply message (Delta, ReplayComplete, ...)."""
        with trio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
            while not self._events:
                if self._closed is not None:
                    raise ConnectionClosed(self._closed)
                self._events_changed = trio.Event()
                await self._events_changed.wait()
            return self._events.popleft()

    async def events(self) -> AsyncIterator[Any]:
        while True:
            try:
                yield await self.next_event()
            except ConnectionClosed:
                return

    @property
    def closed(self) -> str | None:
        return self._closed

    def orphan_errors(self) -> list[m.ErrorReply]:
        """Error replies that named no request of ours (bad frames)."""
        return list(self._orphan_errors)


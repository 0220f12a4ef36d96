"""The WebSocket listener's I/O: a `Transport` over one trio-websocket connection, and the
listener that accepts clients and runs one `Connection` per client.

Apart from `auth` (the policy) and `service` (the subsystem) so that trio-websocket and
wsproto, ~25 ms of imports, load only when `[websocket] enabled`: the daemon's start is on
the restart path of every client.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from daemon.channels.frames import Mode
from daemon.channels.hub import Hub
from daemon.config.file import WebSocketConfig
from daemon.listeners.connection import Connection, Handlers, Limits
from daemon.listeners.http.head import HeadError, bare_error, is_websocket, read_head
from daemon.listeners.http.openapi import document_bytes
from daemon.listeners.http.policy import check_host
from daemon.listeners.http.server import HttpServer
from daemon.listeners.websocket.auth import (
    CLOSE_TIMEOUT,
    GOING_AWAY,
    HANDSHAKE_TIMEOUT,
    MESSAGE_QUEUE,
    MESSAGE_TOO_BIG,
    check_handshake,
    websocket_url,
)
from daemon.listeners.websocket.frames import BatchSender
from daemon.listeners.websocket.inbound import ClientStream
from daemon.listeners.websocket.token import TokenFileError, ensure_token
from daemon.log import Log
from protocol import messages as m
from protocol.errors import ErrorCode
from protocol.framing import FrameError, FrameTooLarge

# ------------------------------------------------------------------------- transport


class MessageTooLarge(FrameTooLarge):
    """The client sent a WebSocket message larger than `max_message`, or a frame header
    declaring one (`declared`, refused before its payload: `inbound`)."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        if declared is not None:
            super().__init__(declared, limit)
            return
        # FrameError's init, not FrameTooLarge's: the size of the refused message is unknown.
        FrameError.__init__(self, f"message exceeds the limit of {limit} bytes")
        self.size = limit + 1
        self.limit = limit


class WebSocketTransport:
    """A `daemon.connection.Transport` over one accepted WebSocket.

    Incoming messages are decoded by their frame type (text: JSON, binary: msgpack), so the
    `hello` itself needs no prior agreement; `encoding` names the type of the message just
    received, which is what the connection decodes it with. Outgoing messages use `mode`,
    which follows the client's frames until `hello` fixes it (`set_encoding`, called by the
    connection): JSON as text messages, msgpack as binary messages, one per protocol message.
    """

    def __init__(self, ws: WebSocketConnection, peer: str, max_message: int,
                 inbound: ClientStream | None = None) -> None:
        self._ws = ws
        self._max_message = max_message
        self._inbound = inbound
        self.peer = peer
        self.mode: Mode = "msgpack"
        self.encoding = "msgpack"
        self._chosen = False
        self.close_code = 1000
        self.close_reason = ""
        self._batch = BatchSender.attach(ws)
        """Whole batches in one write (see `ws_frames`); None: message by message."""

    def set_encoding(self, encoding: str) -> None:
        """The client's `hello.encoding`: every later daemon message uses it."""
        self.mode = "json" if encoding == "json" else "msgpack"
        self.encoding = self.mode
        self._chosen = True

    async def receive(self) -> bytes | str | None:
        try:
            message = await self._ws.get_message()
        except ConnectionClosed as exc:
            if self._inbound is not None and self._inbound.refused is not None:
                raise MessageTooLarge(self._max_message, self._inbound.refused) from None
            reason = exc.reason
            if (reason is not None and reason.code == MESSAGE_TOO_BIG
                    and (reason.reason or "").startswith("Exceeded maximum message size")):
                raise MessageTooLarge(self._max_message) from None
            return None
        kind: Mode = "json" if isinstance(message, str) else "msgpack"
        self.encoding = kind
        if not self._chosen:
            self.mode = kind
        return message

    async def send_batch(self, frames: list[bytes]) -> None:
        """Send each frame as one message. Whether it is text is read from the frame itself:
        every protocol message is a struct, so a JSON frame starts with `{` and a msgpack one
        with a map marker (0x80-0x8f, 0xde, 0xdf), never 0x7b. That keeps frames queued just
        before `hello` switched the encoding in the type they were encoded in."""
        if self._batch is not None:
            await self._batch.send(frames)
            return
        ws = self._ws
        try:
            for frame in frames:
                if frame[:1] == b"{":
                    await ws.send_message(frame.decode("utf-8"))
                else:
                    await ws.send_message(frame)
        except ConnectionClosed as exc:
            raise trio.ClosedResourceError(f"websocket closed: {exc.reason}") from None

    async def aclose(self) -> None:
        await self._ws.aclose(code=self.close_code, reason=self.close_reason or None)

    def peer_reading(self) -> bool:
        return False  # a close ends both directions


class _Handlers:
    """The daemon's handlers, with `welcome` reporting this listener's message limit (what a
    client may send here is `max_message`, not the Unix socket's `max_frame`)."""

    def __init__(self, inner: Handlers, max_message: int) -> None:
        self._inner = inner
        self.hub: Hub = inner.hub
        self._max_message = max_message

    async def handle(self, request: Any, client: str) -> Any:
        return await self._inner.handle(request, client)

    def is_slow(self, request: object) -> bool:
        return self._inner.is_slow(request)

    def welcome(self, encoding: str) -> m.Welcome:
        return msgspec.structs.replace(self._inner.welcome(encoding),
                                       max_frame=self._max_message)

    async def render_metrics(self) -> bytes | None:
        return await self._inner.render_metrics()


# ------------------------------------------------------------------------- listener


PENDING_HANDSHAKES = 16
"""TCP connections beyond `max_connections` that may be open at once (handshakes under
way). Past that, new connections wait in the kernel's listen backlog: they cost the daemon
no file descriptor, so unauthenticated clients cannot use up the daemon's descriptors."""


class StreamGate:
    """Counts the TCP streams the listener holds, and makes `accept` wait while there are
    as many as the live capacity allows."""

    def __init__(self, capacity: Callable[[], int]) -> None:
        self._capacity = capacity
        self.open = 0
        self._freed = trio.Event()

    async def enter(self) -> None:
        while self.open >= self._capacity():
            await self._freed.wait()
        self.open += 1

    def leave(self) -> None:
        self.open -= 1
        self._freed.set()
        self._freed = trio.Event()


class _GatedListener(trio.abc.Listener[trio.SocketStream]):
    """A TCP listener that accepts only while the gate has room."""

    def __init__(self, inner: trio.SocketListener, gate: StreamGate) -> None:
        self._inner = inner
        self._gate = gate

    async def accept(self) -> trio.SocketStream:
        await self._gate.enter()
        try:
            return await self._inner.accept()
        except BaseException:
            self._gate.leave()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


class WebSocketListener:
    """Accepts WebSocket clients and runs one `Connection` per client.

    Connections run in this listener's own nursery, outside the accept loop's cancel scope,
    so that shutdown can stop accepting first and say goodbye to the open connections after
    the pool has ended their turns (the same order as the Unix listener)."""

    def __init__(self, handlers: Handlers, config: WebSocketConfig, *,
                 live_config: Callable[[], WebSocketConfig], token_file: Path,
                 limits: Callable[[], Limits]) -> None:
        self._live_config = live_config
        self._token_file = token_file
        self._limits = limits
        self._host = config.host
        self._port = config.port
        self._max_message = int(config.max_message)
        self._handlers = _Handlers(handlers, self._max_message)
        self._log = Log("websocket")
        self._scope = trio.CancelScope()
        self.connections: dict[Connection, WebSocketTransport] = {}
        self._slots = 0
        """Connections open or being accepted (reserved before the accept's await)."""
        self._listeners: list[trio.SocketListener] = []
        self.url: str | None = None
        self.accepted = 0
        self.refused = 0
        self.timed_out = 0
        """Connections that sent no WebSocket handshake within HANDSHAKE_TIMEOUT."""
        self.gate = StreamGate(lambda: self._config.max_connections + PENDING_HANDSHAKES)
        self.http = HttpServer(handlers, live_config=live_config, token=self._read_token,
                               limits=limits, max_body=self._max_message,
                               openapi=document_bytes)
        """Every request on the port that is not a WebSocket upgrade."""

    async def _read_token(self) -> str:
        return await trio.to_thread.run_sync(ensure_token, self._token_file)

    @property
    def _config(self) -> WebSocketConfig:
        """The live config section (replaced on reload)."""
        return self._live_config()

    async def bind(self) -> str:
        """Open the listening sockets (errors such as EADDRINUSE surface here, unwrapped)
        and return the URL, with the port actually bound (which matters for `port = 0`)."""
        self._listeners = await trio.open_tcp_listeners(self._port, host=self._host or None)
        port = self._listeners[0].socket.getsockname()[1]
        self.url = websocket_url(self._host, int(port))
        return self.url

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Serve until `stop_accepting`, then wait for the open connections to end."""
        listeners = [_GatedListener(listener, self.gate) for listener in self._listeners]
        async with trio.open_nursery() as connections:
            await connections.start(self._accept_loop, listeners, connections)
            task_status.started()

    async def _accept_loop(self, listeners: list[_GatedListener], connections: trio.Nursery,
                           *, task_status: trio.TaskStatus[list[_GatedListener]]) -> None:
        with self._scope:
            await trio.serve_listeners(self._serve_stream, listeners,
                                       handler_nursery=connections, task_status=task_status)

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        """One TCP connection: its first request head within HANDSHAKE_TIMEOUT, then a
        WebSocket (`_handle`) when it asks for the upgrade, else HTTP (`self.http`); its
        gate place is given back however it ends. Whatever goes wrong in it ends it alone:
        nothing raised here may reach `serve_listeners`, whose nursery is the listener's."""
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await self._first_request(stream, nursery)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # The client reset or closed its end. Caught inside the nursery: out of
                    # it, it would be wrapped in an ExceptionGroup that no `except` here
                    # matches, and a client resetting during its request head took the
                    # whole daemon down that way.
                    pass
                nursery.cancel_scope.cancel()
        except Exception:
            self._log.exception("connection failed", peer=_stream_peer(stream))
        finally:
            self.gate.leave()
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await stream.aclose()

    async def _first_request(self, stream: trio.SocketStream, nursery: trio.Nursery) -> None:
        request: WebSocketRequest | None = None
        inbound: ClientStream | None = None
        head = None
        with trio.move_on_after(HANDSHAKE_TIMEOUT) as handshake:
            if not await _sent_something(stream):
                return  # closed before a request: its place goes at once
            try:
                head = await read_head(stream)
            except HeadError as exc:
                await stream.send_all(bare_error(exc.status, str(exc)))
                return
            if head is None:
                return
            if is_websocket(head[1]):
                host = check_host(head[1].headers, self._config.allowed_hosts)
                if not host.allowed:
                    self.refused += 1
                    self._log.warning("refused websocket handshake",
                                      status=host.status, reason=host.reason)
                    await stream.send_all(bare_error(host.status, host.reason,
                                                     ErrorCode.UNAUTHORIZED))
                    return
                # wsproto parses the handshake again, from the bytes already read.
                inbound = ClientStream(stream, head[2], max_message=self._max_message,
                                       head_size=len(head[2]) - len(head[0].trailing_data[0]))
                request = await wrap_server_stream(
                    nursery, inbound, message_queue_size=MESSAGE_QUEUE,
                    max_message_size=self._max_message)
        if handshake.cancelled_caught:
            self.timed_out += 1
        elif request is not None and inbound is not None:
            await self._handle(request, _stream_peer(stream), inbound)
        elif head is not None:
            await self.http.serve(stream, head[0], head[1], _stream_peer(stream))

    def stop_accepting(self) -> None:
        self._scope.cancel()

    async def close_connections(self, reason: str, timeout: float = 2.0) -> None:
        """Say goodbye to every client (close code 1001, Going Away) and wait, within
        `timeout`, until their connections have ended."""
        for conn, transport in list(self.connections.items()):
            transport.close_code = GOING_AWAY
            transport.close_reason = reason
            await conn.goodbye(reason)
        self.http.close_all(reason)
        with trio.move_on_after(timeout):
            while self.connections or self.http.streams:
                await trio.sleep(0.01)
        self.http.cancel_all()

    async def _refuse(self, request: WebSocketRequest, status: int, reason: str,
                      log: Log) -> None:
        self.refused += 1
        log.warning("refused websocket handshake", status=status, reason=reason)
        headers = [(b"Content-Type", b"text/plain; charset=utf-8")]
        if status == 401:
            headers.append((b"WWW-Authenticate", b'Bearer realm="stoker"'))
        try:
            await request.reject(status, extra_headers=headers,
                                 body=(reason + "\n").encode())
        except ConnectionClosed:
            pass

    async def _handle(self, request: WebSocketRequest, peer: str,
                      inbound: ClientStream) -> None:
        log = self._log.bind(peer=peer)
        if self._scope.cancel_called:
            # A handshake that raced with shutdown: its goodbye round has already passed.
            await self._refuse(request, 503, "the daemon is shutting down", log)
            return
        try:
            token = await trio.to_thread.run_sync(ensure_token, self._token_file)
        except (TokenFileError, OSError) as exc:
            log.error("cannot read the websocket token", error=str(exc))
            await self._refuse(request, 503, "the daemon cannot read its token file", log)
            return
        config = self._config
        verdict = check_handshake(request.headers, request.proposed_subprotocols,
                                  token=token, allowed_origins=config.allowed_origins)
        if not verdict.accepted:
            await self._refuse(request, verdict.status, verdict.reason, log)
            return
        if self._slots >= config.max_connections:
            await self._refuse(request, 503,
                               f"too many connections (limit {config.max_connections})", log)
            return
        self._slots += 1
        try:
            try:
                ws = await request.accept(subprotocol=verdict.subprotocol)
            except ConnectionClosed:
                return
            await self._serve_connection(ws, peer, log, inbound)
        finally:
            self._slots -= 1

    async def _serve_connection(self, ws: WebSocketConnection, peer: str, log: Log,
                                inbound: ClientStream) -> None:
        transport = WebSocketTransport(ws, peer, self._max_message, inbound)
        conn = Connection(transport, self._handlers, self._limits(),
                          log.bind(actor="client"))
        self.accepted += 1
        self.connections[conn] = transport
        log.debug("websocket client connected")
        try:
            await conn.run()
        except Exception:
            log.exception("websocket connection failed")
        finally:
            self.connections.pop(conn, None)
            log.debug("websocket client disconnected", requests=conn.requests)

    def statistics(self) -> dict[str, int]:
        return {"connections": len(self.connections), "accepted": self.accepted,
                "refused": self.refused, "handshake_timeouts": self.timed_out,
                "tcp_streams": self.gate.open, "http_requests": self.http.requests,
                "http_refused": self.http.refused, "event_streams": len(self.http.streams)}


async def _sent_something(stream: trio.SocketStream) -> bool:
    """Wait until the peer sent its first bytes (left in the socket for the handshake to
    read) or closed. trio-websocket waits out its whole timeout for a request from a peer
    that already hung up; a backlog of such connections would hold the gate that long."""
    try:
        return bool(await stream.socket.recv(1, socket.MSG_PEEK))
    except OSError:
        return False


def _stream_peer(stream: trio.SocketStream) -> str:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "?"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)

"""The WebSocket listener's I/O: a `Transport` over one trio-websocket connection, and the
listener that accepts clients and runs one `Connection` per client.

Apart from `auth` (the policy) and `service` (the subsystem) so that trio-websocket and
wsproto, ~25 ms of imports, load only when `[websocket] enabled`: the daemon's start is on
the restart path of every client.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
)

from daemon.channels.frames import Mode
from daemon.channels.hub import Hub
from daemon.config.file import WebSocketConfig
from daemon.listeners.connection import Connection, Handlers, Limits
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
from daemon.listeners.websocket.token import TokenFileError, ensure_token
from daemon.log import Log
from protocol import messages as m
from protocol.framing import FrameError, FrameTooLarge

# ------------------------------------------------------------------------- transport


class MessageTooLarge(FrameTooLarge):
    """The client sent a WebSocket message larger than `max_message`."""

    def __init__(self, limit: int) -> None:
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

    def __init__(self, ws: WebSocketConnection, peer: str, max_message: int) -> None:
        self._ws = ws
        self._max_message = max_message
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


# ------------------------------------------------------------------------- listener


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
        async with trio.open_nursery() as connections:
            server = WebSocketServer(
                self._handle, self._listeners, handler_nursery=connections,
                message_queue_size=MESSAGE_QUEUE, max_message_size=self._max_message,
                connect_timeout=HANDSHAKE_TIMEOUT, disconnect_timeout=CLOSE_TIMEOUT)
            await connections.start(self._accept_loop, server)
            task_status.started()

    async def _accept_loop(self, server: WebSocketServer, *,
                           task_status: trio.TaskStatus[WebSocketServer]) -> None:
        with self._scope:
            await server.run(task_status=task_status)

    def stop_accepting(self) -> None:
        self._scope.cancel()

    async def close_connections(self, reason: str, timeout: float = 2.0) -> None:
        """Say goodbye to every client (close code 1001, Going Away) and wait, within
        `timeout`, until their connections have ended."""
        for conn, transport in list(self.connections.items()):
            transport.close_code = GOING_AWAY
            transport.close_reason = reason
            await conn.goodbye(reason)
        with trio.move_on_after(timeout):
            while self.connections:
                await trio.sleep(0.01)

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

    async def _handle(self, request: WebSocketRequest) -> None:
        peer = _peer(request)
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
            await self._serve_connection(ws, peer, log)
        finally:
            self._slots -= 1

    async def _serve_connection(self, ws: WebSocketConnection, peer: str, log: Log) -> None:
        transport = WebSocketTransport(ws, peer, self._max_message)
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
                "refused": self.refused}


def _peer(request: WebSocketRequest) -> str:
    try:
        remote = request.remote
    except OSError:
        return "?"
    if isinstance(remote, str):
        return remote
    return f"{remote.address}:{remote.port}"

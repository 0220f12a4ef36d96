"""Stoker's MCP server over the Streamable HTTP transport, served by the daemon itself to
agents that advertise `mcpCapabilities.http` (daemon/mcp/offer.py decides who gets it).

    POST|GET|DELETE /mcp/<chat>    Authorization: Bearer <chat's credential>

One loopback listener (127.0.0.1, an ephemeral port), bound the first time a session is
offered the HTTP entry (`endpoint`, synchronous: the offer is made inside a session's
setup) and never before: a daemon whose agents all take stdio imports nothing of this.
The MCP SDK and its server (daemon/mcp/server.py, the same tools, descriptions and errors
as `stoker mcp`) are imported then, in a worker thread; connections wait in the backlog
meanwhile.

The gate, before any body is read: `Host` and `Origin` as on the daemon's HTTP port
(`http.policy`: DNS rebinding; `[websocket] allowed_hosts` / `allowed_origins`), then
exactly one bearer credential, compared in constant time with the chat's
(`mcp.credentials`): a forged or another chat's credential is 401 and nothing runs. The
request then goes to the SDK's `StreamableHTTPSessionManager` (stateless: no session is
kept between requests, so an idle chat costs nothing here; JSON answers) through the small
ASGI adapter `http.asgi`; the chat and its credential travel as the SDK's authenticated
user, and each tool call asks the daemon's router in process, as the request's chat, with
its credential (the tasks subsystem checks it again, as for stdio). The chat's first
request past the MCP handshake marks up the server of the agent its URL names (`?agent=`;
`mcp.presence`, which warns in a chat whose session never brings it up).

Agents on other computers reach the same listener through an SSH remote port forward of
their computer's connection (`remote_endpoint`, given `forward` by the SSH subsystem): the
agent is offered `http://127.0.0.1:<port there>/mcp/<chat>`, and its requests arrive here
from 127.0.0.1 like a local agent's, with `Host: 127.0.0.1:<port there>`. The gate takes
them as it is: an IP literal passes the Host check whatever its port (the check is against
DNS rebinding, which an IP literal cannot be subject to), so no allow-list of forwarded
ports is kept; foreign names and origins are still refused, and the bearer credential stays
the authority.

A child of the tree among the doors (daemon/service/root.py `mcp-http`): started after the
subsystems its tools call, stopped first (no new connection; the offer goes back to stdio).
"""

from __future__ import annotations

import socket as stdsocket
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import h11
import trio

from daemon.config.file import WebSocketConfig
from daemon.errors import StokerError
from daemon.execution.local import SpawnError
from daemon.listeners.http import api, asgi
from daemon.listeners.http.head import HeadError, bare_error, read_head
from daemon.listeners.http.policy import bearer_tokens, check_request, header
from daemon.log import Log
from daemon.mcp import credentials, offer, presence
from daemon.mcp.tools import Ask, StokerTools
from protocol.errors import ErrorCode

HOST = "127.0.0.1"
MAX_BODY = 4 * 1024 * 1024
"""The largest request body (the MCP SDK's own default)."""
HEAD_TIMEOUT = 10.0
"""A connection must send its first request head within this long."""
BODY_TIMEOUT = 30.0
KEEPALIVE = 60.0
"""An idle keep-alive connection is closed after this long."""
MAX_CONNECTIONS = 256
JSON_RESPONSE = True
"""Answer each POST with one JSON object rather than an SSE stream carrying it. Both are the
spec's; the tools send no progress or server requests that would need a stream, and JSON
costs the daemon half as much per call (3.5 against 8 ms in process, docs/TASKS.md)."""


class Handlers(Protocol):
    """What the tools need from the daemon: its router (`daemon.service.root.Service`)."""

    async def handle(self, request: Any, client: str) -> Any: ...


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def router_ask(handlers: Handlers, chat: str, log: Log) -> Ask:
    """The tools' requests, answered by the daemon's router in process; a refusal is the
    same `ToolError` text as over the socket (`code: message`)."""

    async def ask(request: Any) -> Any:
        from mcp.server.mcpserver.exceptions import ToolError

        try:
            return await handlers.handle(request, f"mcp:{chat}")
        except StokerError as exc:
            raise ToolError(f"{exc.code}: {exc.message}") from None
        except trio.TooSlowError:
            raise ToolError(f"{ErrorCode.AGENT_UNAVAILABLE}: timed out waiting for the agent"
                            ) from None
        except Exception as exc:
            log.exception("tool request failed", request=type(request).__name__)
            raise ToolError(f"{ErrorCode.INTERNAL}: internal error ({type(exc).__name__}); "
                            "see the daemon log") from None

    return ask


def build_app(handlers: Handlers, log: Log) -> tuple[Any, asgi.App]:
    """The SDK's session manager for Stoker's server, and the ASGI app to call for an
    authenticated request (the caller puts the chat in `scope["user"]`). Imports the SDK."""
    from mcp.server.auth.middleware.auth_context import AuthContextMiddleware, get_access_token
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.server.transport_security import TransportSecuritySettings

    from daemon.mcp.server import server

    def tools_for() -> StokerTools:
        token = get_access_token()
        if token is None:  # every request is authenticated before it reaches the SDK
            raise ToolError(f"{ErrorCode.UNAUTHORIZED}: no credential")
        return StokerTools(router_ask(handlers, token.client_id, log), token.client_id,
                           token.token)

    app = server(tools_for)
    # The documented way to mount the transport elsewhere: this builds the session
    # manager (and a Starlette app, unused: the routing and the gate are ours).
    app.streamable_http_app(
        stateless_http=True, json_response=JSON_RESPONSE, max_request_body_size=MAX_BODY,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    manager = app.session_manager
    return manager, AuthContextMiddleware(manager.handle_request)


def user_for(chat: str, credential: str) -> Any:
    """The SDK's authenticated user for a request of `chat` (its `client_id`)."""
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken

    return AuthenticatedUser(AccessToken(token=credential, client_id=chat, scopes=[]))


class McpHttpListener:
    """The daemon's MCP endpoint: bound on first use, served in the tree's nursery."""

    def __init__(self, handlers: Handlers, *, config: Callable[[], WebSocketConfig],
                 forward: Callable[[str, int], Awaitable[int]] | None = None) -> None:
        """`forward(computer, port)`: the port on that computer's loopback reaching `port`
        on this one (the SSH subsystem's), raising `SpawnError` when there is none."""
        self._handlers = handlers
        self._config = config
        self._forward = forward
        self._port = 0
        self._log = Log("mcp-http")
        self._nursery: trio.Nursery | None = None
        self._url: str | None = None
        self._sock: stdsocket.socket | None = None
        self._serving: trio.CancelScope | None = None
        self._app: asgi.App | None = None
        self._connections = 0
        self._failed = False
        self._stopped = False
        self.requests = 0
        self.refused = 0

    @property
    def url(self) -> str | None:
        """The base URL, once bound (http://127.0.0.1:PORT)."""
        return self._url

    # ------------------------------------------------------------------ child

    async def start(self, nursery: trio.Nursery) -> None:
        """Offer the HTTP transport from now on; nothing is bound yet."""
        self._nursery = nursery
        offer.configure_http(self.endpoint)
        if self._forward is not None:
            offer.configure_remote(self.remote_endpoint)

    async def stop(self) -> None:
        """No more offers; the port closes and the connections open on it end (a tool call
        in flight fails as its connection closes: the pool, stopped next, ends every turn
        anyway)."""
        offer.configure_http(None)
        offer.configure_remote(None)
        self._nursery = None
        self._stopped = True
        if self._serving is not None:
            self._serving.cancel()
        if self._sock is not None:
            self._sock.close()

    def endpoint(self) -> str | None:
        """The base URL, binding the listener on the first call (None: stopped or failed)."""
        if self._failed:
            return None
        if self._url is not None:
            return self._url
        nursery = self._nursery
        if nursery is None:
            return None
        sock = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
        try:
            sock.bind((HOST, 0))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            self._log.error("cannot bind the MCP endpoint; offering stdio", error=str(exc))
            return None
        self._sock = sock
        self._port = int(sock.getsockname()[1])
        self._url = f"http://{HOST}:{self._port}"
        nursery.start_soon(self._serve, sock)
        self._log.info("MCP endpoint bound", url=self._url)
        return self._url

    async def remote_endpoint(self, computer: str) -> str:
        """The base URL of this endpoint as seen from `computer` (binding it, and
        forwarding it there, on first use); `offer.Unavailable` says why there is none."""
        forward = self._forward
        if forward is None or self.endpoint() is None:
            raise offer.Unavailable("the daemon's MCP endpoint is not serving")
        try:
            port = await forward(computer, self._port)
        except SpawnError as exc:
            raise offer.Unavailable(str(exc)) from None
        return f"http://{HOST}:{port}"

    # ------------------------------------------------------------------ serving

    async def _serve(self, sock: stdsocket.socket) -> None:
        """Build the server, then accept until stopped. A failure here never reaches the
        tree's nursery: it is logged, the port closes (connections waiting in its backlog
        are refused; their agents report the server unreachable) and sessions opened
        from then on are offered stdio."""
        with trio.CancelScope() as scope:
            self._serving = scope
            if self._stopped:
                return
            try:
                started = time.monotonic()
                manager, app = await trio.to_thread.run_sync(build_app, self._handlers,
                                                             self._log)
                self._app = app
                self._log.info("MCP endpoint ready",
                               seconds=round(time.monotonic() - started, 3))
                listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                async with manager.run():
                    await trio.serve_listeners(self._connection, [listener])
            except Exception:
                self._log.exception("the MCP endpoint failed; offering stdio from now on")
                self._failed = True
                sock.close()

    async def _connection(self, stream: trio.SocketStream) -> None:
        """One client connection. Whatever goes wrong in it ends it alone (logged), never
        the listener."""
        log = self._log
        try:
            peer = _address(stream.socket.getpeername())
            log = self._log.bind(peer=f"{peer[0]}:{peer[1]}")
            if self._connections >= MAX_CONNECTIONS:
                await _send(stream, bare_error(503, "too many MCP connections",
                                               ErrorCode.LIMIT))
                return
            self._connections += 1
            try:
                await self._requests(stream, peer, log)
            finally:
                self._connections -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, asgi.ConnectionDone,
                OSError):
            pass
        except Exception:
            log.exception("MCP connection failed")
        finally:
            await stream.aclose()

    async def _requests(self, stream: trio.SocketStream, peer: tuple[str, int],
                        log: Log) -> None:
        head = None
        with trio.move_on_after(HEAD_TIMEOUT):
            try:
                head = await read_head(stream)
            except HeadError as exc:
                await _send(stream, bare_error(exc.status, str(exc)))
                return
        if head is None:
            return
        conn, request, _ = head
        server = _address(stream.socket.getsockname())
        while True:
            await self._one(stream, conn, request, peer, server, log)
            if conn.our_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
            following: h11.Request | None = None
            with trio.move_on_after(KEEPALIVE):
                event = await _next_event(stream, conn)
                following = event if isinstance(event, h11.Request) else None
            if following is None:
                return
            request = following

    async def _one(self, stream: trio.SocketStream, conn: h11.Connection,
                   request: h11.Request, peer: tuple[str, int], server: tuple[str, int],
                   log: Log) -> None:
        self.requests += 1
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        try:
            chat, credential = self._gate(request, path)
        except _Refused as exc:
            self.refused += 1
            log.warning("refused MCP request", status=exc.status, reason=str(exc),
                        path=path[:200])
            extra = [(b"www-authenticate", b'Bearer realm="stoker-mcp"')] \
                if exc.status == 401 else []
            code = ErrorCode.UNAUTHORIZED if exc.status in (401, 403) else ErrorCode.NOT_FOUND
            # Refused before its body is read; the connection then closes.
            await _send(stream, _refusal(conn, exc.status, code, str(exc), extra))
            raise asgi.ConnectionDone from None
        body = await self._body(stream, conn, request)
        presence.seen_http(chat, offer.agent_of(query), body)
        app = self._app
        assert app is not None
        scope = asgi.scope_of(request, path=urllib.parse.unquote(path),
                              query=query.encode("latin-1"), client=peer, server=server,
                              extra={"user": user_for(chat, credential)})
        try:
            await asgi.respond(app, scope, body, stream, conn)
        except asgi.ConnectionDone as exc:
            if exc.__cause__ is not None:
                log.error("MCP request failed", error=repr(exc.__cause__))
            raise

    def _gate(self, request: h11.Request, path: str) -> tuple[str, str]:
        """(chat, credential) of a request that may run; `_Refused` otherwise."""
        config = self._config()
        access = check_request(request.headers, request.method, token="",
                               allowed_origins=config.allowed_origins,
                               allowed_hosts=config.allowed_hosts, now=time.time(),
                               need_credentials=False)
        if not access.allowed:
            raise _Refused(access.status, access.reason)
        if not path.startswith(offer.HTTP_PATH) or "/" in path[len(offer.HTTP_PATH):]:
            raise _Refused(404, f"no such endpoint: {path[:200]} (MCP is at "
                                f"{offer.HTTP_PATH}<chat>)")
        chat = urllib.parse.unquote(path[len(offer.HTTP_PATH):])
        tokens = bearer_tokens(request.headers)
        if len(tokens) != 1:
            raise _Refused(401, "exactly one bearer credential is required (the chat's, "
                                "from the mcpServers entry)")
        credential = tokens[0].decode("latin-1")
        if not chat or not credentials.valid(chat, credential):
            raise _Refused(401, f"the credential does not belong to chat {chat!r}")
        return chat, credential

    async def _body(self, stream: trio.SocketStream, conn: h11.Connection,
                    request: h11.Request) -> bytes:
        length = header(request.headers, b"content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            await _send(stream, _refusal(conn, 413, ErrorCode.FRAME_TOO_LARGE,
                                         f"the body exceeds {MAX_BODY} bytes", []))
            raise asgi.ConnectionDone
        parts: list[bytes] = []
        size = 0
        with trio.move_on_after(BODY_TIMEOUT) as timer:
            while True:
                event = await _next_event(stream, conn)
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_BODY:
                        await _send(stream, _refusal(conn, 413, ErrorCode.FRAME_TOO_LARGE,
                                                     f"the body exceeds {MAX_BODY} bytes", []))
                        raise asgi.ConnectionDone
                    parts.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    return b"".join(parts)
                else:
                    raise asgi.ConnectionDone
        if timer.cancelled_caught:
            await _send(stream, _refusal(conn, 408, ErrorCode.BAD_FRAME,
                                         "the request body did not arrive in time", []))
        raise asgi.ConnectionDone


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> Any:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            await _send(stream, bare_error(exc.error_status_hint, str(exc)))
            raise asgi.ConnectionDone from None
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(bytes(await stream.receive_some(65536)))


def _refusal(conn: h11.Connection, status: int, code: ErrorCode, message: str,
             extra: list[tuple[bytes, bytes]]) -> bytes:
    """A JSON error (the daemon's `ErrorReply` shape), then the connection closes."""
    body = api.error_body(code, message)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
               *extra]
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        data += conn.send(h11.Data(data=body)) or b""
        return data + (conn.send(h11.EndOfMessage()) or b"")
    except h11.LocalProtocolError:
        return b""


async def _send(stream: trio.SocketStream, data: bytes) -> None:
    with trio.move_on_after(asgi.SEND_TIMEOUT):
        await stream.send_all(data)


def _address(addr: Any) -> tuple[str, int]:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return str(addr[0]), int(addr[1])
    return str(addr), 0

"""HTTP/1.1 on the WebSocket's port, on h11 (which wsproto already brings): one
`HttpServer` per listener, one `serve` call per TCP connection that is not a WebSocket
upgrade (the listener reads the first request head with `head.read_head` and decides).

Routes:

    GET  /                       the console (static files, `static/`)
    GET  /static/<file>          its scripts and styles
    GET  /openapi.json           the API document (`openapi`)
    GET  /login?code=<code>      a one-time code from `stoker web` -> session cookie, 303 to /
    POST /logout                 delete the session cookie from the browser
    POST /api/<request type>     a protocol request, its fields as a JSON object (`api`)
    GET  /api/<read-only type>   ping, status, agents, ls, workspace_ls, computers; fields
                                 as query parameters
    GET  /api/chats/<chat>/events  the chat's deltas as Server-Sent Events (`sse`)
    OPTIONS *                    CORS preflight, for origins in `allowed_origins`

Every route checks `Host` (DNS rebinding) and `Origin` (`policy`); `/api/*` also needs the
bearer token or the console's session cookie. Bodies over `max_message` are refused (413,
`frame_too_large`) and the connection closes; a malformed JSON body is `bad_frame`, a wrong
shape `bad_request`: each a JSON `ErrorReply`, and nothing else changes. A connection must
send its first request head within the listener's handshake timeout (slowloris), and is
kept alive between requests for `KEEPALIVE` seconds. A client that closes or resets its
connection while a slow request (the router's `slow` routes: a task's result with `wait`,
a workflow's...) is answered has that request cancelled and its connection closed at once
(`departure`); a task, turn or run it had started goes on.
"""

from __future__ import annotations

import mimetypes
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import h11
import trio

from daemon.config.file import WebSocketConfig
from daemon.errors import StokerError
from daemon.listeners.connection import Handlers, Limits
from daemon.listeners.http import api, departure, sse
from daemon.listeners.http.api import ApiError
from daemon.listeners.http.head import bare_error
from daemon.listeners.http.policy import Access, check_request, header
from daemon.listeners.http.sessions import COOKIE, SESSION_TTL, CodeLedger, mint_session
from daemon.listeners.http.sse import EventStream
from daemon.log import Log
from protocol.errors import ErrorCode

KEEPALIVE = 60.0
"""An idle keep-alive connection is closed after this long."""
BODY_TIMEOUT = 30.0
SEND_TIMEOUT = 30.0
"""A response (not an event stream) that cannot be written in this long ends the connection."""
STATIC = Path(__file__).parent / "static"
API_PREFIX = "/api/"
EVENTS_SUFFIX = "/events"
CHATS_PREFIX = "/api/chats/"

_SECURITY = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
_PAGE_SECURITY = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
]
_JSON = b"application/json"


class _Close(Exception):
    """End this connection (the response said `connection: close`, or the peer is gone)."""


class HttpServer:
    """Answers HTTP requests for one listener. Holds the one-time login codes already
    used and the open event streams (for the shutdown's goodbye)."""

    def __init__(self, handlers: Handlers, *, live_config: Callable[[], WebSocketConfig],
                 token: Callable[[], Awaitable[str]], limits: Callable[[], Limits],
                 max_body: int, openapi: Callable[[], bytes]) -> None:
        self._handlers = handlers
        self._config = live_config
        self._token = token
        self._limits = limits
        self._max_body = max_body
        self._openapi = openapi
        self._codes = CodeLedger()
        self._log = Log("http")
        self.streams: set[EventStream] = set()
        self._scopes: set[trio.CancelScope] = set()
        self._closing = False
        self._static: dict[str, bytes] = {}
        self.requests = 0
        self.refused = 0

    # ------------------------------------------------------------------ connection

    async def serve(self, stream: trio.abc.Stream, conn: h11.Connection,
                    request: h11.Request, peer: str) -> None:
        """Answer `request` and the ones after it on this connection."""
        log = self._log.bind(peer=peer)
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                await self._serve(stream, conn, request, log)
            except (_Close, sse.StreamEnded, trio.BrokenResourceError,
                    trio.ClosedResourceError):
                pass
            finally:
                self._scopes.discard(scope)

    async def _serve(self, stream: trio.abc.Stream, conn: h11.Connection,
                     request: h11.Request, log: Log) -> None:
        while True:
            await self._one(stream, conn, request, log)
            if conn.our_state is h11.MUST_CLOSE or self._closing:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
            with trio.move_on_after(KEEPALIVE):
                following = await self._next_request(stream, conn)
                if following is None:
                    return
                request = following
                continue
            return

    async def _next_event(self, stream: trio.abc.Stream, conn: h11.Connection) -> Any:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                await self._send_raw(stream, bare_error(exc.error_status_hint, str(exc)))
                raise _Close from None
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(bytes(await stream.receive_some(65536)))

    async def _next_request(self, stream: trio.abc.Stream, conn: h11.Connection
                            ) -> h11.Request | None:
        event = await self._next_event(stream, conn)
        return event if isinstance(event, h11.Request) else None

    async def _send_raw(self, stream: trio.abc.Stream, data: bytes) -> None:
        with trio.move_on_after(SEND_TIMEOUT):
            await stream.send_all(data)

    async def _body(self, stream: trio.abc.Stream, conn: h11.Connection,
                    request: h11.Request) -> bytes:
        length = header(request.headers, b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise ApiError(ErrorCode.FRAME_TOO_LARGE,
                           f"the body of {int(length)} bytes exceeds the limit of "
                           f"{self._max_body} bytes")
        parts: list[bytes] = []
        size = 0
        if conn.they_are_waiting_for_100_continue:
            # curl sends `Expect: 100-continue` with bodies over 1 KiB and waits a second
            # for this before sending the body.
            await self._send_raw(stream, conn.send(h11.InformationalResponse(
                status_code=100, headers=[])) or b"")
        with trio.fail_after(BODY_TIMEOUT):
            while True:
                event = await self._next_event(stream, conn)
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > self._max_body:
                        raise ApiError(ErrorCode.FRAME_TOO_LARGE,
                                       f"the body exceeds the limit of {self._max_body} bytes")
                    parts.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    return b"".join(parts)
                else:
                    raise _Close

    # ------------------------------------------------------------------ responses

    async def _respond(self, stream: trio.abc.Stream, conn: h11.Connection, status: int,
                       body: bytes, content_type: bytes = _JSON,
                       headers: list[tuple[bytes, bytes]] | None = None,
                       close: bool = False) -> None:
        all_headers = [(b"content-type", content_type),
                       (b"content-length", str(len(body)).encode()), *_SECURITY]
        if headers:
            all_headers.extend(headers)
        if close:
            all_headers.append((b"connection", b"close"))
        try:
            data = conn.send(h11.Response(status_code=status, headers=all_headers))
            data = (data or b"") + (conn.send(h11.Data(data=body)) or b"") if body else data
            data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            raise _Close from None
        with trio.move_on_after(SEND_TIMEOUT) as timer:
            await stream.send_all(data)
        if timer.cancelled_caught:
            raise _Close

    async def _error(self, stream: trio.abc.Stream, conn: h11.Connection,
                     code: ErrorCode, message: str, status: int | None = None,
                     detail: Any = None, headers: list[tuple[bytes, bytes]] | None = None,
                     close: bool = False) -> None:
        await self._respond(stream, conn, status or api.status_of(code),
                            api.error_body(code, message, detail), headers=headers,
                            close=close)

    # ------------------------------------------------------------------ routing

    async def _one(self, stream: trio.abc.Stream, conn: h11.Connection,
                   request: h11.Request, log: Log) -> None:
        self.requests += 1
        method = request.method
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        try:
            token = await self._token()
        except Exception as exc:
            log.error("cannot read the token", error=str(exc))
            await self._error(stream, conn, ErrorCode.INTERNAL,
                              "the daemon cannot read its token file", 503, close=True)
            raise _Close from None
        config = self._config()
        is_api = path.startswith(API_PREFIX)
        access = check_request(request.headers, method, token=token,
                               allowed_origins=config.allowed_origins,
                               allowed_hosts=config.allowed_hosts, now=time.time(),
                               need_credentials=(is_api or path == "/metrics")
                               and method != b"OPTIONS")
        if not access.allowed:
            # Refused before its body is read: a stranger's body is never buffered. With a
            # body, the connection then closes (its unread rest cannot be skipped safely).
            self.refused += 1
            log.warning("refused http request", status=access.status, reason=access.reason,
                        path=path)
            extra = ([(b"www-authenticate", b'Bearer realm="stoker"')]
                     if access.status == 401 else None)
            code = ErrorCode.UNAUTHORIZED if access.status in (401, 403) else ErrorCode.BAD_FRAME
            close = _has_body(request)
            if not close:
                await self._body(stream, conn, request)
            await self._error(stream, conn, code, access.reason, access.status, headers=extra,
                              close=close)
            if close:
                raise _Close
            return
        try:
            body = await self._body(stream, conn, request)
        except ApiError as exc:
            # The rest of the body is never read: the connection cannot be reused.
            await self._error(stream, conn, exc.code, exc.message, exc.status, close=True)
            raise _Close from None
        except trio.TooSlowError:
            await self._error(stream, conn, ErrorCode.BAD_FRAME,
                              "the request body did not arrive in time", 408, close=True)
            raise _Close from None
        cors = self._cors(access, config)
        if method == b"OPTIONS":
            await self._preflight(stream, conn, access, config)
            return
        if is_api:
            await self._api(stream, conn, request, path, query, body, access, cors, log)
            return
        if path == "/logout" and method == b"POST":
            # The cookie is deleted from this browser (it is signed, not stored: a copy
            # taken elsewhere stays valid until it expires or the token is rotated).
            expired = f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
            await self._respond(stream, conn, 204, b"", b"text/plain",
                                headers=[(b"set-cookie", expired.encode())])
            return
        if method != b"GET":
            await self._error(stream, conn, ErrorCode.BAD_REQUEST,
                              f"{method.decode()} is not allowed on {path}", 405)
            return
        if path == "/openapi.json":
            await self._respond(stream, conn, 200, self._openapi(), headers=cors)
        elif path == "/metrics":
            await self._metrics(stream, conn)
        elif path == "/login":
            await self._login(stream, conn, query, token)
        else:
            await self._static_file(stream, conn, path)

    async def _metrics(self, stream: trio.abc.Stream, conn: h11.Connection) -> None:
        """Prometheus' text exposition (`[websocket] metrics`; a bearer token, as for the
        API: `authorization` in the scrape config)."""
        body = await self._handlers.render_metrics()
        if body is None:
            await self._error(stream, conn, ErrorCode.NOT_FOUND,
                              "metrics are off: set [websocket] metrics = true", 404)
            return
        await self._respond(stream, conn, 200, body,
                            content_type=b"text/plain; version=0.0.4; charset=utf-8")

    def _cors(self, access: Access, config: WebSocketConfig) -> list[tuple[bytes, bytes]]:
        if access.origin is None or access.origin not in config.allowed_origins:
            return []
        return [(b"access-control-allow-origin", access.origin.encode()),
                (b"vary", b"Origin")]

    async def _preflight(self, stream: trio.abc.Stream, conn: h11.Connection,
                         access: Access, config: WebSocketConfig) -> None:
        cors = self._cors(access, config)
        if not cors:
            await self._error(stream, conn, ErrorCode.UNAUTHORIZED,
                              "cross-origin requests need an origin listed in "
                              "[websocket] allowed_origins", 403)
            return
        cors += [(b"access-control-allow-methods", b"GET, POST"),
                 (b"access-control-allow-headers",
                  b"authorization, content-type, last-event-id, x-stoker-client"),
                 (b"access-control-max-age", b"600")]
        await self._respond(stream, conn, 204, b"", headers=cors)

    async def _api(self, stream: trio.abc.Stream, conn: h11.Connection,
                   request: h11.Request, path: str, query: str, body: bytes,
                   access: Access, cors: list[tuple[bytes, bytes]], log: Log) -> None:
        if path.startswith(CHATS_PREFIX) and path.endswith(EVENTS_SUFFIX):
            chat = urllib.parse.unquote(path[len(CHATS_PREFIX):-len(EVENTS_SUFFIX)])
            if request.method != b"GET":
                await self._error(stream, conn, ErrorCode.BAD_REQUEST,
                                  "the event stream is GET", 405, headers=cors)
                return
            await self._events(stream, conn, request, chat, query, cors, log)
            return
        tag = path[len(API_PREFIX):]
        try:
            if request.method == b"POST":
                message = api.decode_request(tag, body)
            elif request.method == b"GET" and tag in api.READ_ONLY:
                message = api.decode_query(tag, query)
            else:
                await self._error(stream, conn, ErrorCode.BAD_REQUEST,
                                  f"requests are POST {API_PREFIX}<type> (GET for "
                                  f"{', '.join(sorted(api.READ_ONLY))})", 405, headers=cors)
                return
        except ApiError as exc:
            await self._error(stream, conn, exc.code, exc.message, exc.status, headers=cors)
            return
        if access.via == "session":
            client = "web"
        else:
            named = header(request.headers, b"x-stoker-client")
            client = named.decode("latin-1")[:64] if named else "http"
        started = trio.current_time()
        try:
            if self._handlers.is_slow(message):
                # It may wait long (a task's result): cancelled if the client goes away.
                result = await departure.unless_gone(
                    stream, conn, lambda: self._handlers.handle(message, client))
            else:
                result = await self._handlers.handle(message, client)
        except departure.ClientGone:
            log.info("client gone, request cancelled", request=tag,
                     seconds=round(trio.current_time() - started, 3))
            raise _Close from None
        except StokerError as exc:
            await self._error(stream, conn, exc.code, exc.message, detail=exc.detail,
                              headers=cors)
            return
        except trio.TooSlowError:
            await self._error(stream, conn, ErrorCode.AGENT_UNAVAILABLE,
                              "timed out waiting for the agent", headers=cors)
            return
        except Exception as exc:
            log.exception("request failed", request=type(message).__name__)
            await self._error(stream, conn, ErrorCode.INTERNAL,
                              f"internal error ({type(exc).__name__}); see the daemon log",
                              headers=cors)
            return
        await self._respond(stream, conn, 200, api.encode(result), headers=cors)

    async def _events(self, stream: trio.abc.Stream, conn: h11.Connection,
                      request: h11.Request, chat: str, query: str,
                      cors: list[tuple[bytes, bytes]], log: Log) -> None:
        try:
            events, live = sse.open_stream(
                self._handlers.hub, chat, request, query, self._limits(),
                open_streams=len(self.streams), max_streams=self._config().max_connections)
        except ApiError as exc:
            await self._error(stream, conn, exc.code, exc.message, exc.status, headers=cors)
            return
        except StokerError as exc:
            await self._error(stream, conn, exc.code, exc.message, headers=cors)
            return
        self.streams.add(events)
        try:
            reusable = await sse.respond(stream, conn, events, live=live,
                                         headers=[*_SECURITY, *cors], log=log)
        finally:
            events.close()
            self.streams.discard(events)
        if not reusable:
            raise _Close

    async def _login(self, stream: trio.abc.Stream, conn: h11.Connection, query: str,
                     token: str) -> None:
        code = (urllib.parse.parse_qs(query).get("code") or [""])[0]
        now = time.time()
        if not self._codes.redeem(code, token, now):
            self.refused += 1
            page = (b"<!doctype html><title>stoker</title><p>This login link is invalid, "
                    b"expired or already used. Run <code>stoker web</code> for a new one.")
            await self._respond(stream, conn, 401, page, b"text/html; charset=utf-8",
                                headers=_PAGE_SECURITY)
            return
        cookie = (f"{COOKIE}={mint_session(token, now)}; Path=/; HttpOnly; SameSite=Strict; "
                  f"Max-Age={int(SESSION_TTL)}")
        await self._respond(stream, conn, 303, b"", b"text/plain",
                            headers=[(b"location", b"/"), (b"set-cookie", cookie.encode())])

    async def _static_file(self, stream: trio.abc.Stream, conn: h11.Connection,
                           path: str) -> None:
        name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
        if path not in ("/", "/index.html") and (not path.startswith("/static/") or "/" in name
                                                 or name.startswith(".")):
            await self._error(stream, conn, ErrorCode.NOT_FOUND, f"no such page: {path}")
            return
        data = self._static.get(name)
        if data is None:
            file = STATIC / name
            try:
                data = await trio.to_thread.run_sync(file.read_bytes)
            except OSError:
                await self._error(stream, conn, ErrorCode.NOT_FOUND, f"no such file: {path}")
                return
            self._static[name] = data
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind == "application/javascript":
            kind += "; charset=utf-8"
        await self._respond(stream, conn, 200, data, kind.encode(), headers=_PAGE_SECURITY)

    # ------------------------------------------------------------------ shutdown

    def close_all(self, reason: str) -> None:
        """Goodbye to every event stream; idle keep-alive connections are closed."""
        self._closing = True
        for events in list(self.streams):
            events.goodbye(reason)

    def cancel_all(self) -> None:
        for scope in list(self._scopes):
            scope.cancel()


def _has_body(request: h11.Request) -> bool:
    length = header(request.headers, b"content-length")
    if header(request.headers, b"transfer-encoding") is not None:
        return True
    return length is not None and length.strip() not in (b"", b"0")


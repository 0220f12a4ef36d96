"""One HTTP/1.1 request answered by an ASGI application, over h11 and a trio stream: the
small adapter that lets the daemon serve a library written for ASGI (the MCP SDK's
Streamable HTTP transport, daemon/listeners/mcp_http.py) without running an ASGI server of
its own (docs/ARCHITECTURE.md says why not hypercorn).

The caller has read the request head and its whole body (bounded); `respond` gives the
application a `receive` that yields that body once and then waits for the client to go
away (`http.disconnect`), and a `send` that writes `http.response.*` messages as h11
events: a response of one body gets a `content-length`, a streamed one (Server-Sent
Events) is sent chunked, each part as it comes. While the application runs, the stream is
watched (`departure`): the client closing or resetting its end cancels the application
(its response cannot be delivered anyway; one log line says so), while bytes it sends
ahead (a pipelined request) are kept for the next request. Only what the MCP transport
needs: no lifespan protocol, no WebSocket, no trailers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import h11
import trio

from daemon.listeners.http import departure
from daemon.log import Log

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

SEND_TIMEOUT = 30.0
"""A part of a response that cannot be written in this long ends the connection."""
_log = Log("mcp-http")


class ConnectionDone(Exception):
    """The connection cannot carry another request: the client left, a write timed out,
    or the application ended without completing its response."""


def scope_of(request: h11.Request, *, path: str, query: bytes, client: tuple[str, int],
             server: tuple[str, int], extra: dict[str, Any] | None = None) -> Scope:
    """The ASGI `http` scope of `request` (header names are lower case already: h11)."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version.decode("ascii"),
        "method": request.method.decode("ascii"),
        "scheme": "http",
        "path": path,
        "raw_path": request.target.partition(b"?")[0],
        "query_string": query,
        "root_path": "",
        "headers": [(bytes(name), bytes(value)) for name, value in request.headers],
        "client": client,
        "server": server,
        "state": {},
    }
    if extra:
        scope.update(extra)
    return scope


async def respond(app: App, scope: Scope, body: bytes, stream: trio.abc.Stream,
                  conn: h11.Connection) -> None:
    """Run `app` for one request (its `body` read already) and write its response. Raises
    `ConnectionDone` when the connection must close afterwards (from the application's
    exception, if it raised one: a 500 was answered if nothing had been sent yet)."""
    disconnected = trio.Event()
    delivered = False
    start: Message | None = None
    started = False
    ended = False
    written = 0

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def write(data: bytes) -> None:
        with trio.move_on_after(SEND_TIMEOUT) as timer:
            await stream.send_all(data)
        if timer.cancelled_caught:
            disconnected.set()
            raise ConnectionDone("the client does not read its response")

    def h11_send(event: Any) -> bytes:
        """`conn.send`, with what h11 refused explained (the application's response broke
        HTTP framing: say which request and response, for the log)."""
        try:
            return conn.send(event) or b""
        except h11.LocalProtocolError as exc:
            headers = dict((bytes(k).lower(), bytes(v)) for k, v in
                           (start or {}).get("headers", []))
            raise RuntimeError(
                f"{exc}: {scope.get('method')} {scope.get('path')} answered "
                f"{(start or {}).get('status')} with content-length "
                f"{headers.get(b'content-length', b'-').decode('latin-1')}, "
                f"transfer-encoding {headers.get(b'transfer-encoding', b'-').decode('latin-1')}, "
                f"{written} body bytes sent, then {type(event).__name__}"
                f"{f' of {len(event.data)} bytes' if isinstance(event, h11.Data) else ''}"
            ) from exc

    async def send(message: Message) -> None:
        nonlocal start, started, ended, written
        kind = message["type"]
        if kind == "http.response.start":
            if start is not None or started:
                raise RuntimeError("http.response.start sent twice")
            start = message
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if ended:
            raise RuntimeError("http.response.body after the response ended")
        if disconnected.is_set():
            raise ConnectionDone("the client is gone")
        chunk = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        data = b""
        if not started:
            if start is None:
                raise RuntimeError("http.response.body before http.response.start")
            headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", [])]
            if not more and not any(k.lower() == b"content-length" for k, _ in headers):
                headers.append((b"content-length", str(len(chunk)).encode()))
            data += h11_send(h11.Response(status_code=int(start["status"]), headers=headers))
            started = True
        if chunk:
            data += h11_send(h11.Data(data=chunk))
            written += len(chunk)
        if not more:
            data += h11_send(h11.EndOfMessage())
            ended = True
        if data:
            await write(data)

    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as app_scope:

            def client_left() -> None:
                disconnected.set()
                app_scope.cancel()
                if not ended:
                    client = scope.get("client") or ("?", 0)
                    _log.info("client gone, request cancelled", peer=f"{client[0]}:{client[1]}",
                              method=scope.get("method"), path=scope.get("path"))

            # Bytes the client sends ahead while its response is written (a pipelined
            # request) are kept for h11; EOF or an error means it is gone.
            nursery.start_soon(departure.watch, stream, conn, client_left)
            try:
                await app(scope, receive, send)
            except ConnectionDone:
                disconnected.set()
            except Exception as exc:
                failure = exc
            finally:
                nursery.cancel_scope.cancel()
    if disconnected.is_set():
        raise ConnectionDone("the client is gone")
    if failure is not None or not ended:
        if not started:
            await write(_internal_error(conn))
        raise ConnectionDone("the application did not complete its response") from failure


def _internal_error(conn: h11.Connection) -> bytes:
    body = b'{"jsonrpc": "2.0", "id": null, "error": {"code": -32603, "message": ' \
           b'"internal error; see the daemon log"}}'
    data = conn.send(h11.Response(status_code=500, headers=[
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")])) or b""
    data += conn.send(h11.Data(data=body)) or b""
    return data + (conn.send(h11.EndOfMessage()) or b"")

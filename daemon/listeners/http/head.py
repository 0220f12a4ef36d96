"""The first request head of a connection on the WebSocket's port, parsed with h11: the
listener reads it (`read_head`, at most `HEAD_LIMIT` bytes) and hands a WebSocket upgrade
to wsproto, anything else to `server`. A head that cannot be parsed is answered with
`bare_error` and the connection closes."""

from __future__ import annotations

import h11
import trio

from daemon.listeners.http import api
from protocol.errors import ErrorCode

HEAD_LIMIT = 16 * 1024
"""The longest request head (request line and headers) accepted."""


class HeadError(Exception):
    """The first request head was malformed or too long (answered 400 / 431 and closed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_head(stream: trio.abc.ReceiveStream
                    ) -> tuple[h11.Connection, h11.Request, bytes] | None:
    """Read one request head: the parser (positioned after it), the request and every byte
    read (for a WebSocket upgrade, which is handed on with those bytes). None: the peer
    closed before sending a request."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
    raw = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HeadError(exc.error_status_hint, str(exc)) from None
        if event is h11.NEED_DATA:
            data = bytes(await stream.receive_some(65536))
            raw += data
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            return conn, event, bytes(raw)
        return None


def is_websocket(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


def bare_error(status: int, message: str, code: ErrorCode = ErrorCode.BAD_FRAME) -> bytes:
    """A complete response, then close: for a request that could not be parsed, or a
    refused WebSocket handshake."""
    body = api.error_body(code, message)
    return (b"HTTP/1.1 %d Refused\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, len(body), body))

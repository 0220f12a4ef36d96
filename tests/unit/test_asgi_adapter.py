"""The ASGI adapter (daemon/listeners/http/asgi.py) over a real socket pair and h11: a
response that breaks HTTP framing is refused with what it was, for the log."""

from __future__ import annotations

from typing import Any

import h11
import pytest
import trio
import trio.testing

from daemon.listeners.http import asgi


async def _answer(app: asgi.App, method: bytes = b"POST") -> tuple[bytes, BaseException | None]:
    client, server = trio.testing.memory_stream_pair()
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"%s /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % method)
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    scope = asgi.scope_of(request, path="/mcp", query=b"", client=("c", 1), server=("s", 2))
    failure: BaseException | None = None
    try:
        await asgi.respond(app, scope, b"", server, conn)
    except asgi.ConnectionDone as exc:
        failure = exc.__cause__
    await server.aclose()
    received = b""
    while chunk := await client.receive_some(65536):
        received += chunk
    return received, failure


async def test_a_body_longer_than_its_content_length_is_named() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"12345"})

    _, failure = await _answer(app)
    assert isinstance(failure, RuntimeError)
    text = str(failure)
    assert "POST /mcp answered 200 with content-length 2" in text, text
    assert "0 body bytes sent, then Data of 5 bytes" in text, text


@pytest.mark.parametrize("method", [b"POST", b"GET"])
async def test_a_whole_response_gets_its_content_length(method: bytes) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    received, failure = await _answer(app, method)
    assert failure is None
    assert received.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: 5\r\n" in received.lower()
    assert received.endswith(b"\r\n\r\nhello")

"""The daemon's MCP endpoint (daemon/listeners/mcp_http.py) in process, on a real loopback
socket, its router replaced by a scripted one: what a broken client or a broken build does
to it. (The real daemon, real agents and the SDK's client: tests/integration/
test_mcp_http.py.)"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from daemon.config.file import TasksConfig, WebSocketConfig
from daemon.listeners import mcp_http
from daemon.listeners.mcp_http import McpHttpListener
from daemon.mcp import offer
from protocol import messages as m

HTTP_CAPS = {"mcpCapabilities": {"http": True}}


class Router:
    def __init__(self) -> None:
        self.asked: list[Any] = []

    async def handle(self, request: Any, client: str) -> Any:
        self.asked.append((request, client))
        return m.TaskList(tasks=[], agents=["echo"])


@pytest.fixture
async def listener() -> AsyncIterator[tuple[McpHttpListener, Router]]:
    router = Router()
    made = McpHttpListener(router, config=lambda: WebSocketConfig())
    async with trio.open_nursery() as nursery:
        await made.start(nursery)
        yield made, router
        await made.stop()
        nursery.cancel_scope.cancel()


def entry_of(chat: str) -> dict[str, Any]:
    [entry] = offer.mcp_servers(chat, "x", TasksConfig(), agent_capabilities=HTTP_CAPS)
    return entry


async def exchange(url: str, raw: bytes) -> bytes:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        await stream.send_all(raw)
        got = b""
        with trio.fail_after(30):
            while chunk := await stream.receive_some(65536):
                got += chunk
        return got


def post(entry: dict[str, Any], body: dict[str, Any], extra: bytes = b"") -> bytes:
    parts = urllib.parse.urlsplit(entry["url"])
    data = json.dumps(body).encode()
    return (f"POST {parts.path} HTTP/1.1\r\nhost: {parts.netloc}\r\n"
            f"authorization: {entry['headers'][0]['value']}\r\n"
            "content-type: application/json\r\naccept: application/json, text/event-stream\r\n"
            f"connection: close\r\ncontent-length: {len(data)}\r\n").encode() \
        + extra + b"\r\n" + data


CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "list_tasks", "arguments": {}}}


async def test_a_tool_call_is_the_chats_request_with_its_credential(
        listener: tuple[McpHttpListener, Router]) -> None:
    _, router = listener
    entry = entry_of("boss")
    answer = await exchange(entry["url"], post(entry, CALL))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    assert json.loads(body)["result"]["structuredContent"] == {"tasks": []}
    [(request, client)] = router.asked
    assert isinstance(request, m.ListTasks)
    assert (request.parent, request.caller, client) == ("boss", "boss", "mcp:boss")
    assert request.credential == entry["headers"][0]["value"].removeprefix("Bearer ")


async def test_garbage_and_oversized_bodies_end_their_connection_only(
        listener: tuple[McpHttpListener, Router]) -> None:
    _, router = listener
    entry = entry_of("boss")
    garbage = await exchange(entry["url"], b"\x00\x01 nonsense\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400"), garbage
    parts = urllib.parse.urlsplit(entry["url"])
    huge = (f"POST {parts.path} HTTP/1.1\r\nhost: {parts.netloc}\r\n"
            f"authorization: {entry['headers'][0]['value']}\r\n"
            f"content-length: {mcp_http.MAX_BODY + 1}\r\n\r\n").encode()
    too_big = await exchange(entry["url"], huge)
    assert too_big.startswith(b"HTTP/1.1 413"), too_big
    assert router.asked == []
    # The listener still serves.
    fine = await exchange(entry["url"], post(entry, CALL))
    assert fine.startswith(b"HTTP/1.1 200"), fine


async def test_a_server_that_cannot_be_built_falls_back_to_stdio(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(handlers: Any, log: Any) -> Any:
        raise RuntimeError("no SDK today")

    monkeypatch.setattr(mcp_http, "build_app", broken)
    made = McpHttpListener(Router(), config=lambda: WebSocketConfig())
    async with trio.open_nursery() as nursery:
        await made.start(nursery)
        url = made.endpoint()
        assert url is not None
        with trio.fail_after(30):
            while made.endpoint() is not None:
                await trio.sleep(0.01)
        offer.configure("/run/stoker.sock")
        try:
            [entry] = offer.mcp_servers("boss", "x", TasksConfig(),
                                        agent_capabilities=HTTP_CAPS)
        finally:
            offer.configure(None)
        assert "command" in entry
        await made.stop()
    # The tree's nursery was never touched: we got here.


async def test_a_forwarded_request_passes_the_gate_and_a_foreign_host_does_not() -> None:
    """An agent on another computer is offered the computer's end of an SSH forward: its
    requests arrive from 127.0.0.1 with `Host: 127.0.0.1:<port there>`. (The SSH side is
    scripted here; the real forward: tests/integration/test_remote_mcp.py.)"""
    from daemon.execution.local import SpawnError

    asked: list[tuple[str, int]] = []

    async def forward(computer: str, port: int) -> int:
        asked.append((computer, port))
        if computer == "closed":
            raise SpawnError("computer 'closed' refused to forward a port")
        return 4711

    made = McpHttpListener(Router(), config=lambda: WebSocketConfig(), forward=forward)
    async with trio.open_nursery() as nursery:
        await made.start(nursery)
        [entry] = await offer.remote_mcp_servers("boss", "x", "loop")
        assert made.url is not None
        local = urllib.parse.urlsplit(made.url)
        assert asked == [("loop", local.port)]
        assert entry["url"] == "http://127.0.0.1:4711/mcp/boss?agent=x"
        assert entry["headers"] == entry_of("boss")["headers"]
        with pytest.raises(offer.Unavailable, match="refused to forward"):
            await offer.remote_mcp_servers("boss", "x", "closed")
        # What the forward delivers: the daemon's port, the computer's Host.
        here = dict(entry, url=made.url + "/mcp/boss?agent=x")
        forwarded = post(here, CALL).replace(
            f"host: {local.netloc}".encode(), b"host: 127.0.0.1:4711")
        answer = await exchange(made.url, forwarded)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        # A name (DNS rebinding) or a foreign Origin is refused whatever the port.
        rebound = post(here, CALL).replace(
            f"host: {local.netloc}".encode(), b"host: evil.example:4711")
        assert (await exchange(made.url, rebound)).startswith(b"HTTP/1.1 403")
        foreign = post(here, CALL, b"origin: http://evil.example\r\n").replace(
            f"host: {local.netloc}".encode(), b"host: 127.0.0.1:4711")
        assert (await exchange(made.url, foreign)).startswith(b"HTTP/1.1 403")
        await made.stop()
        with pytest.raises(offer.Unavailable):
            await offer.remote_mcp_servers("boss", "x", "loop")
        nursery.cancel_scope.cancel()

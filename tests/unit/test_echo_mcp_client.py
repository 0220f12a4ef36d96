"""The echo agent's Streamable HTTP MCP client (daemon/echo_agent/mcp_client.py) against a
scripted server (the standard library's): answers as one JSON object and as an SSE stream
(with a comment and a notification before the answer), the session id and protocol version
sent back, the entry's headers on every request, an HTTP refusal as a clear error, and a
cancel that closes the waiting call's connection."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from daemon.echo_agent.mcp_client import HttpMcpServer, McpError, open_server


class Script:
    def __init__(self) -> None:
        self.mode = "json"
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.hang = threading.Event()
        self.gone = threading.Event()


def handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def reply(self, status: int, body: bytes, kind: str,
                  extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            message = json.loads(self.rfile.read(int(self.headers["content-length"])))
            script.seen.append((message["method"], {k.lower(): v for k, v in
                                                    self.headers.items()}))
            if self.headers.get("authorization") != "Bearer sesame":
                self.reply(401, b'{"code": "unauthorized", "message": "wrong"}',
                           "application/json")
                return
            if "id" not in message:
                self.reply(202, b"", "application/json")
                return
            if message["method"] == "initialize":
                result: dict[str, Any] = {"protocolVersion": "2025-06-18", "capabilities": {},
                                          "serverInfo": {"name": "s", "version": "1"}}
            else:
                if script.hang.is_set():
                    self.connection.settimeout(30)
                    if not self.rfile.read(1):
                        script.gone.set()
                    return
                result = {"content": [{"type": "text", "text": "answered"}],
                          "isError": message["params"]["name"] == "bad"}
            answer = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})
            session = {"mcp-session-id": "s-1"}
            if script.mode == "json" or message["method"] == "initialize":
                self.reply(200, answer.encode(), "application/json", session)
                return
            stream = (": ping\n\n"
                      'data: {"jsonrpc": "2.0", "method": "notifications/message", '
                      '"params": {}}\n\n'
                      f"event: message\ndata: {answer}\n\n").encode()
            self.reply(200, stream, "text/event-stream", session)

    return Handler


@pytest.fixture
def served() -> Iterator[tuple[Script, str]]:
    script = Script()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(script))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield script, f"http://127.0.0.1:{server.server_address[1]}/mcp/boss"
    server.shutdown()
    server.server_close()


def entry(url: str, token: str = "sesame") -> dict[str, Any]:
    return {"type": "http", "name": "stoker", "url": url,
            "headers": [{"name": "Authorization", "value": f"Bearer {token}"}]}


@pytest.mark.parametrize("mode", ["json", "sse"])
def test_json_and_sse_answers(served: tuple[Script, str], mode: str) -> None:
    script, url = served
    script.mode = mode
    client = open_server(entry(url), "/")
    assert isinstance(client, HttpMcpServer)
    never = threading.Event()
    assert client.call("list_tasks", {}, never) == (False, "answered")
    assert client.call("bad", {}, never) == (True, "answered")
    methods = [method for method, _ in script.seen]
    assert methods == ["initialize", "notifications/initialized", "tools/call", "tools/call"]
    for method, headers in script.seen:
        assert headers["authorization"] == "Bearer sesame"
        assert "text/event-stream" in headers["accept"]
        if method != "initialize":
            assert headers["mcp-protocol-version"] == "2025-06-18"
    assert script.seen[-1][1]["mcp-session-id"] == "s-1"


def test_a_refusal_is_a_clear_error(served: tuple[Script, str]) -> None:
    _, url = served
    with pytest.raises(McpError, match=r"initialize failed: HTTP 401: .*wrong"):
        open_server(entry(url, "forged"), "/").call("list_tasks", {}, threading.Event())


def test_a_cancel_closes_the_waiting_call(served: tuple[Script, str]) -> None:
    script, url = served
    client = open_server(entry(url), "/")
    client.call("list_tasks", {}, threading.Event())
    script.hang.set()
    cancel = threading.Event()
    timer = threading.Timer(0.2, cancel.set)
    timer.start()
    assert client.call("list_tasks", {}, cancel) == (True, "cancelled")
    assert script.gone.wait(10)

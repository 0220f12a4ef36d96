"""The stdio <-> Streamable HTTP bridge a remote agent taking stdio is offered
(daemon/ssh/mcp_bridge.py), run here as it runs there (`python -c <its text> URL`, the
credential in its environment): against the daemon's real MCP endpoint, and against a small
stand-in server for what the daemon does not send (an SSE answer, a session id) or does only
at its edges (a kept-alive connection closed when idle, or after reading a request)."""

from __future__ import annotations

import http.server
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import trio

from daemon.ssh.mcp_stdio import stdio_entry
from tests.integration.test_tasks import mcp
from tests.support.acp_tee import read_trace, tee_command, traces
from tests.support.harness import DaemonFactory, open_chat, short_tmpdir

ECHO = [sys.executable, "-m", "daemon.echo_agent"]
DEADLINE = 60.0
"""For an answer that needs the daemon's tools (the first imports the MCP SDK)."""


class BridgeProcess:
    """The bridge for an `mcpServers` stdio entry, its stdout read line by line."""

    def __init__(self, entry: dict[str, Any]) -> None:
        env = {**os.environ, **{e["name"]: e["value"] for e in entry["env"]}}
        self.proc = subprocess.Popen([sys.executable, *entry["args"]], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def send(self, message: dict[str, Any] | bytes) -> None:
        assert self.proc.stdin is not None
        line = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    async def receive(self, timeout: float = DEADLINE) -> dict[str, Any]:
        message = await trio.to_thread.run_sync(self.lines.get, True, timeout)
        assert message is not None, self.stderr()
        return message

    async def request(self, rid: int, method: str, params: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}})
        answer = await self.receive()
        assert answer["id"] == rid, answer
        return answer

    async def close(self) -> int:
        """EOF on stdin: the bridge exits (its status)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return await trio.to_thread.run_sync(self.proc.wait, DEADLINE)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode()


def initialize(rid: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}}


def tool_json(answer: dict[str, Any]) -> Any:
    assert not answer["result"].get("isError"), answer
    return json.loads(answer["result"]["content"][0]["text"])


async def test_the_bridge_speaks_stdio_to_the_daemons_http_endpoint(
        daemon_factory: DaemonFactory) -> None:
    base = short_tmpdir()
    trace_dir = base / "traces"
    trace_dir.mkdir()
    parent = tee_command(trace_dir / "p", [*ECHO, "--mcp-http"])
    daemon = daemon_factory(base=base, config=f"[agents.parent]\ncommand = "
                                              f"{json.dumps(parent)}\n")
    daemon.start()
    async with daemon.client() as client:
        chat = await open_chat(client, "boss", agent="parent", cwd=daemon.work)
        await mcp(client, chat.chat, "list_tasks")  # the endpoint is bound and ready
        [entry] = [e for stem in traces(trace_dir) for msg in read_trace(stem)[0]
                   if msg.get("method") == "session/new"
                   for e in msg["params"]["mcpServers"] if e["name"] == "stoker"]
        stdio = stdio_entry(entry)
        assert stdio["env"][0]["value"] not in json.dumps(stdio["args"])
        bridge = BridgeProcess(stdio)
        init = await bridge.request(1, "initialize", initialize(1)["params"])
        assert init["result"]["serverInfo"]["name"] == "stoker", init
        bridge.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        tools = await bridge.request(2, "tools/list")
        assert "spawn_task" in [t["name"] for t in tools["result"]["tools"]]
        spawned = tool_json(await bridge.request(3, "tools/call", {
            "name": "spawn_task", "arguments": {"agent": "echo", "prompt": "/sleep 60000"}}))
        # A waiting call holds up nothing; cancelled, it is never answered.
        bridge.send({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
            "name": "task_result", "arguments": {"id": spawned["id"], "wait_seconds": 60}}})
        assert (await bridge.request(5, "ping"))["result"] == {}
        bridge.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                     "params": {"requestId": 4, "reason": "test"}})
        listed = tool_json(await bridge.request(6, "tools/call", {
            "name": "list_tasks", "arguments": {}}))
        assert [t["id"] for t in listed["tasks"]] == [spawned["id"]]
        bridge.send(b"not json")
        assert (await bridge.receive())["error"]["code"] == -32700
        assert await bridge.close() == 0
        assert await trio.to_thread.run_sync(bridge.lines.get, True, DEADLINE) is None, \
            "an answer to the cancelled request 4"

        # Another chat's credential: every request is answered with the endpoint's refusal.
        forged = dict(stdio, env=[{"name": "STOKER_MCP_CREDENTIAL", "value": "0" * 64}])
        refused = BridgeProcess(forged)
        answer = await refused.request(1, "initialize", initialize(1)["params"])
        assert "HTTP 401" in answer["error"]["message"], answer
        assert await refused.close() == 0
        assert "HTTP 401" in refused.stderr()


class StandIn(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1. Answers `initialize` with an SSE stream (a server notification, then the
    answer) and a session id it wants back; other requests with JSON on a kept-alive
    connection; a notification with 202, then drops that connection without saying so (as
    a server whose keep-alive timed out); a call of the tool `drop` it counts (it ran), then
    drops the connection without an answer (as a server stopping mid-call)."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str | None, str | None, int]] = []
    """(method, Mcp-Session-Id, Authorization, client port) of every request."""

    def do_POST(self) -> None:
        message = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StandIn.seen.append((message["method"], self.headers.get("Mcp-Session-Id"),
                             self.headers.get("Authorization"), self.client_address[1]))
        if message["method"] == "tools/call" and message["params"]["name"] == "drop":
            self.close_connection = True
            return
        if "id" not in message:
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.close_connection = True
            return
        answer = {"jsonrpc": "2.0", "id": message["id"], "result": {"echo": message}}
        if message["method"] == "initialize":
            events = [{"jsonrpc": "2.0", "method": "notifications/message", "params": {}},
                      answer]
            body = "".join(f"event: message\ndata: {json.dumps(e)}\n\n"
                           for e in events).encode()
            kind = "text/event-stream"
        else:
            body, kind = json.dumps(answer).encode(), "application/json"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Mcp-Session-Id", "s-1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stand_in() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StandIn.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}/mcp/x"
    server.shutdown()
    server.server_close()


async def closed_by_the_server(bridge: BridgeProcess, url: str) -> None:
    """Wait until a connection of the bridge to `url`'s port got the server's FIN (it is in
    CLOSE_WAIT): the bridge can see it."""
    port = int(url.split(":")[2].split("/")[0])
    with trio.fail_after(DEADLINE):
        while not any(c.status == psutil.CONN_CLOSE_WAIT and c.raddr and c.raddr[1] == port
                      for c in psutil.Process(bridge.proc.pid).net_connections("tcp")):
            await trio.sleep(0.01)


def stand_in_bridge(url: str) -> BridgeProcess:
    return BridgeProcess(stdio_entry({"name": "stoker", "url": url, "headers": [
        {"name": "Authorization", "value": "Bearer secret"}]}))


async def test_the_bridge_reads_sse_keeps_the_session_and_leaves_a_dropped_connection(
        stand_in: str) -> None:
    bridge = stand_in_bridge(stand_in)
    bridge.send(initialize(1))
    assert (await bridge.receive())["method"] == "notifications/message"
    assert (await bridge.receive())["result"]["echo"]["method"] == "initialize"
    bridge.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    await closed_by_the_server(bridge, stand_in)
    # The first ping sees the kept-alive connection closed and goes on a new one (never on
    # the closed one: a request sent there would fail, and could not be sent again).
    for rid in (2, 3):
        assert (await bridge.request(rid, "ping"))["result"]["echo"]["id"] == rid
    assert await bridge.close() == 0
    seen = StandIn.seen
    assert [s[:3] for s in seen] == [
        ("initialize", None, "Bearer secret"),
        ("notifications/initialized", "s-1", "Bearer secret"),
        ("ping", "s-1", "Bearer secret"), ("ping", "s-1", "Bearer secret")]
    assert seen[2][3] == seen[3][3], "the second ping did not reuse the connection"
    assert seen[1][3] != seen[2][3]
    assert "before the answer" not in bridge.stderr()


async def test_a_call_whose_connection_closes_after_it_was_read_runs_once(
        stand_in: str) -> None:
    bridge = stand_in_bridge(stand_in)
    bridge.send(initialize(1))
    await bridge.receive()
    assert "echo" in (await bridge.receive())["result"]
    assert (await bridge.request(2, "ping"))["result"]["echo"]["id"] == 2
    # On the connection ping 2 left kept alive: read (it ran), then dropped unanswered.
    dropped = await bridge.request(3, "tools/call", {"name": "drop", "arguments": {}})
    ran = [s for s in StandIn.seen if s[0] == "tools/call"]
    assert len(ran) == 1, f"the call ran {len(ran)} times"
    message = dropped["error"]["message"]
    assert "failed before the answer" in message, dropped
    assert "it may have run, so it is not sent again" in message
    assert (await bridge.request(4, "ping"))["result"]["echo"]["id"] == 4  # a new connection
    assert await bridge.close() == 0
    seen = StandIn.seen
    assert [s[0] for s in seen] == ["initialize", "ping", "tools/call", "ping"], seen
    assert seen[1][3] == seen[2][3], "the call did not go on the kept-alive connection"
    assert seen[2][3] != seen[3][3]
    assert "failed before the answer" in bridge.stderr()


async def test_the_bridge_without_a_credential_says_so() -> None:
    bridge = BridgeProcess({"args": ["-c", stdio_entry({"name": "s", "url": "http://x/"})[
        "args"][1], "http://127.0.0.1:1/mcp/x"], "env": []})
    assert await trio.to_thread.run_sync(bridge.proc.wait, DEADLINE) == 2
    assert "STOKER_MCP_CREDENTIAL" in bridge.stderr()

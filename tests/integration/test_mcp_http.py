"""Issue 17, the HTTP transport: Stoker's MCP server served by the daemon itself to an agent
that advertises `mcpCapabilities.http` (daemon/listeners/mcp_http.py).

The real daemon; a parent echo agent started with `--mcp-http` under the ACP recorder
(tests/support/acp_tee.py), so the test reads the `mcpServers` entry the daemon sent and
validates it against the official ACP schema; real echo tasks. The agent calls the tools with
its standard-library client (`/mcp TOOL JSON`); the MCP SDK's own Streamable HTTP client is
the external client; hostile requests are plain HTTP."""

from __future__ import annotations

import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import trio

from protocol import messages as m
from tests.integration.test_tasks import delegate_three_tasks, mcp, turns_end_once
from tests.support.acp_tee import ClientSchema, read_trace, tee_command, traces
from tests.support.harness import (
    DaemonFactory,
    DaemonProcess,
    agent_pid,
    open_chat,
    replay,
    short_tmpdir,
    wait_turn_end,
)

ECHO = [sys.executable, "-m", "daemon.echo_agent"]


class Rig:
    def __init__(self, daemon: DaemonProcess, trace_dir: Path) -> None:
        self.daemon = daemon
        self.trace_dir = trace_dir

    def sent(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for stem in traces(self.trace_dir):
            out.extend(read_trace(stem)[0])
        return out

    def entries(self) -> list[dict[str, Any]]:
        """Stoker's `mcpServers` entries of every session setup the daemon sent."""
        found = []
        for msg in self.sent():
            if msg.get("method") in ("session/new", "session/load", "session/resume"):
                for entry in msg["params"].get("mcpServers", []):
                    if entry.get("name") == "stoker":
                        found.append(entry)
        return found

    def entry_for(self, chat: str) -> dict[str, Any]:
        for entry in reversed(self.entries()):
            path = urllib.parse.urlsplit(entry.get("url", "")).path
            if path.endswith("/mcp/" + urllib.parse.quote(chat, safe="")):
                return dict(entry)
        raise AssertionError(f"no HTTP entry for chat {chat!r}: {self.entries()}")

    def validate(self) -> None:
        schema = ClientSchema()
        for stem in traces(self.trace_dir):
            schema.validate(*read_trace(stem))


@pytest.fixture
def rig(daemon_factory: DaemonFactory) -> Rig:
    base = short_tmpdir()
    trace_dir = base / "traces"
    trace_dir.mkdir()
    parent = tee_command(trace_dir / "p", [*ECHO, "--mcp-http"])
    config = (f"[agents.parent]\ncommand = {json.dumps(parent)}\n"
              f"[agents.plain]\ncommand = {json.dumps(tee_command(trace_dir / 's', ECHO))}\n"
              "[tasks]\nmax_running = 2\n")
    daemon = daemon_factory(base=base, config=config)
    daemon.start()
    return Rig(daemon, trace_dir)


def bearer(entry: dict[str, Any]) -> str:
    [header] = [h for h in entry["headers"] if h["name"] == "Authorization"]
    return str(header["value"])


def stoker_mcp_processes(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True)
            if "daemon.cli" in p.cmdline() and "mcp" in p.cmdline()]


def listening(pid: int) -> list[tuple[str, int]]:
    return [(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN]


async def test_an_echo_parent_delegates_over_http_without_a_stoker_mcp_process(
        rig: Rig) -> None:
    daemon = rig.daemon
    async with daemon.client() as client:
        parent = await open_chat(client, "boss", agent="parent", cwd=daemon.work)
        tasks = await delegate_three_tasks(client, parent.chat)
        # The session got the HTTP entry (schema-valid), and no `stoker mcp` runs for it.
        entry = rig.entry_for(parent.chat)
        assert entry["type"] == "http"
        assert entry["url"].startswith("http://127.0.0.1:")
        assert bearer(entry).startswith("Bearer ")
        assert not any("command" in e for e in rig.entries())
        rig.validate()
        assert stoker_mcp_processes(await agent_pid(client, parent.chat)) == []
        assert stoker_mcp_processes(daemon.pid) == []
        # The listener is on loopback only.
        port = urllib.parse.urlsplit(entry["url"]).port
        assert ("127.0.0.1", port) in listening(daemon.pid)
        assert all(ip == "127.0.0.1" for ip, p in listening(daemon.pid) if p == port)
        # `status` names the endpoint, as `stoker status` prints it.
        st: m.StatusResult = await client.request(m.GetStatus(id=0))
        assert st.mcp_http == f"http://127.0.0.1:{port}"
        printed = daemon.cli("status").stdout
        assert f"mcp (http):     http://127.0.0.1:{port}" in printed, printed
        # Every turn on every channel ended once.
        for chat in (parent.chat, *(t.task for t in tasks.tasks)):
            turns_end_once(await replay(client, chat))


async def test_an_agent_that_does_not_advertise_http_gets_stdio(rig: Rig) -> None:
    daemon = rig.daemon
    async with daemon.client() as client:
        chat = await open_chat(client, "plainly", agent="plain", cwd=daemon.work)
        listed = await mcp(client, chat.chat, "list_tasks")
        assert listed == {"tasks": []}
        assert len(stoker_mcp_processes(await agent_pid(client, chat.chat))) == 1
        [entry] = rig.entries()
        assert entry["args"][-2:] == ["--chat", "plainly"]
        rig.validate()
        # Nothing bound the HTTP endpoint: `status` has none to show.
        st: m.StatusResult = await client.request(m.GetStatus(id=0))
        assert st.mcp_http is None


async def post(url: str, body: Any, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(url, json=body, headers={
            "accept": "application/json, text/event-stream", **headers})


SPAWN = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
         "params": {"name": "spawn_task", "arguments": {"agent": "echo", "prompt": "hi"}}}


async def test_a_forged_or_other_chats_bearer_a_bad_host_or_origin_is_refused(
        rig: Rig) -> None:
    daemon = rig.daemon
    async with daemon.client() as client:
        mine = await open_chat(client, "mine", agent="parent", cwd=daemon.work)
        other = await open_chat(client, "other", agent="parent", cwd=daemon.work)
        await mcp(client, mine.chat, "list_tasks")
        await mcp(client, other.chat, "list_tasks")
        url, theirs = rig.entry_for(mine.chat)["url"], bearer(rig.entry_for(other.chat))
        own = bearer(rig.entry_for(mine.chat))
        for authorization in (theirs, "Bearer " + "0" * 64, ""):
            headers = {"authorization": authorization} if authorization else {}
            answer = await post(url, SPAWN, **headers)
            assert answer.status_code == 401, answer.text
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert answer.json()["code"] == "unauthorized"
        # Two credentials (one of them right) are one too many.
        async with httpx.AsyncClient() as http:
            doubled = await http.post(url, json=SPAWN, headers=[
                ("authorization", own), ("authorization", theirs),
                ("accept", "application/json, text/event-stream")])
        assert doubled.status_code == 401
        # DNS rebinding and foreign pages: refused before the credential is looked at.
        port = urllib.parse.urlsplit(url).port
        rebound = await post(url, SPAWN, authorization=own, host=f"evil.example:{port}")
        assert rebound.status_code == 403, rebound.text
        foreign = await post(url, SPAWN, authorization=own, origin="http://evil.example")
        assert foreign.status_code == 403, foreign.text
        elsewhere = await post(url.rsplit("/", 1)[0] + "/x/mine", SPAWN, authorization=own)
        assert elsewhere.status_code == 404
        listed: m.TaskList = await client.request(m.ListTasks(id=0))
        assert listed.tasks == []
        # The right credential, from a page of the daemon's own origin, works.
        ok = await post(url, SPAWN, authorization=own, origin=f"http://127.0.0.1:{port}")
        assert ok.status_code == 200, ok.text
        listed = await client.request(m.ListTasks(id=0))
        assert [t.parent for t in listed.tasks] == [mine.chat]


async def test_the_sdks_streamable_http_client_sees_the_stdio_servers_tools(rig: Rig) -> None:
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    from daemon.mcp.server import server
    from daemon.mcp.tools import StokerTools, socket_ask

    daemon = rig.daemon
    async with daemon.client() as client:
        chat = await open_chat(client, "sdk", agent="parent", cwd=daemon.work)
        await mcp(client, chat.chat, "list_tasks")
        entry = rig.entry_for(chat.chat)
        headers = {h["name"]: h["value"] for h in entry["headers"]}
        stdio = server(lambda: StokerTools(socket_ask("/nonexistent", "sdk"), "sdk", None))
        expected = {t.name: (t.description, t.input_schema) for t in await stdio.list_tools()}
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http, \
                streamable_http_client(entry["url"], http_client=http) as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            assert {t.name: (t.description, t.input_schema) for t in tools} == expected
            spawned = await session.call_tool("spawn_task", {"agent": "echo",
                                                             "prompt": "/sleep 10"})
            assert not spawned.is_error, spawned
            task = json.loads(spawned.content[0].text)["id"]  # type: ignore[union-attr]
            done = await session.call_tool("task_result", {"id": task, "wait_seconds": 60})
            assert json.loads(done.content[0].text)["result"] == "slept 10"  # type: ignore[union-attr]
            missing = await session.call_tool("task_status", {"id": "nope"})
            assert missing.is_error
            assert "no task 'nope' of chat 'sdk'" in missing.content[0].text  # type: ignore[union-attr]


def connections_on(pid: int, port: int) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections("tcp")
               if c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


async def test_a_cancelled_turn_closes_its_waiting_http_call(rig: Rig) -> None:
    """The echo agent closes the connection of a call its turn's cancel interrupted; the
    daemon sees the client gone and stops the call (no connection stays open)."""
    daemon = rig.daemon
    async with daemon.client() as client:
        parent = await open_chat(client, "boss", agent="parent", cwd=daemon.work)
        spawned = await mcp(client, parent.chat, "spawn_task",
                            {"agent": "echo", "prompt": "/sleep 60000"})
        port = urllib.parse.urlsplit(rig.entry_for(parent.chat)["url"]).port
        assert port is not None
        waiting: m.PromptAccepted = await client.request(m.Prompt(
            id=0, chat=parent.chat,
            text=f'/mcp task_result {{"id": "{spawned["id"]}", "wait_seconds": 60}}'))
        with trio.fail_after(30):
            while connections_on(daemon.pid, port) == 0:
                await trio.sleep(0.05)
        await client.request(m.Cancel(id=0, chat=parent.chat, turn=waiting.turn))
        ended = await wait_turn_end(client, parent.chat, waiting.turn)
        assert ended.stop_reason == "cancelled"
        with trio.fail_after(30):
            while connections_on(daemon.pid, port):
                await trio.sleep(0.05)
        info: m.TaskInfo = await client.request(m.GetTask(id=0, task=spawned["id"], wait=20))
        assert (info.state, info.stop_reason) == ("cancelled", "cancelled")


async def test_sigterm_with_an_http_call_in_flight_stops_cleanly(rig: Rig) -> None:
    """The endpoint closes first (a door); the waiting tool call fails, the pool ends the
    parent's turn, the daemon exits 0 and the turn ended once (read after a restart)."""
    daemon = rig.daemon
    async with daemon.client() as client:
        parent = await open_chat(client, "boss", agent="parent", cwd=daemon.work)
        spawned = await mcp(client, parent.chat, "spawn_task",
                            {"agent": "echo", "prompt": "/sleep 60000"})
        port = urllib.parse.urlsplit(rig.entry_for(parent.chat)["url"]).port
        assert port is not None
        await client.request(m.Prompt(
            id=0, chat=parent.chat,
            text=f'/mcp task_result {{"id": "{spawned["id"]}", "wait_seconds": 60}}'))
        with trio.fail_after(30):
            while connections_on(daemon.pid, port) == 0:
                await trio.sleep(0.05)
    assert daemon.stop() == 0
    daemon.start()
    async with daemon.client() as client:
        turns_end_once(await replay(client, parent.chat))

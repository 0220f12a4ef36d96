"""Issue 17 end to end: the real `qwen --acp` delegates to the echo agent through Stoker's MCP
server, which the daemon offered it on session/new. The scripted LLM (loopback) calls
`spawn_task`, then `task_result` with the id the first call returned, then answers with the
task's result. Both transports: qwen advertises `mcpCapabilities.http`, so by default it
calls the daemon's HTTP endpoint; with `tasks.mcp_transport = "stdio"` it runs `stoker mcp`,
which asks the daemon over its socket. Every ACP message the daemon sent qwen is
schema-checked when the test ends (the rig)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

from protocol import messages as m
from tests.e2e.agents import QWEN_ARGS, QWEN_SETTINGS, QWEN_VERSION, Installed, qwen, qwen_env
from tests.e2e.fake_llm import JSON, Dynamic, FakeLLM, Text, ToolCall
from tests.e2e.rig import (
    TracedDaemon,
    finish_rig,
    installed_or_skip,
    open_subscribed,
    rig_dirs,
    run_turn,
    start_traced,
)
from tests.support.harness import DaemonFactory

pytestmark = pytest.mark.e2e

AGENT = "qwen"
DELEGATED = "the helper checked forty two files"


@pytest.fixture(scope="module")
def qwen_install() -> Installed:
    return installed_or_skip(qwen(QWEN_VERSION))


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM(default="(unscripted reply)") as server:
        yield server


@pytest.fixture(params=["http", "stdio"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rig(daemon_factory: DaemonFactory, qwen_install: Installed, llm: FakeLLM,
        transport: str) -> Iterator[TracedDaemon]:
    assert qwen_install.binary is not None
    daemon = daemon_factory()
    trace_dir, home, workspace = rig_dirs(daemon)
    (home / ".qwen").mkdir()
    (home / ".qwen" / "settings.json").write_text(json.dumps(QWEN_SETTINGS, indent=2))
    env = {**qwen_env(llm.base_url, home), "DEBUG": "1"}  # for wait_mcp_discovered
    start_traced(daemon, trace_dir, AGENT, [str(qwen_install.binary), *QWEN_ARGS], env,
                 extra=f'[tasks]\nmcp_transport = "{transport}"\n')
    made = TracedDaemon(daemon, trace_dir, workspace)
    yield made
    finish_rig(made, llm.errors)


def call_stoker(body: JSON, tool: str, arguments: JSON) -> ToolCall:
    """A call of Stoker's `tool` as the agent offers it: directly when it lists the tool
    (under a name ending in the tool's), else through its deferred-tool bridge (qwen lists
    MCP tools as `mcp__SERVER__TOOL` behind `tool_call {name, arguments}`)."""
    names = [str((t.get("function") or {}).get("name", "")) for t in body.get("tools", [])]
    for name in names:
        if name == tool or name.endswith(f"_{tool}"):
            return ToolCall(name, arguments)
    if "tool_call" in names:
        return ToolCall("tool_call", {"name": f"mcp__stoker__{tool}", "arguments": arguments})
    raise AssertionError(f"no way to call {tool} among {names}")


APPLIED = re.compile(r"/stoker\] applied \d+ tools")


async def wait_mcp_discovered(home: Path, timeout: float = 90.0) -> None:
    """qwen starts the MCP servers of a session in the background after session/new and
    registers their tools only once each answered `tools/list` (seconds later: Stoker's
    server imports the MCP SDK first); a prompt sent before that finds no Stoker tool. The
    condition is qwen's own debug log (DEBUG=1) saying it applied the server's tools."""
    with trio.fail_after(timeout):
        while True:
            for log in (home / ".qwen" / "debug").glob("*.txt"):
                try:
                    # (As many tools as the server lists: 9 with the workflow tools.)
                    if APPLIED.search(log.read_text(errors="replace")):
                        return
                except OSError:
                    continue
            await trio.sleep(0.1)


def last_tool_output(body: JSON) -> str:
    """The content of the last tool message (the previous call's result) in the request."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "tool":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content)
    raise AssertionError("no tool result in the request")


def json_in(text: str) -> dict[str, Any]:
    """The first JSON object in a tool's output (an agent may wrap it in prose, or show the
    structured content after the text)."""
    start = text.find("{")
    assert start >= 0, text
    data, _ = json.JSONDecoder().raw_decode(text[start:])
    assert isinstance(data, dict), text
    return data


async def test_qwen_delegates_to_echo_through_stokers_mcp_server(
        rig: TracedDaemon, llm: FakeLLM, transport: str) -> None:
    seen: dict[str, Any] = {}

    def step(body: JSON) -> Text | ToolCall:
        """The model's next move, read from the conversation so far: spawn, then collect
        the result with the id the spawn returned, then answer with it. (Decided from the
        request, not by position: qwen may make a side request in between.)"""
        last = (body.get("messages") or [{}])[-1]
        if last.get("role") != "tool":
            if "spawned" in seen:
                return Text("(not the turn's request)")
            seen["spawned"] = {}
            return call_stoker(body, "spawn_task", {
                "agent": "echo", "prompt": DELEGATED, "title": "count files"})
        output = json_in(last_tool_output(body))
        if "result" not in output:
            seen["spawned"] = output
            return call_stoker(body, "task_result", {"id": output["id"], "wait_seconds": 60})
        seen["result"] = output
        return Text(f"My helper reports: {output['result']}.")

    llm.script(*[Dynamic(step) for _ in range(6)])
    async with rig.daemon.client("e2e") as client:
        info = await open_subscribed(client, "lead", AGENT, Path(rig.workspace),
                                     policy="allow")
        await client.request(m.Warm(id=0, chat=info.chat))
        await wait_mcp_discovered(rig.workspace.parent / "home")
        done = await run_turn(client, info.chat, "Delegate the file count to a helper.",
                              timeout=180)
        assert done.ended.stop_reason == "end_turn", done.ended
        assert done.text.endswith(f"My helper reports: {DELEGATED}."), done.text
        assert seen["spawned"]["state"] in ("queued", "running")
        assert seen["result"]["state"] == "done"
        assert seen["result"]["stop_reason"] == "end_turn"
        listed: m.TaskList = await client.request(m.ListTasks(id=0, parent=info.chat))
        [task] = listed.tasks
        assert (task.agent, task.origin, task.title, task.result) == (
            "echo", "agent", "count files", DELEGATED)
        stoker_mcp = [p for p in psutil.Process(rig.daemon.pid).children(recursive=True)
                      if "daemon.cli" in p.cmdline() and "mcp" in p.cmdline()]
    # The daemon offered the server on session/new: over stdio with the credential in env,
    # not argv; over HTTP with it as the bearer, and no `stoker mcp` process.
    [generation] = rig.generations(AGENT)
    setup = next(message for message in generation.sent
                 if message.get("method") == "session/new")
    [server] = [s for s in setup["params"]["mcpServers"] if s["name"] == "stoker"]
    if transport == "http":
        assert server["type"] == "http"
        assert server["url"].startswith("http://127.0.0.1:")
        assert server["url"].endswith(f"/mcp/{info.chat}?agent={AGENT}")
        [auth] = server["headers"]
        assert auth["name"] == "Authorization"
        assert auth["value"].startswith("Bearer ")
        assert stoker_mcp == []
        return
    assert server["args"][-2:] == ["--chat", info.chat]
    assert "STOKER_MCP_CREDENTIAL" in [e["name"] for e in server["env"]]
    assert not any(len(a) == 64 for a in server["args"])
    assert len(stoker_mcp) == 1

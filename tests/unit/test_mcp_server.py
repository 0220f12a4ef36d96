"""Stoker's MCP server as a model sees it: the seven tools, described, with the arguments the
issue names (daemon/mcp/server.py). Built without a daemon: listing tools asks nothing."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from mcp import Client
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver.exceptions import ToolError

from daemon.mcp.server import server
from daemon.mcp.stdio import HandshakeWatch
from daemon.mcp.tools import StokerTools, socket_ask


async def test_the_tools_a_model_sees() -> None:
    app = server(lambda: StokerTools(socket_ask("/nonexistent.sock", "boss"), "boss",
                                     "credential"))
    tools = {tool.name: tool for tool in await app.list_tools()}
    assert set(tools) == {"spawn_task", "task_status", "task_result", "send_to_task",
                          "list_tasks", "cancel_task", "list_agents", "run_workflow",
                          "workflow_result"}
    required = {name: set(tool.input_schema.get("required", [])) for name, tool in
                tools.items()}
    assert required == {"spawn_task": {"agent", "prompt"}, "task_status": {"id"},
                        "task_result": {"id"}, "send_to_task": {"id", "prompt"},
                        "list_tasks": set(), "cancel_task": {"id"}, "list_agents": set(),
                        "run_workflow": {"workflow"}, "workflow_result": {"run"}}
    optional = set(tools["spawn_task"].input_schema["properties"]) - required["spawn_task"]
    assert optional == {"title", "workspace"}
    assert "wait_seconds" in tools["task_result"].input_schema["properties"]
    for tool in tools.values():
        assert len(tool.description or "") > 40, tool.name
        for name, prop in tool.input_schema.get("properties", {}).items():
            assert prop.get("description"), (tool.name, name)


async def test_an_unreachable_daemon_is_a_tool_error_not_a_crash() -> None:
    # A ToolError is what the SDK answers as `isError: true` with this text for the model.
    app = server(lambda: StokerTools(socket_ask("/nonexistent.sock", "boss"), "boss",
                                     "credential"))
    with pytest.raises(ToolError, match="Stoker is not reachable: the daemon is not running"):
        await app.call_tool("list_tasks", {})


async def test_the_stdio_server_notes_the_end_of_the_handshake() -> None:
    """`stoker mcp`'s middleware (daemon/mcp/stdio.py `HandshakeWatch`) on the SDK's own
    in-process client, handshake era: `initialize` leaves it unset, the next message sets it,
    and every message still reaches the server."""
    app = server(lambda: StokerTools(socket_ask("/nonexistent.sock", "boss"), "boss",
                                     "credential"))
    past = trio.Event()
    seen: list[tuple[str, bool]] = []

    async def before(ctx: ServerRequestContext[Any, Any], call_next: CallNext
                     ) -> HandlerResult:
        seen.append((ctx.method, past.is_set()))
        return await call_next(ctx)

    app.middleware.extend([before, HandshakeWatch(past)])
    async with Client(app, mode="legacy") as client:
        assert len((await client.list_tools()).tools) == 9
    assert seen[:2] == [("initialize", False), ("notifications/initialized", False)], seen
    assert seen[2] == ("tools/list", True), seen

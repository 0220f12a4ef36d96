"""Stoker's MCP server as a model sees it: the seven tools, described, with the arguments the
issue names (daemon/mcp/server.py). Built without a daemon: listing tools asks nothing."""

from __future__ import annotations

import pytest
from mcp.server.mcpserver.exceptions import ToolError

from daemon.mcp.server import server
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

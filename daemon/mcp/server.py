"""The MCP server object of both transports: Stoker's tools (their bodies in `tools`) with
the descriptions a model reads. `stoker mcp` (stdio) serves it for one chat; the daemon's
HTTP endpoint (daemon/listeners/mcp_http.py) serves one for every chat, the chat of each
call named by its bearer credential. A module of its own, imported only where it is served:
the MCP SDK and pydantic take a while to import, and nothing else should pay for them. No
`from __future__ import annotations` here: the SDK evaluates the annotations of the tool
functions to build their JSON schemas.
"""

from collections.abc import Callable
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from daemon.mcp.tools import (
    AGENTS,
    CANCEL,
    LIST,
    RESULT,
    RUN_WORKFLOW,
    SEND,
    SPAWN,
    STATUS,
    WORKFLOW_RESULT,
    StokerTools,
)


def server(tools_for: Callable[[], StokerTools]) -> MCPServer[Any]:
    """The MCP server with Stoker's tools, described for a model. `tools_for` gives the
    tools of the chat the current call is for (stdio: always the same; HTTP: the chat of
    the request's credential)."""
    app: MCPServer[Any] = MCPServer(
        name="stoker", log_level="WARNING", instructions=(
            "Delegate work to other AI agents that Stoker keeps running: spawn_task, then "
            "task_result. Tasks run in parallel with you."))

    @app.tool(description=SPAWN)
    async def spawn_task(
        agent: Annotated[str, Field(description="Agent to run it (see list_agents)")],
        prompt: Annotated[str, Field(description="The complete instructions for the task")],
        title: Annotated[str | None, Field(description="A short title")] = None,
        workspace: Annotated[str | None, Field(description=(
            "Where it works: 'parent' (your directory, default), 'worktree' (a new git "
            "worktree of your project) or an absolute directory inside yours"))] = None,
    ) -> dict[str, Any]:
        return await tools_for().spawn_task(agent, prompt, title, workspace)

    @app.tool(description=STATUS)
    async def task_status(
        id: Annotated[str, Field(description="The task id spawn_task returned")],
    ) -> dict[str, Any]:
        return await tools_for().task_status(id)

    @app.tool(description=RESULT)
    async def task_result(
        id: Annotated[str, Field(description="The task id spawn_task returned")],
        wait_seconds: Annotated[float, Field(description=(
            "How long to wait for it to finish (0: do not wait)"))] = 60.0,
    ) -> dict[str, Any]:
        return await tools_for().task_result(id, wait_seconds)

    @app.tool(description=SEND)
    async def send_to_task(
        id: Annotated[str, Field(description="The task id")],
        prompt: Annotated[str, Field(description="The follow-up instructions")],
    ) -> dict[str, Any]:
        return await tools_for().send_to_task(id, prompt)

    @app.tool(description=LIST)
    async def list_tasks() -> dict[str, Any]:
        return await tools_for().list_tasks()

    @app.tool(description=CANCEL)
    async def cancel_task(
        id: Annotated[str, Field(description="The task id")],
    ) -> dict[str, Any]:
        return await tools_for().cancel_task(id)

    @app.tool(description=AGENTS)
    async def list_agents() -> dict[str, Any]:
        return await tools_for().list_agents()

    @app.tool(description=RUN_WORKFLOW)
    async def run_workflow(
        workflow: Annotated[str, Field(description=(
            "The workflow's name (.stoker/workflows/NAME.toml) or a path to its file"))],
        inputs: Annotated[dict[str, str] | None, Field(description=(
            "Input values by name, as text (a list: comma-separated)"))] = None,
    ) -> dict[str, Any]:
        return await tools_for().run_workflow(workflow, inputs)

    @app.tool(description=WORKFLOW_RESULT)
    async def workflow_result(
        run: Annotated[str, Field(description="The run id run_workflow returned")],
        wait_seconds: Annotated[float, Field(description=(
            "How long to wait for it to end (0: do not wait)"))] = 60.0,
    ) -> dict[str, Any]:
        return await tools_for().workflow_result(run, wait_seconds)

    return app

"""The bodies of Stoker's MCP tools, with the descriptions a model reads (`server` turns
them into MCP tools): each a thin call of a task request, made through an `Ask`. Both
transports use them: `stoker mcp` (stdio, daemon/cli/mcp.py) asks over the daemon's socket,
the daemon's own MCP endpoint (HTTP, daemon/listeners/mcp_http.py) asks its router in
process. A refusal is a `ToolError` with the same text either way: `code: message`.

Imports neither the MCP SDK nor pydantic at module level.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Ask = Callable[[Any], Awaitable[Any]]
"""Send one protocol request (`protocol.messages`) for the tools and return its result; a
refusal raises `ToolError("code: message")`."""

SPAWN = (
    "Start a background task: another AI agent works on `prompt` in its own chat, in "
    "parallel with you, and returns an id at once. Give it a self-contained prompt (it "
    "does not see your conversation). Collect the outcome later with task_result. A few "
    "tasks run at a time per chat; more wait in a queue and start by themselves.")
STATUS = ("The state of a task you started: queued, running, done, failed, cancelled or "
          "interrupted, with timings. Does not wait.")
RESULT = (
    "The outcome of a task you started: its final answer text, stop reason, error and the "
    "files it changed (worktree tasks). Waits up to wait_seconds for the task to finish; "
    "if it is still running then, state says so and you may call again.")
SEND = ("Send a follow-up prompt to a finished task; it continues in the same chat with its "
        "earlier context. Use task_result again to get the new answer.")
LIST = "The tasks you started, oldest first, with their states and titles."
CANCEL = "Cancel a task you started (queued or running) and the tasks it started."
AGENTS = "The agents you may give tasks to (the `agent` of spawn_task)."
RUN_WORKFLOW = (
    "Start a workflow: a declared pipeline of agent steps (a .stoker/workflows/NAME.toml "
    "file of your project, or a path to one) that Stoker runs in parallel with you. "
    "Returns the run's id at once; collect the outcome with workflow_result. Steps whose "
    "spec did not change since an earlier run reuse its results.")
WORKFLOW_RESULT = (
    "The outcome of a workflow run you started: its state (running, done, failed, "
    "cancelled), why it stopped, and each step's state and result. Waits up to "
    "wait_seconds for the run to end; if it is still running then, state says so.")


class StokerTools:
    """The tools' bodies for one chat: one request each, carrying the chat's credential
    (the tasks subsystem checks it, whichever transport brought the call)."""

    def __init__(self, ask: Ask, chat: str, credential: str | None) -> None:
        self.ask = ask
        self.chat = chat
        self.credential = credential

    def _who(self) -> dict[str, Any]:
        if self.credential is None:
            return {}
        return {"caller": self.chat, "credential": self.credential}

    async def spawn_task(self, agent: str, prompt: str, title: str | None = None,
                         workspace: str | None = None) -> dict[str, Any]:
        from protocol import messages as m

        info = await self.ask(m.TaskNew(id=0, parent=self.chat, agent=agent or None,
                                        prompt=prompt, title=title, workspace=workspace,
                                        origin="agent", **self._who()))
        return {"id": info.task, "state": info.state, "title": info.title,
                "agent": info.agent}

    async def task_status(self, id: str) -> dict[str, Any]:
        from protocol import messages as m

        return _status(await self.ask(m.GetTask(id=0, task=id, **self._who())))

    async def task_result(self, id: str, wait_seconds: float = 60.0) -> dict[str, Any]:
        from protocol import messages as m

        info = await self.ask(m.GetTask(id=0, task=id, wait=max(0.0, wait_seconds),
                                        **self._who()))
        out = _status(info)
        if info.state not in ("queued", "running"):
            out.update(result=info.result, stop_reason=info.stop_reason)
            if info.files_changed:
                out["files_changed"] = info.files_changed
        return out

    async def send_to_task(self, id: str, prompt: str) -> dict[str, Any]:
        from protocol import messages as m

        return _status(await self.ask(m.TaskSend(id=0, task=id, prompt=prompt,
                                                 **self._who())))

    async def list_tasks(self) -> dict[str, Any]:
        from protocol import messages as m

        listed = await self.ask(m.ListTasks(id=0, parent=self.chat, **self._who()))
        return {"tasks": [_status(t) for t in listed.tasks]}

    async def cancel_task(self, id: str) -> dict[str, Any]:
        from protocol import messages as m

        return _status(await self.ask(m.TaskCancel(id=0, task=id, **self._who())))

    async def list_agents(self) -> dict[str, Any]:
        from protocol import messages as m

        agents = await self.ask(m.ListAgents(id=0))
        listed = await self.ask(m.ListTasks(id=0, parent=self.chat, **self._who()))
        allowed = set(listed.agents)
        return {"agents": [{"name": a.name, "available": a.available,
                            **({"reason": a.reason} if a.reason else {})}
                           for a in agents.agents if a.name in allowed],
                "default": agents.default}

    async def run_workflow(self, workflow: str, inputs: dict[str, str] | None = None
                           ) -> dict[str, Any]:
        from protocol import messages as m

        info = await self.ask(m.WorkflowRun(id=0, workflow=workflow, inputs=inputs or {},
                                            **self._who()))
        return {"run": info.run, "name": info.name, "state": info.state,
                "steps": [s.unit for s in info.steps]}

    async def workflow_result(self, run: str, wait_seconds: float = 60.0) -> dict[str, Any]:
        import trio

        from protocol import messages as m

        info = await self.ask(m.GetWorkflow(id=0, run=run, **self._who()))
        with trio.move_on_after(max(0.0, wait_seconds)):
            while info.state == "running":
                info = await self.ask(m.GetWorkflow(id=0, run=run, wait=30.0,
                                                    version=info.version, **self._who()))
        out: dict[str, Any] = {"run": info.run, "state": info.state, "tokens": info.tokens}
        if info.reason:
            out["reason"] = info.reason
        out["steps"] = [{"step": s.unit, "state": s.state,
                         **({"result": s.result} if s.result else {}),
                         **({"error": s.error} if s.error else {})} for s in info.steps]
        return out


def _status(info: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": info.task, "state": info.state, "title": info.title,
                           "agent": info.agent}
    if info.error:
        out["error"] = info.error
    return out


def socket_ask(socket: str, chat: str) -> Ask:
    """`stoker mcp`'s way: each request on a connection of its own to the daemon's socket
    (a tool call is rare next to a connection's cost, and a daemon restart then costs no
    tool)."""

    async def ask(request: Any) -> Any:
        from mcp.server.mcpserver.exceptions import ToolError

        from daemon.client import Client, ClientError, RequestFailed

        try:
            async with Client.connect(socket, client=f"mcp:{chat}") as conn:
                return await conn.request(request)
        except RequestFailed as exc:
            raise ToolError(f"{exc.code}: {exc.message}") from None
        except ClientError as exc:
            raise ToolError(f"Stoker is not reachable: {exc}") from None

    return ask

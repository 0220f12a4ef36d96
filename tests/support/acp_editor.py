"""A scriptable ACP *editor* built on the official Python SDK (`agent-client-protocol`).

Run as its own process (asyncio, like a real editor would be)::

    python tests/support/acp_editor.py -- python -m daemon.cli acp --agent echo

It spawns the agent command with the SDK's `spawn_agent_process` and then obeys JSON
commands on stdin, one per line, ``{"id": N, "op": OP, ...}``; each op runs as its own task,
so a long `prompt` does not block a `cancel`. It writes JSON lines to stdout:

* ``{"reply": N, "result": ...}`` or ``{"reply": N, "error": {code, message, data}}``
* ``{"event": "started", "agentPid": PID}`` once the agent runs
* ``{"event": "update", "sessionId": ..., "update": {...}}`` for each `session/update`
* ``{"event": "permission", "key": K, "rpcId": ID, "sessionId", "toolCall", "options"}`` for
  each `session/request_permission`; it waits for an ``answer`` op naming K
* ``{"event": "withdrawn", "rpcId": ID}`` when the agent sends `$/cancel_request`; the
  pending permission with that request id is answered `cancelled`, as an editor closing
  the prompt would

Ops: initialize, new_session {cwd}, load_session {sessionId, cwd}, resume_session
{sessionId, cwd}, list_sessions {cwd?}, close_session {sessionId}, prompt {sessionId,
text}, cancel {sessionId}, set_mode {sessionId, modeId}, set_config {sessionId, configId,
value}, answer {key, optionId | null}, exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any, cast

import acp
from acp.connection import StreamDirection, StreamEvent
from acp.schema import (
    AllowedOutcome,
    ClientCapabilities,
    DeniedOutcome,
    FileSystemCapabilities,
    Implementation,
    RequestPermissionResponse,
)


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def dump(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return value


class Editor:
    """The SDK `Client` side: shows updates (prints them) and asks the test about
    permissions."""

    def __init__(self) -> None:
        self.permissions: dict[int, asyncio.Future[str | None]] = {}
        self.rpc_ids: dict[str, int] = {}
        """toolCallId of a pending `session/request_permission` -> its JSON-RPC id."""
        self.by_rpc_id: dict[int, int] = {}
        self.next_key = 1

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        emit({"event": "update", "sessionId": session_id, "update": dump(update)})

    async def request_permission(self, session_id: str, tool_call: Any, options: Any,
                                 **kwargs: Any) -> RequestPermissionResponse:
        key = self.next_key
        self.next_key += 1
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.permissions[key] = future
        call = dump(tool_call)
        rpc_id = self.rpc_ids.pop(call.get("toolCallId", ""), None)
        if rpc_id is not None:
            self.by_rpc_id[rpc_id] = key
        emit({"event": "permission", "key": key, "rpcId": rpc_id, "sessionId": session_id,
              "toolCall": call, "options": [dump(o) for o in options]})
        try:
            option = await future
        finally:
            self.permissions.pop(key, None)
        if option is None:
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected",
                                                                option_id=option))

    def answer(self, key: int, option: str | None) -> bool:
        future = self.permissions.get(key)
        if future is None or future.done():
            return False
        future.set_result(option)
        return True

    def observe(self, event: StreamEvent) -> None:
        """Sees raw traffic before the SDK dispatches it: request ids of permission
        requests, and `$/cancel_request`, which the SDK itself does not surface."""
        if event.direction is not StreamDirection.INCOMING:
            return
        message = event.message
        method = message.get("method")
        params = message.get("params") or {}
        if method == "session/request_permission" and "id" in message:
            tool_call_id = (params.get("toolCall") or {}).get("toolCallId")
            if isinstance(tool_call_id, str):
                self.rpc_ids[tool_call_id] = message["id"]
        elif method == "$/cancel_request":
            rpc_id = params.get("requestId")
            emit({"event": "withdrawn", "rpcId": rpc_id})
            key = self.by_rpc_id.pop(rpc_id, None) if isinstance(rpc_id, int) else None
            if key is not None:
                self.answer(key, None)


async def run_op(conn: Any, editor: Editor, command: dict[str, Any]) -> Any:
    op = command["op"]
    if op == "initialize":
        return await conn.initialize(
            protocol_version=acp.PROTOCOL_VERSION,
            client_capabilities=ClientCapabilities(
                fs=FileSystemCapabilities(read_text_file=False, write_text_file=False),
                terminal=False),
            client_info=Implementation(name="sdk-editor", version="1"))
    if op == "new_session":
        return await conn.new_session(cwd=command["cwd"], mcp_servers=[])
    if op == "load_session":
        return await conn.load_session(cwd=command["cwd"], session_id=command["sessionId"],
                                       mcp_servers=[])
    if op == "resume_session":
        return await conn.resume_session(cwd=command["cwd"], session_id=command["sessionId"])
    if op == "list_sessions":
        return await conn.list_sessions(cwd=command.get("cwd"))
    if op == "close_session":
        return await conn.close_session(session_id=command["sessionId"])
    if op == "prompt":
        return await conn.prompt(session_id=command["sessionId"],
                                 prompt=[acp.text_block(command["text"])])
    if op == "cancel":
        await conn.cancel(session_id=command["sessionId"])
        return {}
    if op == "set_mode":
        return await conn.set_session_mode(session_id=command["sessionId"],
                                           mode_id=command["modeId"])
    if op == "set_config":
        return await conn.set_config_option(config_id=command["configId"],
                                            session_id=command["sessionId"],
                                            value=command["value"])
    if op == "answer":
        return {"answered": editor.answer(int(command["key"]), command.get("optionId"))}
    raise ValueError(f"unknown op {op!r}")


async def serve_op(conn: Any, editor: Editor, command: dict[str, Any]) -> None:
    try:
        result = await run_op(conn, editor, command)
    except acp.RequestError as exc:
        emit({"reply": command["id"], "error": {"code": exc.code, "message": str(exc),
                                                "data": exc.data}})
        return
    except Exception as exc:
        emit({"reply": command["id"], "error": {"code": None, "message": repr(exc)}})
        return
    emit({"reply": command["id"], "result": dump(result)})


async def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: acp_editor.py -- AGENT_COMMAND...", file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1:]
    editor = Editor()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # The SDK trims the child's environment; the agent needs ours (STOKER_SOCKET, ...).
    # Its stderr is ours, so the test's log shows it and a full pipe never blocks it.
    # The editor implements only what it advertises (no fs, no terminal), not all of Client.
    client = cast("acp.Client", editor)
    async with acp.spawn_agent_process(client, command[0], *command[1:], env=dict(os.environ),
                                       transport_kwargs={"stderr": None},
                                       observers=[editor.observe]) as (conn, process):
        emit({"event": "started", "agentPid": process.pid})
        tasks: set[asyncio.Task[None]] = set()
        while line := await reader.readline():
            request = json.loads(line)
            if request["op"] == "exit":
                break
            task = asyncio.create_task(serve_op(conn, editor, request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for task in tasks:
            task.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))

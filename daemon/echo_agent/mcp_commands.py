"""The echo agent's ``/mcp TOOL JSON`` command: call a tool of an MCP server the client gave
the session (``mcpServers`` of session/new, load or resume), the first server that has one
by default or ``/mcp SERVER:TOOL JSON``. The reply is the tool's text, or ``error: ...``
when the tool failed (an MCP tool error) or the server could not be reached.
"""

from __future__ import annotations

import json

from daemon.echo_agent.commands import Command, Usage
from daemon.echo_agent.jsonrpc import JsonObj
from daemon.echo_agent.mcp_client import McpClient, McpError, open_server
from daemon.echo_agent.sessions import Turn
from daemon.echo_agent.state import AgentState

USAGE = "usage: /mcp [SERVER:]TOOL [JSON-OBJECT]"


class McpCommands:
    """``/mcp``, with one running client per (session, server)."""

    def __init__(self, state: AgentState) -> None:
        self._state = state
        self._wire = state.wire
        self._servers: dict[tuple[str, str], McpClient] = {}

    def table(self) -> dict[str, Command]:
        return {"/mcp": self._cmd_mcp}

    def _cmd_mcp(self, turn: Turn, arg: str) -> None:
        parts = arg.split(None, 1)
        if not parts:
            raise Usage(USAGE)
        server_name, _, tool = parts[0].rpartition(":")
        try:
            arguments = json.loads(parts[1]) if len(parts) > 1 else {}
        except ValueError:
            raise Usage(USAGE + " (the arguments are not JSON)") from None
        if not isinstance(arguments, dict):
            raise Usage(USAGE + " (the arguments must be a JSON object)")
        try:
            server = self._server(turn, server_name)
            is_error, text = server.call(tool, arguments, turn.cancel)
        except McpError as exc:
            self._wire.chunk(turn, f"error: {exc}")
            return
        self._wire.chunk(turn, f"error: {text}" if is_error else text)

    def _server(self, turn: Turn, name: str) -> McpClient:
        session = turn.session
        with self._state.cond:
            specs: list[JsonObj] = list(session.mcp_servers)
        spec = next((s for s in specs if not name or s.get("name") == name), None)
        if spec is None:
            raise McpError(f"no MCP server {name!r} in this session" if name
                           else "this session has no MCP server")
        key = (session.session_id, str(spec.get("name", "")))
        server = self._servers.get(key)
        if server is None:
            server = self._servers[key] = open_server(spec, session.cwd)
        return server

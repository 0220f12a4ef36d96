"""The echo agent's ``/mcp TOOL JSON`` command: call a tool of an MCP server the client gave
the session (``mcpServers`` of session/new, load or resume), the first server that has one
by default or ``/mcp SERVER:TOOL JSON``. The reply is the tool's text, or ``error: ...``
when the tool failed (an MCP tool error) or the server could not be reached.

When the servers start (``STOKER_ECHO_MCP_START``): ``demand`` (the default) at the first
``/mcp`` that needs one, said in ``initialize`` (``agentCapabilities._meta``, `ON_DEMAND`:
the client then does not expect them earlier); ``eager`` in the background as soon as a
session is set up, as agents with a model do; ``late`` at the first ``/mcp``, unsaid: to the
client, an agent that failed to start them (until a ``/mcp`` starts one late).
"""

from __future__ import annotations

import json
import os
import sys
import threading

from daemon.echo_agent.commands import Command, Usage
from daemon.echo_agent.jsonrpc import JsonObj
from daemon.echo_agent.mcp_client import McpClient, McpError, open_server
from daemon.echo_agent.sessions import Session, Turn
from daemon.echo_agent.state import AgentState

USAGE = "usage: /mcp [SERVER:]TOOL [JSON-OBJECT]"
ON_DEMAND = "stoker.dev/mcpOnDemand"
"""The `agentCapabilities._meta` key saying MCP servers start on demand (the daemon's
daemon/mcp/presence.py reads it; not imported: the echo agent stands alone)."""


def start_mode() -> str:
    """``demand``, ``eager`` or ``late`` (``STOKER_ECHO_MCP_START``)."""
    mode = os.environ.get("STOKER_ECHO_MCP_START", "") or "demand"
    return mode if mode in ("demand", "eager", "late") else "demand"


def capabilities_meta() -> JsonObj:
    """What ``initialize`` says of MCP in ``agentCapabilities._meta``."""
    return {ON_DEMAND: True} if start_mode() == "demand" else {}


class McpCommands:
    """``/mcp``, with one running client per (session, server)."""

    def __init__(self, state: AgentState) -> None:
        self._state = state
        self._wire = state.wire
        self._servers: dict[tuple[str, str], McpClient] = {}
        if start_mode() == "eager":
            state.mcp_given = self._start_all

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
        return self._client(session, spec)

    def _client(self, session: Session, spec: JsonObj) -> McpClient:
        key = (session.session_id, str(spec.get("name", "")))
        with self._state.cond:
            server = self._servers.get(key)
            if server is None:
                server = self._servers[key] = open_server(spec, session.cwd)
        return server

    def _start_all(self, session: Session) -> None:
        """``eager``: start the servers of a session just set up, in the background."""
        with self._state.cond:
            specs: list[JsonObj] = list(session.mcp_servers)

        def start() -> None:
            for spec in specs:
                try:
                    self._client(session, spec).open(threading.Event())
                except McpError as exc:
                    print(f"echo agent: MCP server {spec.get('name')!r}: {exc}",
                          file=sys.stderr)

        threading.Thread(target=start, daemon=True).start()

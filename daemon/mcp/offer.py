"""The `mcpServers` entry of Stoker's MCP server, added to every ACP session Stoker opens.

Two transports, chosen per agent (`tasks.mcp_transport`, `tasks.mcp_transport_agents`):

* **HTTP** (an ACP `McpServerHttp`), to an agent whose `initialize` advertised
  `mcpCapabilities.http` (`auto`): the daemon serves the tools itself on a loopback port
  (daemon/listeners/mcp_http.py), at `/mcp/<chat>`, and the chat's credential travels as a
  bearer token in `headers`. No process per session.
* **stdio** (an ACP `McpServerStdio`), to every other agent: the command runs `stoker mcp
  --chat ID` with this interpreter; the socket and the chat's credential travel in its
  environment (`env`), never in argv.

`configure` is called when the daemon starts (by the tasks subsystem: it knows the socket),
`configure_http` when its MCP endpoint may be started; before that, and in a process that
is not the daemon, the transport is not offered.
"""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Callable
from typing import Any

from daemon.config.file import TasksConfig
from daemon.mcp.credentials import ENV_CREDENTIAL, credential_for

SERVER_NAME = "stoker"
ENV_SOCKET = "STOKER_SOCKET"
ENV_CHAT = "STOKER_MCP_CHAT"
HTTP_PATH = "/mcp/"
"""The HTTP endpoint of chat C is `HTTP_PATH + quote(C)` on the daemon's MCP port."""

_socket: str | None = None
_http: Callable[[], str | None] | None = None


def configure(socket: str | None) -> None:
    """Offer the stdio server with this daemon socket from now on (None: stop offering)."""
    global _socket
    _socket = socket


def configure_http(endpoint: Callable[[], str | None] | None) -> None:
    """Offer the HTTP transport from now on: `endpoint()` gives the base URL of the
    daemon's MCP listener (starting it on first use), or None if it cannot be served (then
    stdio is offered). None: stop offering HTTP."""
    global _http
    _http = endpoint


def transport(agent: str, config: TasksConfig, *, advertised_http: bool) -> str:
    """"http" or "stdio": the transport to offer `agent` (pure)."""
    chosen = config.mcp_transport_agents.get(agent, config.mcp_transport)
    if chosen == "http" or (chosen == "auto" and advertised_http):
        return "http"
    return "stdio"


def mcp_servers(chat: str, agent: str, config: TasksConfig, *, remote: bool = False,
                agent_capabilities: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The entries to add to `chat`'s session setup on `agent` (whose `initialize` advertised
    `agent_capabilities`): Stoker's server, unless switched off (`tasks.mcp`, per agent or
    per chat), the agent runs on another computer (neither the daemon's socket nor its
    loopback port is there), or the daemon offers no transport yet."""
    if remote or not config.mcp:
        return []
    if agent in config.mcp_exclude_agents or chat in config.mcp_exclude_chats:
        return []
    mcp_caps = (agent_capabilities or {}).get("mcpCapabilities")
    advertised = isinstance(mcp_caps, dict) and mcp_caps.get("http") is True
    if transport(agent, config, advertised_http=advertised) == "http" and _http is not None:
        base = _http()
        if base is not None:
            return [{
                "type": "http",
                "name": SERVER_NAME,
                "url": base + HTTP_PATH + urllib.parse.quote(chat, safe=""),
                "headers": [{"name": "Authorization",
                             "value": f"Bearer {credential_for(chat)}"}],
            }]
    if _socket is None:
        return []
    return [{
        "name": SERVER_NAME,
        "command": sys.executable,
        "args": ["-m", "daemon.cli", "mcp", "--chat", chat],
        "env": [
            {"name": ENV_SOCKET, "value": _socket},
            {"name": ENV_CHAT, "value": chat},
            {"name": ENV_CREDENTIAL, "value": credential_for(chat)},
        ],
    }]

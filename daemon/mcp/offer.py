"""The `mcpServers` entry of Stoker's MCP server, added to every ACP session Stoker opens.

Two transports, chosen per agent (`tasks.mcp_transport`, `tasks.mcp_transport_agents`):

* **HTTP** (an ACP `McpServerHttp`), to an agent whose `initialize` advertised
  `mcpCapabilities.http` (`auto`): the daemon serves the tools itself on a loopback port
  (daemon/listeners/mcp_http.py), at `/mcp/<chat>?agent=<agent>`, and the chat's
  credential travels as a bearer token in `headers`. No process per session.
* **stdio** (an ACP `McpServerStdio`), to every other agent: the command runs `stoker mcp
  --chat ID` with this interpreter; the socket, the agent's name and the chat's credential
  travel in its environment (`env`), never in argv.

The tools act for the chat (its credential); the agent's name only tells `presence` which
of the chat's agents brought its server up.

An agent on another computer (`[computers.NAME]`) gets the daemon's HTTP endpoint (neither the
daemon's socket nor a stdio command of this machine is there): the endpoint reaches that
computer's loopback through an SSH remote port forward on its connection
(`remote_mcp_servers`, docs/REMOTE.md). An agent there that takes stdio gets a stdio bridge
to that endpoint (daemon/ssh/mcp_stdio.py: `python3` there, the standard library only).

Each offer made is recorded in `presence`, which warns in the chat when the agent does not
bring the server up.

`configure` is called when the daemon starts (by the tasks subsystem: it knows the socket),
`configure_http` when its MCP endpoint may be started, `configure_remote` when it may also
be forwarded to computers; before that, and in a process that is not the daemon, the
transport is not offered.
"""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from daemon.config.file import TasksConfig
from daemon.mcp import presence
from daemon.mcp.credentials import ENV_CREDENTIAL, credential_for

SERVER_NAME = "stoker"
ENV_SOCKET = "STOKER_SOCKET"
ENV_CHAT = "STOKER_MCP_CHAT"
ENV_AGENT = "STOKER_MCP_AGENT"
HTTP_PATH = "/mcp/"
"""The HTTP endpoint of chat C is `HTTP_PATH + quote(C)` on the daemon's MCP port."""
AGENT_PARAM = "agent"
"""The query parameter naming the agent an HTTP entry was offered to (`agent_of`)."""

_socket: str | None = None
_http: Callable[[], str | None] | None = None
_remote: Callable[[str], Awaitable[str]] | None = None


class Unavailable(Exception):
    """Stoker's server cannot be offered to an agent on another computer; the message says
    why (for a log line and the chat's notice)."""


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


def configure_remote(endpoint: Callable[[str], Awaitable[str]] | None) -> None:
    """Offer the HTTP transport to agents on other computers from now on: `await
    endpoint(computer)` gives the base URL of the daemon's MCP endpoint as seen from that
    computer (forwarding it first if needed), or raises `Unavailable`. None: stop."""
    global _remote
    _remote = endpoint


def transport(agent: str, config: TasksConfig, *, advertised_http: bool) -> str:
    """"http" or "stdio": the transport to offer `agent` (pure)."""
    chosen = config.mcp_transport_agents.get(agent, config.mcp_transport)
    if chosen == "http" or (chosen == "auto" and advertised_http):
        return "http"
    return "stdio"


def wanted(chat: str, agent: str, config: TasksConfig,
           agent_capabilities: dict[str, Any] | None) -> str | None:
    """"http" or "stdio": the transport `chat` on `agent` is to be offered, or None when
    Stoker's server is switched off for it (`tasks.mcp`, per agent or per chat) (pure)."""
    if not config.mcp:
        return None
    if agent in config.mcp_exclude_agents or chat in config.mcp_exclude_chats:
        return None
    mcp_caps = (agent_capabilities or {}).get("mcpCapabilities")
    advertised = isinstance(mcp_caps, dict) and mcp_caps.get("http") is True
    return transport(agent, config, advertised_http=advertised)


def http_entry(chat: str, agent: str, base: str) -> dict[str, Any]:
    """The ACP `McpServerHttp` of `chat` on `agent`, on the endpoint at `base`
    (http://HOST:PORT)."""
    query = urllib.parse.urlencode({AGENT_PARAM: agent})
    return {
        "type": "http",
        "name": SERVER_NAME,
        "url": f"{base}{HTTP_PATH}{urllib.parse.quote(chat, safe='')}?{query}",
        "headers": [{"name": "Authorization", "value": f"Bearer {credential_for(chat)}"}],
    }


def agent_of(query: str) -> str | None:
    """The agent an HTTP request's query string (`http_entry`'s) names, if it names one
    (pure)."""
    found = urllib.parse.parse_qs(query).get(AGENT_PARAM)
    return found[0] if found else None


def mcp_servers(chat: str, agent: str, config: TasksConfig, *, remote: bool = False,
                agent_capabilities: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The entries to add to `chat`'s session setup on `agent` (whose `initialize` advertised
    `agent_capabilities`): Stoker's server, unless switched off (`tasks.mcp`, per agent or
    per chat), the agent runs on another computer (`remote`: see `remote_mcp_servers`), or
    the daemon offers no transport yet. Records the offer (`presence`: whether the agent
    brings the server up is checked)."""
    chosen = wanted(chat, agent, config, agent_capabilities)
    if remote or chosen is None:
        return []
    if chosen == "http" and _http is not None:
        base = _http()
        if base is not None:
            presence.offered(chat, agent, "http")
            return [http_entry(chat, agent, base)]
    if _socket is None:
        return []
    presence.offered(chat, agent, "stdio")
    return [{
        "name": SERVER_NAME,
        "command": sys.executable,
        "args": ["-m", "daemon.cli", "mcp", "--chat", chat],
        "env": [
            {"name": ENV_SOCKET, "value": _socket},
            {"name": ENV_CHAT, "value": chat},
            {"name": ENV_AGENT, "value": agent},
            {"name": ENV_CREDENTIAL, "value": credential_for(chat)},
        ],
    }]


async def remote_mcp_servers(chat: str, agent: str, computer: str) -> list[dict[str, Any]]:
    """The HTTP entry of `chat` on `agent`, which runs on `computer`, with the URL the
    daemon's endpoint has there (an agent that takes stdio gets a bridge to it, made from this).
    Raises `Unavailable` (why not) when it cannot be served there: the daemon offers no
    HTTP endpoint, or the forward failed. Records the offer (`presence`)."""
    endpoint = _remote
    if endpoint is None:
        raise Unavailable("the daemon does not serve its MCP endpoint to other computers "
                          "(it is starting or stopping)")
    entries = [http_entry(chat, agent, await endpoint(computer))]
    presence.offered(chat, agent, "http")
    return entries

"""The `mcpServers` entry of Stoker's MCP server, added to every ACP session Stoker opens.

An ACP stdio `McpServer`: the command runs `stoker mcp --chat ID` with this interpreter;
the socket and the chat's credential travel in its environment (`env`), never in argv.
`configure` is called once by the tasks subsystem when the daemon starts (it knows the
socket); before that, and in a process that is not the daemon, nothing is offered.
"""

from __future__ import annotations

import sys
from typing import Any

from daemon.config.file import TasksConfig
from daemon.mcp.credentials import ENV_CREDENTIAL, credential_for

SERVER_NAME = "stoker"
ENV_SOCKET = "STOKER_SOCKET"
ENV_CHAT = "STOKER_MCP_CHAT"

_socket: str | None = None


def configure(socket: str | None) -> None:
    """Offer the server with this daemon socket from now on (None: stop offering)."""
    global _socket
    _socket = socket


def mcp_servers(chat: str, agent: str, config: TasksConfig, *, remote: bool = False
                ) -> list[dict[str, Any]]:
    """The entries to add to `chat`'s session setup on `agent`: Stoker's server, unless
    switched off (`tasks.mcp`, per agent or per chat), the agent runs on another computer
    (the daemon's socket is not there), or no daemon socket is known."""
    if _socket is None or remote or not config.mcp:
        return []
    if agent in config.mcp_exclude_agents or chat in config.mcp_exclude_chats:
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

"""Stoker's own MCP server as one chat's session is offered it (`mcpServers`): the entry
daemon/mcp/offer.py builds for an agent here, or for an agent on another computer the HTTP
entry through the computer's SSH connection (or a stdio bridge to it); and, when that cannot
be had, one notice saying why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from daemon.actors.backend.core import Core
from daemon.mcp import offer, presence
from protocol import deltas as d


class StokerMcp:
    """The offer of one actor's sessions."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._unoffered = ""
        """Why the server was last not offered (said once per reason)."""

    async def servers(self) -> list[dict[str, Any]]:
        """Stoker's own `mcpServers` entry for this session (daemon/mcp/offer.py). An agent
        on another computer gets the HTTP entry through the computer's SSH connection, or
        (taking stdio) a stdio bridge to it (daemon/ssh/mcp_stdio.py, its executor's);
        when that cannot be had the chat goes on without it, and says why."""
        core = self._core
        config = core.settings.config.tasks
        caps = core.info.get("agentCapabilities")
        if core.computer is None:
            return offer.mcp_servers(core.chat, core.agent, config, agent_capabilities=caps)
        chosen = offer.wanted(core.chat, core.agent, config, caps)
        if chosen is None:
            return []
        bridge: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = getattr(
            core.executor, "mcp_stdio_entry", None)
        try:
            if chosen == "stdio" and bridge is None:
                raise offer.Unavailable("it takes stdio, which its executor cannot bridge")
            entries = await offer.remote_mcp_servers(core.chat, core.agent, core.computer)
            if chosen == "stdio" and bridge is not None:
                entries = [await bridge(entry) for entry in entries]
                presence.offered(core.chat, core.agent, "stdio")  # a bridge to HTTP
        except offer.Unavailable as exc:
            reason = str(exc)
            core.log.warning("Stoker's MCP server is not offered to the remote agent",
                             computer=core.computer, reason=reason)
            if reason != self._unoffered:
                self._unoffered = reason
                core.publish(d.Notice(level="warning", message=(
                    f"Stoker's MCP server (tasks) is not available to this agent on "
                    f"computer {core.computer!r}: {reason}")))
            return []
        self._unoffered = ""
        return entries

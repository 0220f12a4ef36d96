"""`stoker mcp`'s loop: Stoker's server (`server`) on stdin and stdout for one chat, which
tells the daemon once the agent got past the MCP handshake with it (its first message
other than `initialize`): an `mcp_up` request with the chat's credential, on a connection
of its own (`presence`: the daemon warns in a chat whose server never comes up). Telling
is best effort: a daemon that cannot be reached then costs the agent nothing.

The handshake is watched through the SDK's own seam, `MCPServer.middleware`: a middleware
sees every inbound request and notification, `initialize` and `notifications/initialized`
included, by method, before validation (`mcp.server.context.ServerMiddleware`; provisional
in the SDK's 2.x, and `uv.lock` pins the SDK). The server then runs as the SDK runs it
(`run_stdio_async`).

Imports the MCP SDK: only `stoker mcp` imports this module.
"""

from __future__ import annotations

import sys
from typing import Any

import trio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext

from daemon.mcp.server import server
from daemon.mcp.tools import StokerTools, socket_ask

ANNOUNCE_TIMEOUT = 30.0
"""How long telling the daemon may take (it answers at once unless it is stopping)."""


class HandshakeWatch:
    """A server middleware that sets `past` at the first inbound message (request or
    notification) that is not `initialize`, and passes every message on unchanged."""

    def __init__(self, past: trio.Event) -> None:
        self.past = past

    async def __call__(self, ctx: ServerRequestContext[Any, Any],
                       call_next: CallNext) -> HandlerResult:
        if ctx.method != "initialize":
            self.past.set()
        return await call_next(ctx)


async def _announce(socket: str, chat: str, agent: str | None, credential: str,
                    past: trio.Event) -> None:
    from daemon.client import Client, ClientError
    from protocol import messages as m

    await past.wait()
    try:
        with trio.fail_after(ANNOUNCE_TIMEOUT):
            async with Client.connect(socket, client=f"mcp:{chat}") as conn:
                await conn.request(m.McpUp(id=0, chat=chat, credential=credential,
                                          agent=agent))
    except (ClientError, trio.TooSlowError, OSError) as exc:
        print(f"stoker mcp: could not tell the daemon the server is up: {exc}",
              file=sys.stderr)


async def serve(socket: str, chat: str, credential: str | None,
                agent: str | None = None) -> None:
    """Serve `chat`'s tools on stdio until the agent closes stdin; `agent` is the one whose
    session was offered it (told to the daemon with the handshake's end)."""
    tools = StokerTools(socket_ask(socket, chat), chat, credential)
    app = server(lambda: tools)
    past = trio.Event()
    app.middleware.append(HandshakeWatch(past))
    async with trio.open_nursery() as nursery:
        if credential is not None:
            nursery.start_soon(_announce, socket, chat, agent, credential, past)
        await app.run_stdio_async()
        nursery.cancel_scope.cancel()

"""`stoker mcp`'s loop: Stoker's server (`server`) on stdin and stdout for one chat, which
tells the daemon once the agent got past the MCP handshake with it (its first message
other than `initialize`): an `mcp_up` request with the chat's credential, on a connection
of its own (`presence`: the daemon warns in a chat whose server never comes up). Telling
is best effort: a daemon that cannot be reached then costs the agent nothing.

Imports the MCP SDK: only `stoker mcp` imports this module.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

import anyio
import trio
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

from daemon.mcp.server import server
from daemon.mcp.tools import StokerTools, socket_ask

ANNOUNCE_TIMEOUT = 30.0
"""How long telling the daemon may take (it answers at once unless it is stopping)."""


class _Watched:
    """The server's read side (an SDK `ReadStream`), which sets `past` at the first message
    that is not `initialize`."""

    def __init__(self, inner: Any, past: trio.Event) -> None:
        self._inner = inner
        self._past = past

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        item = await self._inner.receive()
        if not self._past.is_set() and isinstance(item, SessionMessage):
            message = getattr(item.message, "root", item.message)
            if getattr(message, "method", None) != "initialize":
                self._past.set()
        return item

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> _Watched:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _Watched:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


async def _announce(socket: str, chat: str, credential: str, past: trio.Event) -> None:
    from daemon.client import Client, ClientError
    from protocol import messages as m

    await past.wait()
    try:
        with trio.fail_after(ANNOUNCE_TIMEOUT):
            async with Client.connect(socket, client=f"mcp:{chat}") as conn:
                await conn.request(m.McpUp(id=0, chat=chat, credential=credential))
    except (ClientError, trio.TooSlowError, OSError) as exc:
        print(f"stoker mcp: could not tell the daemon the server is up: {exc}",
              file=sys.stderr)


async def serve(socket: str, chat: str, credential: str | None) -> None:
    """Serve `chat`'s tools on stdio until the agent closes stdin."""
    tools = StokerTools(socket_ask(socket, chat), chat, credential)
    app = server(lambda: tools)
    # What `MCPServer.run_stdio_async` does, with the read side watched.
    lowlevel = app._lowlevel_server
    past = trio.Event()
    async with stdio_server() as (read, write), trio.open_nursery() as nursery:
        if credential is not None:
            nursery.start_soon(_announce, socket, chat, credential, past)
        await lowlevel.run(_Watched(read, past), write,
                           lowlevel.create_initialization_options())
        nursery.cancel_scope.cancel()

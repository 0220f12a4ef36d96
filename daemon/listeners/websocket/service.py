"""The WebSocket subsystem: starts the listener when `[websocket] enabled`, and stops it.

Two children of the supervision tree: `websocket` (started once the pool and workspaces are
up; its stop ends accepting) and `websocket-clients` (started before the pool; its stop says
goodbye to the open connections, after the pool has ended their turns). The listener module,
and with it trio-websocket (~25 ms of imports), is imported only when the listener starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from daemon.config.file import WebSocketConfig
from daemon.listeners.connection import Handlers, Limits
from daemon.listeners.websocket.auth import is_loopback
from daemon.listeners.websocket.token import TokenFileError, ensure_token
from daemon.log import Log

if TYPE_CHECKING:
    from daemon.listeners.websocket.listener import WebSocketListener


class WebSocketService:
    """The optional WebSocket door: None of it runs unless enabled at startup."""

    def __init__(self, handlers: Handlers, *, config: Callable[[], WebSocketConfig],
                 token_file: Path, limits: Callable[[], Limits]) -> None:
        self._handlers = handlers
        self._config = config
        self._token_file = token_file
        self._limits = limits
        self.listener: WebSocketListener | None = None
        self.url: str | None = None
        """Where clients connect (`status` reports it); None when not listening."""

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the listener when `[websocket] enabled`. A port that cannot be bound is
        logged and leaves the daemon running without WebSocket: the Unix socket is the
        primary door and must not close because an optional one could not open."""
        config = self._config()
        if not config.enabled:
            return
        log = Log("websocket")
        if not is_loopback(config.host):
            log.warning("the websocket listener is reachable from other hosts; anyone who has "
                        "the token can drive your agents", host=config.host)
        try:
            ensure_token(self._token_file)
        except (TokenFileError, OSError) as exc:
            log.error("websocket disabled: cannot create the token file", error=str(exc))
            return
        from daemon.listeners.websocket.listener import (
            WebSocketListener,  # only now: trio-websocket is ~25 ms to import
        )

        listener = WebSocketListener(self._handlers, config, live_config=self._config,
                                     token_file=self._token_file, limits=self._limits)
        try:
            url = await listener.bind()
        except OSError as exc:
            log.error("websocket disabled: cannot listen", host=config.host, port=config.port,
                      error=str(exc))
            return
        await nursery.start(listener.serve)
        self.listener = listener
        self.url = url
        log.info("listening", url=url, file=str(self._token_file))

    async def stop_accepting(self) -> None:
        if self.listener is not None:
            self.listener.stop_accepting()

    async def close_connections(self) -> None:
        """Goodbye (close code 1001) to every WebSocket client."""
        if self.listener is not None:
            await self.listener.close_connections("daemon shutting down")

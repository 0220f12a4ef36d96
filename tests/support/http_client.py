"""HTTP helpers for the tests of the HTTP API and the event stream, on httpx (as an outside
client would use it): a daemon with its TCP listener on, its base URL and token, and a
small Server-Sent Events reader."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from protocol import messages as m
from tests.support.harness import DaemonFactory, DaemonProcess

CONFIG = """
[channels]
heartbeat = "200ms"

[websocket]
enabled = true
port = 0
allowed_origins = ["https://allowed.example"]
allowed_hosts = ["stoker.test"]
max_connections = 8
max_message = "64KiB"
"""


class HttpDaemon:
    def __init__(self, proc: DaemonProcess, base: str) -> None:
        self.proc = proc
        self.base = base
        self.token = proc.cli("token").stdout.strip()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, timeout=30.0, **kwargs)

    async def call(self, tag: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> httpx.Response:
        async with self.client() as client:
            return await client.post(f"/api/{tag}", json=body if body is not None else {},
                                     headers={**self.auth, **(headers or {})})


async def start_http_daemon(daemon_factory: DaemonFactory, config: str = CONFIG
                            ) -> HttpDaemon:
    proc = daemon_factory(config=config)
    proc.start()
    async with proc.client() as client:
        status: m.StatusResult = await client.request(m.GetStatus(id=0))
    assert status.websocket is not None
    base = status.websocket.replace("ws://", "http://").rstrip("/")
    return HttpDaemon(proc, base)


@dataclass
class Event:
    event: str = "message"
    data: str = ""
    id: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return msgspec.json.decode(self.data)


async def events(response: httpx.Response) -> AsyncIterator[Event]:
    """Parse an event stream (the subset of the SSE format the daemon writes)."""
    current = Event()
    async for line in response.aiter_lines():
        if line == "":
            if current.data or current.event != "message":
                yield current
            current = Event()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            current.data = value if not current.data else current.data + "\n" + value
        elif name == "event":
            current.event = value
        elif name == "id":
            current.id = value
        else:
            current.fields[name] = value

"""The floor: an ACP agent driven directly over stdio, without the daemon.

It uses the daemon's own ACP client code (`daemon.acp.rpc.JsonRpcConnection` and
`daemon.acp.updates.decode_session_update`), so the difference between a turn through the
daemon and the same turn here is what the daemon adds on top of any ACP client: the socket
protocol, the pool, the actor's mailbox, the hub, the store, the client's decoding.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from daemon.acp.rpc import METHOD_NOT_FOUND, JsonRpcConnection, RpcError
from daemon.acp.updates import decode_session_update
from protocol import deltas as d

CLIENT_CAPABILITIES = {"fs": {"readTextFile": False, "writeTextFile": False},
                       "terminal": False}


@dataclass
class DirectTurn:
    sent: float
    first_chunk: float | None
    ended: float
    chunks: int


class DirectAgent:
    """One agent process and its ACP session, driven from this process."""

    def __init__(self, proc: trio.Process, rpc: JsonRpcConnection, spawned: float) -> None:
        self.proc = proc
        self.rpc = rpc
        self.spawned = spawned
        self.session_id = ""
        self.initialized_at = 0.0
        self.session_at = 0.0
        self._first: float | None = None
        self._chunks = 0

    def _on_notification(self, method: str, params: msgspec.Raw | None) -> None:
        if method != "session/update":
            return
        _session, body = decode_session_update(params)
        if type(body) is d.Text:
            if self._first is None:
                self._first = time.perf_counter()
            self._chunks += 1

    async def open_session(self, cwd: str, *, timeout: float = 120.0) -> None:
        """initialize + session/new (what a cold start costs besides the spawn)."""
        with trio.fail_after(timeout):
            await self.rpc.request("initialize", {"protocolVersion": 1,
                                                  "clientCapabilities": CLIENT_CAPABILITIES})
            self.initialized_at = time.perf_counter()
            raw = await self.rpc.request("session/new", {"cwd": cwd, "mcpServers": []})
            self.session_at = time.perf_counter()
        self.session_id = str(msgspec.json.decode(raw)["sessionId"])

    async def prompt(self, text: str, *, timeout: float = 120.0) -> DirectTurn:
        self._first = None
        self._chunks = 0
        sent = time.perf_counter()
        with trio.fail_after(timeout):
            await self.rpc.request("session/prompt", {
                "sessionId": self.session_id, "prompt": [{"type": "text", "text": text}]})
        ended = time.perf_counter()
        return DirectTurn(sent, self._first, ended, self._chunks)


async def _refuse(method: str, params: msgspec.Raw | None) -> Any:
    raise RpcError(METHOD_NOT_FOUND, f"the benchmark client does not serve {method}")


@asynccontextmanager
async def direct_agent(argv: Sequence[str], *, env: dict[str, str] | None = None,
                       cwd: str | None = None) -> AsyncIterator[DirectAgent]:
    """Spawn `argv` (own session, stderr discarded) and serve its stdout until closed."""
    spawned = time.perf_counter()
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = await trio.lowlevel.open_process(
        list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, env=full_env, cwd=cwd, start_new_session=True)
    assert proc.stdin is not None
    assert proc.stdout is not None
    agent: DirectAgent | None = None

    def on_notification(method: str, params: msgspec.Raw | None) -> None:
        if agent is not None:
            agent._on_notification(method, params)

    rpc = JsonRpcConnection(proc.stdin, proc.stdout, on_request=_refuse,
                            on_notification=on_notification, name="bench-direct")
    agent = DirectAgent(proc, rpc, spawned)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rpc.serve)
            try:
                yield agent
            finally:
                with trio.CancelScope(shield=True):
                    await _stop(proc)
                nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()


async def _stop(proc: trio.Process) -> None:
    """Close stdin (agents exit on EOF), then SIGTERM the group, then SIGKILL."""
    if proc.stdin is not None:
        try:
            await proc.stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    with trio.move_on_after(2):
        await proc.wait()
        return
    try:
        os.killpg(proc.pid, 15)
    except OSError:
        pass
    with trio.move_on_after(2):
        await proc.wait()
        return
    try:
        os.killpg(proc.pid, 9)
    except OSError:
        pass
    await proc.wait()

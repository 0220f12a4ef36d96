"""`stoker acp`'s one connection to the daemon: made on first use, remade after a loss.

The editor starts `stoker acp` whenever it likes, daemon or not; so the connection is made
lazily, by the first request that needs the daemon, and a failure is that request's error
(a clear one: "the daemon is not running ..."), not a dead process. `--spawn-daemon` starts a
daemon instead of failing. When an established connection is lost (daemon restart), the
bridge reconnects in the background and resubscribes its sessions from their cursors, so the
editor misses nothing.

Everything that is not a reply (deltas, replay markers) is handed, in arrival order, to
`on_event`; the bridge routes it to the session it belongs to.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from daemon.client import Client, ClientError, DaemonNotRunning
from daemon.config.paths import Paths, ensure_private_dir
from daemon.log import Log

SPAWN_TIMEOUT = 20.0
RECONNECT_MAX_BACKOFF = 5.0


class DaemonLink:
    def __init__(self, paths: Paths, *, name: str, spawn: bool,
                 on_event: Callable[[Any], None],
                 on_connected: Callable[[Client], Awaitable[None]],
                 on_lost: Callable[[str], None],
                 log: Log | None = None) -> None:
        self.paths = paths
        self.name = name
        """The `hello.client` name: the daemon's `by` fields name this bridge with it, which
        is how the bridge recognises the turns its editor started."""
        self._spawn = spawn
        self._on_event = on_event
        self._on_connected = on_connected
        self._on_lost = on_lost
        self._log = log or Log("acp")
        self._client: Client | None = None
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._reconnecting = False
        self.connects = 0

    def bind(self, nursery: trio.Nursery) -> None:
        """The nursery that holds the connection's task (the bridge's own)."""
        self._nursery = nursery

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.closed is None

    async def client(self) -> Client:
        """The connected client, connecting (or spawning the daemon) first if needed.
        Raises `DaemonNotRunning` / `ClientError` when that fails."""
        client = self._client
        if client is not None and client.closed is None:
            return client
        async with self._lock:
            client = self._client
            if client is not None and client.closed is None:
                return client
            try:
                client = await self._connect()
            except DaemonNotRunning:
                if not self._spawn:
                    raise
                await spawn_daemon(self.paths, self._log)
                client = await self._connect()
            await self._on_connected(client)
            return client

    async def _connect(self) -> Client:
        assert self._nursery is not None, "bind() first"
        client: Client = await self._nursery.start(self._hold)
        self.connects += 1
        return client

    async def _hold(self, task_status: trio.TaskStatus[Client]) -> None:
        """Own the connection: pump its events until it closes, then report the loss."""
        started = False
        why = "the daemon closed the connection"
        try:
            async with Client.connect(self.paths.socket, client=self.name) as client:
                self._client = client
                task_status.started(client)
                started = True
                async for event in client.events():
                    self._on_event(event)
                why = client.closed or why
        except ClientError as exc:
            if not started:
                raise
            why = str(exc)
        finally:
            self._client = None
        self._log.warning("lost the connection to the daemon", reason=why)
        self._on_lost(why)

    async def reconnect(self, keep_trying: Callable[[], bool]) -> None:
        """Retry (with backoff) until connected again or `keep_trying()` says stop."""
        if self._reconnecting:
            return
        self._reconnecting = True
        backoff = 0.2
        try:
            while keep_trying() and not self.connected:
                try:
                    await self.client()
                    self._log.info("reconnected to the daemon")
                    return
                except ClientError as exc:
                    self._log.info("daemon not reachable yet", error=str(exc))
                await trio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_BACKOFF)
        finally:
            self._reconnecting = False


async def spawn_daemon(paths: Paths, log: Log, timeout: float = SPAWN_TIMEOUT) -> None:
    """Start `stoker daemon` detached (its own session, output to `daemon.log` in the state
    dir) and wait until its socket answers. A daemon that loses the race to another one
    (started by a second editor at the same moment) exits; the winner answers."""
    ensure_private_dir(paths.state_dir)
    argv = [sys.executable, "-m", "daemon.cli", "daemon", "--socket", os.fspath(paths.socket),
            "--state-dir", os.fspath(paths.state_dir)]
    if paths.config_explicit:
        argv += ["--config", os.fspath(paths.config)]
    log_path = paths.state_dir / "daemon.log"
    log.info("starting the daemon", socket=str(paths.socket), log=str(log_path))
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL, stdout=fd,
                                                stderr=fd, start_new_session=True)
    finally:
        os.close(fd)
    with trio.move_on_after(timeout):
        while True:
            if await _answers(paths):
                return
            if proc.poll() is not None and not await _answers(paths):
                raise DaemonNotRunning(paths.socket,
                                       f"the daemon stopped with status {proc.returncode}; "
                                       f"see {log_path}")
            await trio.sleep(0.05)
    raise DaemonNotRunning(paths.socket, f"the daemon did not start within {timeout:g}s; "
                                         f"see {log_path}")


async def _answers(paths: Paths) -> bool:
    try:
        stream = await trio.open_unix_socket(os.fspath(paths.socket))
    except OSError:
        return False
    await stream.aclose()
    return True

"""One remote computer (`[computers.NAME]`) and its SSH connections.

Agents, terminals, git commands and SFTP requests for a computer share a *main* asyncssh
connection: channels are cheap, handshakes are not (a key exchange plus authentication is
tens of milliseconds on loopback, far more across a WAN), and one connection is one thing to
watch, to keep alive and to report on. But a server caps the sessions of one connection
(OpenSSH's `MaxSessions`, 10 by default, SFTP included), so once the main connection carries
`sessions_per_connection` long-lived channels, or the server refuses one ("open failed"),
processes go to *extra* connections, opened as needed, each watched like the main one.
A refusal is learnt: that connection takes no more processes until some of its own end.

Connection lifecycle:

- **Lazy.** Nothing connects until something needs the computer (a spawn, a file, git, or
  the reclaim of orphans from a previous daemon life).
- **Verified.** The host key must be in `known_hosts` (on by default; `known_hosts = ""`
  turns verification off, explicitly). An unknown or changed key is a `HostKeyError` naming
  the computer, the file and the offered key's fingerprint. It is not retried by the restart
  policy: a changed key is a configuration (or security) problem, not bad luck.
- **Watched.** `keepalive` makes asyncssh notice a dead peer; when the connection goes,
  every process on it ends with a status that names the computer (see `process.py`), and
  their identities are kept as *orphans*.
- **Reconnected with backoff.** Failed attempts back off exponentially (0.5 s doubling to
  30 s); within the backoff window callers fail at once with the last error instead of
  piling up attempts. While orphans are pending a background task keeps reconnecting.
- **Forwards** (`forwards.py`). The daemon's MCP endpoint (a loopback port here) is forwarded to the
  computer's loopback on request (`forward`, an SSH remote port forward on the main
  connection), once per connection: a new connection after a loss re-opens the forwards
  the previous one had, asking for the same remote port first so that agents still running
  (on an extra connection) keep their URL.
- **Orphans first.** Right after a connection is made, and before anyone else may use it,
  the orphans are reclaimed (group and marker sweep, as `reclaim_local` does): an agent cut
  off with its connection, or left by a crashed daemon, never runs next to its successor.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import trio

from daemon.config.file import ComputerConfig
from daemon.execution.local import ProcessIdentity
from daemon.log import Log
from daemon.ssh import scripts
from daemon.ssh.bridge import Bridge, BridgeClosed
from daemon.ssh.forwards import Forwards
from daemon.ssh.login import (
    ComputerError,
    ComputerRemoved,
    Link,
    describe_error,
    open_link,
)

BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
RECLAIM_TIMEOUT = 15.0
RSS_INTERVAL = 10.0
CLOSE_TIMEOUT = 3.0


@dataclass(slots=True)
class Completed:
    """A short remote command's outcome."""

    code: int | None
    signal: str | None
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.code == 0


class Computer:
    """A remote host, its connection and the processes on it. Owned by the SSH subsystem;
    its background tasks (connection watchers, reconnects, kills) run in `nursery`."""

    def __init__(self, name: str, config: ComputerConfig, *, bridge: Bridge,
                 nursery: trio.Nursery) -> None:
        self.name = name
        self.config = config
        self.bridge = bridge
        self.nursery = nursery
        self.log = Log("ssh", computer=name)
        self.state = "idle"
        self.last_error = ""
        self.latency: float | None = None
        self.connected_since: float | None = None
        self.connects = 0
        self.losses = 0
        self.removed = False
        self.rss_by_group: dict[int, int] = {}
        self._link: Link | None = None
        self._links: set[Link] = set()
        """Every open connection: the current one and retiring ones (after a reload)."""
        self._extras: list[Link] = []
        """Extra connections of the current configuration, for processes beyond what the
        main one may carry."""
        self._growing = trio.Lock()
        self.extra_connects = 0
        self._attempt: trio.Event | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._failure: ComputerError | None = None
        self._orphans: list[ProcessIdentity] = []
        self._reconnecting = False
        self._sampling = False
        self.forwards = Forwards(label=lambda: self.label, bridge=bridge, log=self.log)

    # ------------------------------------------------------------------ description

    @property
    def address(self) -> str:
        cfg = self.config
        user = f"{cfg.user}@" if cfg.user else ""
        return f"{user}{cfg.host}:{cfg.port}"

    @property
    def label(self) -> str:
        """How errors name it: `computer 'build1' (dev@build1.example:22)`."""
        return f"computer {self.name!r} ({self.address})"

    @property
    def processes(self) -> int:
        return sum(len(link.members) for link in self._current())

    @property
    def channels(self) -> list[int]:
        """Long-lived channels per open connection, the main one first."""
        return [len(link.members) for link in self._current()]

    def _current(self) -> list[Link]:
        main = [self._link] if self._link is not None else []
        return main + [x for x in self._extras if not x.closing]

    @property
    def home(self) -> str:
        return self._link.home if self._link else ""

    def expand(self, path: str) -> str:
        """`~` and `~/x` against the remote login directory (known once connected)."""
        home = self.home
        if home and (path == "~" or path.startswith("~/")):
            return home + path[1:]
        return path

    # ------------------------------------------------------------------ connecting

    async def connection(self) -> Any:
        """The live asyncssh connection, connecting first if needed. Raises
        `ComputerError` (naming this computer) when there is none to be had."""
        return (await self._live()).conn

    async def _live(self) -> Link:
        retried = False
        while True:
            if self.removed:
                raise ComputerRemoved(f"{self.label} is no longer in the config")
            link = self._link
            if link is not None:
                return link
            attempt = self._attempt
            if attempt is None:
                if self._failure is not None and trio.current_time() < self._retry_at:
                    wait = self._retry_at - trio.current_time()
                    raise type(self._failure)(
                        f"{self._failure} (next attempt in {wait:.1f}s)")
                attempt = self._begin_attempt()
            await attempt.wait()
            if self._link is None and self._attempt is None:
                if self._failure is not None:
                    raise type(self._failure)(str(self._failure))
                if retried:  # cancelled (shutdown), or superseded twice by reloads
                    raise ComputerError(f"connecting to {self.label} was interrupted")
                retried = True

    def _begin_attempt(self) -> trio.Event:
        """Connect in the subsystem's nursery: a caller that gives up (a cancelled turn)
        does not abort the attempt the others are waiting for."""
        done = trio.Event()
        self._attempt = done
        self.state = "connecting"
        self.nursery.start_soon(self._connect, done)
        return done

    async def _connect(self, done: trio.Event) -> None:
        cfg = self.config
        try:
            link, self.latency = await open_link(self.label, cfg, self.bridge)
            if self.config is not cfg or self.removed:  # a reload changed it meanwhile
                self.nursery.start_soon(self._close_link, link)
                self.state = "removed" if self.removed else "idle"
                return
            await self._reclaim_orphans(link)
        except ComputerError as exc:
            self._failures += 1
            delay = min(BACKOFF_BASE * 2 ** (self._failures - 1), BACKOFF_MAX)
            self._retry_at = trio.current_time() + delay
            self._failure = exc
            self.state = "unreachable" if exc.transient else "refused"
            self.last_error = str(exc)
            self.log.warning("cannot connect", error=str(exc), retry_in=delay)
        else:
            self._link = link
            self._links.add(link)
            self._failures = 0
            self._failure = None
            self.state = "connected"
            self.last_error = ""
            self.connected_since = time.time()
            self.connects += 1
            self.log.info("connected", address=self.address, home=link.home,
                          latency_ms=_ms(self.latency))
            self.nursery.start_soon(self._watch, link)
            if self.forwards.any():
                self.nursery.start_soon(self.forwards.reopen, link)
        finally:
            self._attempt = None
            if self.state == "connecting":  # cancelled (shutdown)
                self.state = "idle"
            done.set()

    async def _watch(self, link: Link) -> None:
        """Wait for the connection to end; unless we closed it, that is a loss."""
        try:
            await self.bridge.call(link.conn.wait_closed)
        except BridgeClosed:
            return
        except Exception:  # any way it ends, it ended
            pass
        if link.closing:
            return
        reasons = link.lost
        reason = describe_error(reasons[-1]) if reasons and reasons[-1] else "closed by the peer"
        self._lost(link, reason)

    def _lost(self, link: Link, reason: str) -> None:
        self._links.discard(link)
        if link in self._extras:
            self._extras.remove(link)
        if self._link is link:
            self._link = None
            self.state = "disconnected"
            self.connected_since = None
            self._retry_at = 0.0
            self._failures = 0
            self._failure = None
        self.losses += 1
        self.last_error = f"connection lost: {reason}"
        members = list(link.members)
        link.members.clear()
        for proc in members:
            self._orphans.append(proc.identity)
        self.log.warning("connection lost", reason=reason, processes=len(members))
        if self._orphans:
            self._start_reconnecting()

    def is_live(self, conn: Any) -> bool:
        """Is `conn` (current or retiring) still open?"""
        return any(link.conn is conn and not link.closing and not conn.is_closed()
                   for link in self._links)

    # ------------------------------------------------------------------ forwards

    async def forward(self, local_port: int) -> int:
        """The port on the computer's loopback whose connections reach `local_port` on
        this machine's loopback, through the main connection (connecting first if needed;
        the forward is opened once per connection). Raises `ForwardRefused` when the
        server will not forward (`AllowTcpForwarding`), `ComputerError` otherwise."""
        return await self.forwards.on(await self._live(), local_port)

    # ------------------------------------------------------------------ session budget

    def _budget(self, link: Link) -> int:
        limit = self.config.sessions_per_connection
        return limit if link.capacity is None else min(limit, link.capacity)

    def _room(self) -> Link | None:
        for link in self._current():
            if len(link.members) + link.starting < self._budget(link):
                return link
        return None

    @contextlib.asynccontextmanager
    async def session_slot(self) -> AsyncIterator[Any]:
        """A live connection with room for one more long-lived channel (a process), held
        reserved until the block ends (by then the process was adopted, or failed)."""
        link = self._room() if self._link is not None else None
        if link is None:
            await self._live()
            link = self._room()
        if link is None:
            async with self._growing:  # one new connection at a time, not one per caller
                link = self._room() or await self._open_extra()
        link.starting += 1
        try:
            yield link.conn
        finally:
            link.starting -= 1

    def refused(self, conn: Any, reason: str) -> bool:
        """The server refused a session on `conn`. Learn its limit there; True when
        trying again (on another connection) may succeed."""
        link = next((x for x in self._links if x.conn is conn), None)
        if link is None or not link.members:
            return False  # not a matter of how many: a fresh connection would fare no better
        link.capacity = max(1, len(link.members) - 1 if link.main else len(link.members))
        self.log.warning("the server refused another session on a connection; using "
                         "another one", reason=reason, sessions=len(link.members),
                         learnt_limit=link.capacity)
        return True

    async def _open_extra(self) -> Link:
        cfg = self.config
        link, _ = await open_link(self.label, cfg, self.bridge, sftp=False)
        if self.config is not cfg or self.removed or self._link is None:
            self.nursery.start_soon(self._close_link, link)
            raise ComputerError(f"the connection to {self.label} changed while another "
                                "was being opened")
        self._links.add(link)
        self._extras.append(link)
        self.extra_connects += 1
        self.log.info("opened another connection", connections=len(self._current()),
                      sessions_per_connection=self._budget(self._link))
        self.nursery.start_soon(self._watch, link)
        return link

    # ------------------------------------------------------------------ processes

    def adopt(self, proc: Any, conn: Any) -> bool:
        """Count `proc` as running on `conn` (current or retiring). False when that
        connection is already gone: then the process is an orphan, reclaimed on the next
        connection."""
        link = next((x for x in self._links if x.conn is conn and not x.closing), None)
        if link is None:
            self._orphans.append(proc.identity)
            self._start_reconnecting()
            return False
        link.members.add(proc)
        self._ensure_sampling()
        return True

    def release(self, proc: Any) -> None:
        """`proc` ended with a real exit status: nothing of it is left to reclaim."""
        for link in self._links:
            link.members.discard(proc)

    def add_orphan(self, identity: ProcessIdentity) -> None:
        """Reclaim this process tree as soon as there is a connection (before any spawn)."""
        self._orphans.append(identity)
        self._start_reconnecting()

    def _start_reconnecting(self) -> None:
        if self._reconnecting or self.removed:
            return
        self._reconnecting = True
        self.nursery.start_soon(self._reconnect)

    async def _reconnect(self) -> None:
        try:
            while self._orphans and not self.removed:
                if self._link is not None and self._attempt is None:
                    link = self._link
                    await self._reclaim_orphans(link)
                    if not self._orphans:
                        return
                try:
                    await self._live()
                except ComputerError:
                    pass
                if self._orphans:
                    await trio.sleep(max(0.5, self._retry_at - trio.current_time()))
        finally:
            self._reconnecting = False

    async def _reclaim_orphans(self, link: Link) -> None:
        while self._orphans:
            identity = self._orphans[0]
            command = scripts.tree_kill_command(
                pgid=identity.pgid, ticks=40, actor=identity.actor,
                leader=(identity.pid, identity.start_time))
            try:
                done = await self._run_on(link, command, timeout=RECLAIM_TIMEOUT)
            except ComputerError as exc:
                self.log.warning("orphan reclaim failed; will retry", pid=identity.pid,
                                 error=str(exc))
                return
            self._orphans.pop(0)
            if b"found=1" in done.stdout:
                self.log.info("reclaimed orphaned remote agent processes", pid=identity.pid,
                              actor=identity.actor)

    @property
    def pending_orphans(self) -> int:
        return len(self._orphans)

    # ------------------------------------------------------------------ commands

    async def run(self, command: str, *, timeout: float, stdin: bytes = b"") -> Completed:
        """Run a short command line over the connection (no process group of its own: use
        the executor for anything that may need killing). If the main connection has no
        session to spare, the extra ones are tried."""
        main = await self._live()
        links = [main] + [x for x in self._extras if not x.closing]
        for link in links:
            try:
                return await self._run_on(link, command, timeout=timeout, stdin=stdin)
            except SessionRefused:
                continue
        raise ComputerError(f"{self.label} refused a session on each of its "
                            f"{len(links)} connections (see MaxSessions in docs/REMOTE.md)")

    async def _run_on(self, link: Link, command: str, *, timeout: float,
                      stdin: bytes = b"") -> Completed:
        import asyncssh

        try:
            with trio.fail_after(timeout):
                result = await self.bridge.call(link.conn.run, command, input=stdin or None,
                                                encoding=None, check=False)
        except trio.TooSlowError:
            raise ComputerError(f"{self.label} did not answer within {timeout:g}s") from None
        except asyncssh.ChannelOpenError as exc:
            raise SessionRefused(f"{self.label}: {describe_error(exc)}") from None
        except (OSError, asyncssh.Error, BridgeClosed) as exc:
            raise ComputerError(f"{self.label}: {describe_error(exc)}") from None
        signal = result.exit_signal[0] if result.exit_signal else None
        return Completed(code=result.exit_status, signal=signal,
                         stdout=bytes(result.stdout or b""), stderr=bytes(result.stderr or b""))

    async def sftp(self) -> Any:
        return (await self._live()).sftp

    def spawn_task(self, fn: Any, *args: Any) -> None:
        """Run `fn(*args)` in the subsystem's nursery (for `kill()`, which cannot wait)."""
        self.nursery.start_soon(fn, *args)

    async def probe(self, timeout: float = 3.0) -> float | None:
        """Latency of one SFTP round trip on the live connection (never connects)."""
        link = self._link
        if link is None or link.sftp is None:
            return None
        started = time.monotonic()
        with trio.move_on_after(timeout):
            try:
                await self.bridge.call(link.sftp.realpath, ".")
            except Exception:  # a failed probe is no latency
                return None
            self.latency = time.monotonic() - started
            return self.latency
        return None

    def _ensure_sampling(self) -> None:
        if not self._sampling:
            self._sampling = True
            self.nursery.start_soon(self._sample_rss)

    async def _sample_rss(self) -> None:
        """RSS of the agents' process groups, for the pool's memory budget and `ls`: one
        `ps` per computer every few seconds, never a round trip per question."""
        try:
            while (link := self._link) is not None and any(
                    x.members for x in self._current()):
                try:  # on this connection only: sampling must never make one
                    done = await self._run_on(link, scripts.RSS, timeout=10)
                    if done.ok:
                        self.rss_by_group = scripts.parse_rss(done.stdout)
                except ComputerError:
                    pass
                await trio.sleep(RSS_INTERVAL)
        finally:
            self._sampling = False

    # ------------------------------------------------------------------ config changes

    def reconfigure(self, config: ComputerConfig) -> None:
        """A reload changed the section: new work uses a new connection with the new
        settings; the current one is retired (closed once its processes ended)."""
        self.config = config
        self.removed = False
        link = self._link
        self._link = None
        self._failure = None
        self._failures = 0
        self._retry_at = 0.0
        self.state = "idle"
        self.connected_since = None
        self._retire_all(link)

    def remove(self) -> None:
        """Gone from the config: refuse new work, retire the connection."""
        self.removed = True
        self.state = "removed"
        link = self._link
        self._link = None
        self._retire_all(link)

    def _retire_all(self, main: Link | None) -> None:
        retiring = ([main] if main is not None else []) + self._extras
        self._extras = []
        for link in retiring:
            self.nursery.start_soon(self._retire, link)

    async def _retire(self, link: Link, timeout: float = 120.0) -> None:
        with trio.move_on_after(timeout):
            while link.members:
                await trio.sleep(0.2)
        await self._close_link(link)

    async def close(self) -> None:
        """Daemon shutdown: close the connections (their agents were stopped already)."""
        self._link = None
        self._extras = []
        self.state = "idle"
        for link in list(self._links):
            await self._close_link(link)

    async def _close_link(self, link: Link) -> None:
        link.closing = True
        self._links.discard(link)
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self.bridge.call_sync(link.conn.close)
                await self.bridge.call(link.conn.wait_closed)
            except Exception:  # closing what may already be gone
                pass


class SessionRefused(ComputerError):
    """The server would not open another session channel on that connection (OpenSSH's
    `MaxSessions`): another connection may take it."""


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)

"""The Unix socket listener: binds (or inherits) the socket and runs one `Connection` per
client.

The socket lives in a 0700 directory and is itself 0600 (bound under a restrictive umask, so
there is no window in which it is more open). Each accepted peer's uid is read with
SO_PEERCRED and must be ours (or root's), or the peer must be in the socket file's group
while that file grants its group read and write (the system service's 0660 socket, group
`stoker`: docs/OPERATIONS.md); anyone else gets an `unauthorized` error and the connection
closes.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import select
import socket as stdsocket
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from daemon.channels.frames import Mode
from daemon.config.paths import ensure_private_dir
from daemon.listeners.connection import Connection, Handlers, Limits
from daemon.log import Log
from protocol import messages as m
from protocol.errors import ErrorCode
from protocol.framing import FrameReader


class DaemonAlreadyRunning(RuntimeError):
    pass


class UnixTransport:
    """Length-prefixed msgpack frames over a Unix stream socket."""

    mode: Mode = "framed"
    encoding = "msgpack"

    def __init__(self, stream: trio.SocketStream, max_frame: int, peer: str) -> None:
        self._stream = stream
        self._reader = FrameReader(max_frame)
        self._ready: collections.deque[bytes] = collections.deque()
        self.peer = peer
        self._fd = stream.socket.fileno()

    async def receive(self) -> bytes | None:
        while not self._ready:
            data = await self._stream.receive_some(262144)
            if not data:
                return None  # EOF; a partial frame left in the reader is dropped with it
            self._ready.extend(self._reader.feed(data))
        return self._ready.popleft()

    async def send_batch(self, frames: list[bytes]) -> None:
        await self._stream.send_all(frames[0] if len(frames) == 1 else b"".join(frames))

    def send_now(self, data: bytes) -> int:
        """Write what the socket takes without waiting (it is non-blocking); 0 if full.
        The connection calls it only while its writer is idle (no `send_batch` under way):
        `Outbox.direct`."""
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0

    async def aclose(self) -> None:
        await self._stream.aclose()

    def peer_reading(self) -> bool:
        """A peer that closed its socket shows POLLHUP; one that only shut down its sending
        side does not."""
        poller = select.poll()
        try:
            poller.register(self._stream.socket.fileno(), select.POLLIN)
            return not any(events & (select.POLLHUP | select.POLLERR)
                           for _, events in poller.poll(0))
        except (OSError, ValueError):
            return False


def peer_credentials(sock: stdsocket.socket | trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def peer_groups(pid: int, gid: int) -> frozenset[int]:
    """The peer process's primary and supplementary groups (from /proc: SO_PEERCRED gives
    only the primary one). Empty extras when the process is already gone."""
    groups = {gid}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
                    break
    except OSError:
        pass
    return frozenset(groups)


def peer_allowed(*, owner: int, uid: int, groups: frozenset[int],
                 socket_mode: int | None, socket_gid: int | None) -> bool:
    """Whether a peer may use the daemon: our own uid, root, or a member of the socket
    file's group when the file grants that group read and write."""
    if uid in (owner, 0):
        return True
    if socket_mode is None or socket_gid is None:
        return False
    return socket_mode & 0o060 == 0o060 and socket_gid in groups


def _socket_in_use(path: Path) -> bool:
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind_unix_socket(path: Path) -> stdsocket.socket:
    """Bind and listen on `path` (0600, in a 0700 directory). A stale socket file left by a
    crashed daemon is replaced; a live one means another daemon: `DaemonAlreadyRunning`."""
    ensure_private_dir(path.parent)
    if path.exists() or path.is_symlink():
        if _socket_in_use(path):
            raise DaemonAlreadyRunning(f"another daemon is listening on {path}")
        path.unlink()
    sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.ENAMETOOLONG or "too long" in str(exc):
            raise OSError(errno.ENAMETOOLONG, "the path is too long for a Unix socket (at "
                          "most 107 bytes)", str(path)) from None
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


class UnixListener:
    """Accepts clients on a listening Unix socket."""

    def __init__(self, sock: stdsocket.socket, handlers: Handlers,
                 limits: Callable[[], Limits], *, max_connections: int,
                 path: Path | None) -> None:
        """`limits` is asked at each new connection: a reload applies to the connections
        made after it (and `welcome` announces the same `max_frame`)."""
        self._sock = trio.socket.from_stdlib_socket(sock)
        self._handlers = handlers
        self._limits = limits
        self._max = max_connections
        self.path = path
        self._log = Log("listener")
        self.connections: set[Connection] = set()
        self._scope: trio.CancelScope | None = None
        self._uid = os.getuid()
        self.accepted = 0
        self.refused = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listener = trio.SocketListener(self._sock)
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                self._scope = scope
                task_status.started()
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        # EMFILE and friends: back off instead of spinning.
                        self._log.error("accept failed", error=str(exc))
                        await trio.sleep(0.1)
                        continue
                    nursery.start_soon(self._client, stream)
            with contextlib.suppress(Exception):
                await listener.aclose()

    @property
    def address(self) -> Any:
        """The bound address, as the socket reports it (an inherited socket has no path)."""
        return self._sock.getsockname()

    def stop_accepting(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def _client(self, stream: trio.SocketStream) -> None:
        try:
            pid, uid, gid = peer_credentials(stream.socket)
        except OSError:
            pid, uid, gid = -1, -1, -1
        log = self._log.bind(peer_pid=pid, peer_uid=uid)
        limits = self._limits()
        transport = UnixTransport(stream, limits.max_frame, peer=f"pid {pid}")
        conn = Connection(transport, self._handlers, limits, log.bind(actor="client"))
        if not self._allowed(pid, uid, gid):
            self.refused += 1
            log.warning("refused connection from another user")
            await self._refuse(conn, stream, ErrorCode.UNAUTHORIZED,
                               f"uid {uid} may not use this daemon (owner uid {self._uid})")
            return
        if len(self.connections) >= self._max:
            self.refused += 1
            log.warning("refused connection: too many connections", limit=self._max)
            await self._refuse(conn, stream, ErrorCode.LIMIT,
                               f"too many connections (limit {self._max})")
            return
        self.accepted += 1
        self.connections.add(conn)
        log.debug("client connected")
        try:
            await conn.run()
        except Exception:
            log.exception("connection failed")
        finally:
            self.connections.discard(conn)
            log.debug("client disconnected", requests=conn.requests)

    def _allowed(self, pid: int, uid: int, gid: int) -> bool:
        if uid in (self._uid, 0):
            return True
        mode: int | None
        socket_gid: int | None
        try:
            # The file as it is now (an operator may chgrp/chmod it), found by the bound
            # address: an inherited socket has no path of our own.
            found = os.stat(self.path or self.address)
            mode, socket_gid = stat.S_IMODE(found.st_mode), found.st_gid
        except (OSError, TypeError, ValueError):
            mode = socket_gid = None
        return peer_allowed(owner=self._uid, uid=uid, groups=peer_groups(pid, gid),
                            socket_mode=mode, socket_gid=socket_gid)

    async def _refuse(self, conn: Connection, stream: trio.SocketStream, code: ErrorCode,
                      message: str) -> None:
        with contextlib.suppress(Exception), trio.move_on_after(1):
            await stream.send_all(conn.encode(m.ErrorReply(id=None, code=code,
                                                           message=message)))
        with contextlib.suppress(Exception):
            await stream.aclose()

    async def close_connections(self, reason: str, timeout: float = 1.0) -> None:
        """Say goodbye to every client and give their queues a moment to drain."""
        for conn in list(self.connections):
            await conn.goodbye(reason)
        with trio.move_on_after(timeout):
            while any(c.outbox.frames for c in self.connections):
                await trio.sleep(0.01)

    def unlink(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

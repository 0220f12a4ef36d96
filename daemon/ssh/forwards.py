"""The ports of this machine forwarded to one computer (SSH remote port forwards).

The daemon's MCP endpoint (a loopback port here) is forwarded to the computer's loopback on
request, on the computer's main connection, once per connection: a new connection after a
loss re-opens the forwards the previous one had (`reopen`), asking for the same remote port
first so that agents still running (on an extra connection) keep their URL.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from daemon.log import Log
from daemon.ssh.bridge import Bridge, BridgeClosed
from daemon.ssh.login import ComputerError, Link, describe_error

FORWARD_TIMEOUT = 15.0
FORWARD_HOST = "127.0.0.1"
"""Both ends of a forward: the computer's loopback, to this machine's loopback."""


class ForwardRefused(ComputerError):
    """The server would not forward a port (OpenSSH's `AllowTcpForwarding`, or the port is
    taken): a configuration matter, not retried."""

    transient = False


class Forwards:
    """One computer's forwards: which local ports, and the remote port each had last."""

    def __init__(self, *, label: Callable[[], str], bridge: Bridge, log: Log) -> None:
        self._label = label
        self._bridge = bridge
        self._log = log
        self._forwarded: dict[int, int] = {}
        """Every local port forwarded so far -> its last remote port (asked for again on
        the next connection)."""

    def any(self) -> bool:
        return bool(self._forwarded)

    async def on(self, link: Link, local_port: int) -> int:
        """The remote port forwarded to `local_port` on `link`, opened if it is not yet."""
        port = link.forwards.get(local_port)
        if port is not None:
            return port
        async with link.forwarding:
            port = link.forwards.get(local_port)
            if port is not None:
                return port
            previous = self._forwarded.get(local_port, 0)
            try:
                port = await self._open(link, local_port, previous)
            except ForwardRefused:
                if not previous:
                    raise
                port = await self._open(link, local_port, 0)  # taken meanwhile
            link.forwards[local_port] = port
            self._forwarded[local_port] = port
            self._log.info("forwarded a port of this machine to the computer",
                           local_port=local_port, remote_port=port,
                           same_as_before=port == previous)
            return port

    async def _open(self, link: Link, local_port: int, remote_port: int) -> int:
        import asyncssh

        label = self._label()

        async def request() -> int:
            listener = await link.conn.forward_remote_port(FORWARD_HOST, remote_port,
                                                           FORWARD_HOST, local_port)
            return int(listener.get_port())

        try:
            with trio.fail_after(FORWARD_TIMEOUT):
                return await self._bridge.call(request)
        except trio.TooSlowError:
            raise ComputerError(f"{label} did not answer a port forwarding request "
                                f"within {FORWARD_TIMEOUT:g}s") from None
        except asyncssh.ChannelListenError as exc:
            raise ForwardRefused(
                f"{label} refused to forward a port back to this machine "
                f"({describe_error(exc)}); its sshd must allow it (AllowTcpForwarding "
                "yes or remote, see docs/REMOTE.md)") from None
        except (OSError, asyncssh.Error, BridgeClosed) as exc:
            raise ComputerError(f"{label}: {describe_error(exc)}") from None

    async def reopen(self, link: Link) -> None:
        """A new main connection: re-open the forwards the previous one had."""
        for local_port in list(self._forwarded):
            try:
                await self.on(link, local_port)
            except ComputerError as exc:
                self._log.warning("cannot forward a port to the computer again",
                                  local_port=local_port, error=str(exc))

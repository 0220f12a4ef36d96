"""An agent (or terminal, or git) process on a remote computer, as an `AgentProcess`.

It is one SSH exec channel running the launcher of `scripts.py`: the remote process leads a
process group of its own, and its pid, pgid and start time (read before it became the agent)
are its `ProcessIdentity`. Closing the channel would only hang up on it; stopping reaches the
whole remote tree instead: `stop` sends EOF on stdin (ACP's goodbye), then `TREE_KILL` over a
second channel (SIGTERM to the group and to processes carrying the actor's marker, the grace,
SIGKILL), exactly like the local stop. `kill()` cannot wait, so it starts that sequence with
no grace in the subsystem's nursery.

`wait()` resolves when the channel closes. The remote exit status or signal comes back over
SSH; when the *connection* went instead, the status has no code and its description names the
computer ("was cut off: the connection to computer 'build1' (dev@build1:22) was lost"), which
is how a turn running there ends with an error naming the host.
"""

from __future__ import annotations

import contextlib
import signal as signals
from typing import TYPE_CHECKING, Any

import trio

from daemon.execution.local import ExitStatus, ProcessIdentity, ProcessStreams
from daemon.ssh import scripts
from daemon.ssh.bridge import Bridge, BridgeClosed
from daemon.ssh.login import ComputerError
from daemon.ssh.streams import ChannelReceiveStream, ChannelSendStream

if TYPE_CHECKING:
    from daemon.ssh.computer import Computer

TICK = 0.05
"""`TREE_KILL` waits in ticks of this many seconds."""


class SshProcess(ProcessStreams):
    def __init__(self, computer: Computer, conn: Any, channel: Any,
                 identity: ProcessIdentity, stdout: ChannelReceiveStream) -> None:
        bridge: Bridge = computer.bridge
        super().__init__(ChannelSendStream(bridge, channel.stdin), stdout,
                         ChannelReceiveStream(bridge, channel.stderr), identity)
        self._computer = computer
        self._bridge = bridge
        self._conn = conn
        self._channel = channel
        self._status: ExitStatus | None = None
        self._closed = trio.Event()
        self._killed = False
        self._kill_started = False
        self._cut_off = False

    def start_watching(self) -> None:
        """Start the task that turns the channel's end into an `ExitStatus`."""
        self._computer.spawn_task(self._watch)

    # ------------------------------------------------------------------ AgentProcess
    # stdin, stdout, stderr and identity come from `ProcessStreams`.

    @property
    def returncode(self) -> int | None:
        status = self._status
        if status is None:
            return None
        if status.code is not None:
            return status.code
        return -status.signal if status.signal is not None else 255

    async def wait(self) -> ExitStatus:
        await self._closed.wait()
        assert self._status is not None
        return self._status

    async def stop(self, grace: float) -> ExitStatus:
        if not self._closed.is_set():
            await self._say_goodbye(grace, self._closed.wait)
        # Even after a clean exit: sweep descendants that left the group.
        await self._kill_tree(ticks=int(grace / TICK))
        with trio.move_on_after(2):
            await self._closed.wait()
        if not self._closed.is_set():
            await self._close_channel()
            await self._closed.wait()
        await self._close_streams()
        assert self._status is not None
        return self._status

    def kill(self) -> None:
        self._killed = True
        if not self._kill_started:
            self._kill_started = True
            self._computer.spawn_task(self._kill_now)

    def rss(self) -> int | None:
        if self._closed.is_set():
            return None
        return self._computer.rss_by_group.get(self._identity.pgid)

    # ------------------------------------------------------------------ internals

    async def _kill_now(self) -> None:
        await self._kill_tree(ticks=0)
        with trio.move_on_after(2):
            await self._closed.wait()
        if not self._closed.is_set():
            await self._close_channel()

    async def _kill_tree(self, *, ticks: int) -> None:
        """TERM, wait, KILL the group and the marked processes, over this process's own
        connection. If that connection is gone, the computer reclaims the tree when it
        reconnects (it was listed as an orphan when the connection was lost)."""
        if not self._computer.is_live(self._conn):
            return
        ident = self._identity
        command = scripts.tree_kill_command(pgid=ident.pgid, ticks=ticks, actor=ident.actor)
        try:
            await self._run_here(command, timeout=ticks * TICK + 15)
        except ComputerError as exc:
            self._computer.log.warning("could not stop a remote process tree",
                                       pid=ident.pid, error=str(exc))

    async def _run_here(self, command: str, *, timeout: float) -> None:
        import asyncssh

        try:
            with trio.fail_after(timeout):
                await self._bridge.call(self._conn.run, command, encoding=None, check=False)
        except asyncssh.ChannelOpenError:
            # This connection has no session to spare (MaxSessions): the process group is
            # on the same host, so any of the computer's connections can stop it.
            await self._computer.run(command, timeout=timeout)
        except trio.TooSlowError:
            raise ComputerError(f"{self._computer.label} did not answer within "
                                f"{timeout:g}s") from None
        except (OSError, asyncssh.Error, BridgeClosed) as exc:
            raise ComputerError(f"{self._computer.label}: {exc}") from None

    async def _close_channel(self) -> None:
        with contextlib.suppress(Exception):
            await self._bridge.call_sync(self._channel.close)

    async def _watch(self) -> None:
        try:
            with contextlib.suppress(Exception):
                await self._bridge.call(self._channel.wait_closed)
            if self._exit_status() is None:
                # No status: the connection is going (its close follows the channels'
                # within moments), or the server just did not send one.
                with trio.move_on_after(1), contextlib.suppress(Exception):
                    await self._bridge.call(self._conn.wait_closed)
        finally:
            self._status = self._exit_status() or self._no_status()
            if not self._cut_off:
                # Cut off, it stays listed: the computer turns it into an orphan to
                # reclaim when it sees the loss. Otherwise nothing of it is left.
                self._computer.release(self)
            self._closed.set()

    def _exit_status(self) -> ExitStatus | None:
        channel = self._channel
        sig = channel.exit_signal
        if sig:
            name = str(sig[0])
            try:
                return ExitStatus(code=None, signal=int(signals.Signals["SIG" + name]))
            except KeyError:
                return ExitStatus(code=None, signal=None, detail=f"killed by signal {name}")
        code = channel.exit_status
        if code is not None and code >= 0:
            return ExitStatus(code=int(code), signal=None)
        if self._killed:
            return ExitStatus(code=None, signal=int(signals.SIGKILL))
        return None

    def _no_status(self) -> ExitStatus:
        if not self._conn.is_closed():
            return ExitStatus(code=None, signal=None, detail="ended without an exit status")
        self._cut_off = True
        return ExitStatus(code=None, signal=None, detail=(
            f"was cut off: the connection to {self._computer.label} was lost"))

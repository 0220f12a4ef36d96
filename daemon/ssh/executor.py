"""`SshExecutor`: the `Executor` of a remote computer.

The backend actor cannot tell it from the local one: `spawn` gives an `AgentProcess` with
three byte streams, `files` confines file access to the agent's directory (over SFTP), and
`reclaim` finds leftovers of a previous daemon life by pid, start time and marker.

Environment. A local agent gets the daemon's environment plus its own `env`. A remote agent
gets the remote login environment (its PATH, HOME, ...) plus what the caller asked for beyond
this daemon's own environment: the agent's `[agents.X] env`, a terminal's variables, and the
markers `STOKER_INSTANCE` / `STOKER_ACTOR` that reclaim and the stop sweep look for. The
daemon's own variables (its PATH, its XDG dirs, its secrets) never cross to another host. A
variable whose value is identical here and in `env` is therefore not sent: set it in the
remote environment instead (see docs/REMOTE.md). Everything goes to the launcher on the
channel's stdin, before the agent's own input (`scripts.launch_command`): never as launcher
arguments, which any user of the remote host can read in /proc/PID/cmdline while it starts,
and not as SSH `env` requests, which servers drop unless `AcceptEnv` lists them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from daemon.execution.local import ACTOR_VAR, INSTANCE_VAR, ProcessIdentity, SpawnError
from daemon.ssh import scripts
from daemon.ssh.bridge import BridgeClosed
from daemon.ssh.computer import Computer
from daemon.ssh.files import SftpFiles
from daemon.ssh.login import ComputerError, describe_error
from daemon.ssh.mcp_stdio import StdioOffer
from daemon.ssh.process import SshProcess
from daemon.ssh.streams import ChannelReceiveStream, ChannelSendStream

MAX_PREAMBLE = 65536
REFUSALS_TRIED = 2
"""Sessions refused by the server (MaxSessions) retried on another connection."""


class SshExecutor:
    """Runs agents on one remote computer over its shared SSH connection."""

    def __init__(self, computer: Computer, instance: str) -> None:
        self.computer = computer
        self.name = computer.name
        self.instance = instance
        self._mcp = StdioOffer(computer)

    def files(self, root: str) -> SftpFiles:
        return SftpFiles(self.computer, root)

    async def mcp_stdio_entry(self, http: dict[str, Any]) -> dict[str, Any]:
        """Stoker's MCP server for an agent here that takes stdio only: a bridge to the
        HTTP entry `http` (mcp_stdio.py); `offer.Unavailable` says why there is none."""
        return await self._mcp.entry(http)

    async def spawn(self, argv: list[str], *, env: Mapping[str, str], cwd: str,
                    actor: str, merge_stderr: bool = False) -> SshProcess:
        extra = forwarded(env)
        extra.update({INSTANCE_VAR: self.instance, ACTOR_VAR: actor})
        return await self.start(argv, env=extra, cwd=cwd, actor=actor,
                                merge_stderr=merge_stderr)

    async def start(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str,
                    actor: str, unset: Sequence[str] = (),
                    merge_stderr: bool = False) -> SshProcess:
        """Start `argv` with exactly `env` added to the login environment (no filtering:
        the worktree host uses it for git's fixed variables)."""
        import asyncssh

        computer = self.computer
        launch = scripts.launch_command(argv, cwd=cwd, env=env, unset=unset,
                                        merge_stderr=merge_stderr)
        for attempt in range(REFUSALS_TRIED + 1):
            async with computer.session_slot() as conn:
                try:
                    channel = await computer.bridge.call(conn.create_process, launch.command,
                                                         encoding=None)
                except asyncssh.ChannelOpenError as exc:
                    if attempt < REFUSALS_TRIED and computer.refused(conn, describe_error(exc)):
                        continue
                    raise ComputerError(f"cannot start {argv[0]!r} on {computer.label}: "
                                        f"the server refused a session "
                                        f"({describe_error(exc)}); see MaxSessions in "
                                        "docs/REMOTE.md") from None
                except (OSError, asyncssh.Error, BridgeClosed) as exc:
                    raise ComputerError(f"cannot start {argv[0]!r} on {computer.label}: "
                                        f"{describe_error(exc)}") from None
                return await self._launched(argv, cwd, actor, conn, channel, launch.stdin)
        raise AssertionError("unreachable")  # the last attempt returns or raises

    async def _launched(self, argv: Sequence[str], cwd: str, actor: str, conn: Any,
                        channel: Any, stdin: bytes) -> SshProcess:
        """The launcher runs on `channel`: give it its environment, read its identity."""
        computer = self.computer
        # Queued on the channel before the launcher runs; if it cannot be written, the
        # launcher says so ("env") or the channel's end explains, below.
        with contextlib.suppress(trio.BrokenResourceError):
            await ChannelSendStream(computer.bridge, channel.stdin).send_all(stdin)
        stdout = ChannelReceiveStream(computer.bridge, channel.stdout)
        try:
            line, rest = await _first_line(stdout, float(computer.config.connect_timeout))
            launched = scripts.parse_identity(line)
        except scripts.LaunchFailed as exc:
            await _abandon(computer, channel)
            if exc.reason == "cwd":
                raise SpawnError(f"working directory {cwd!r} does not exist on computer "
                                 f"{computer.name!r}") from None
            if exc.reason == "notfound":
                raise SpawnError(f"command not found on computer {computer.name!r}: "
                                 f"{argv[0]!r}") from None
            raise ComputerError(f"cannot start {argv[0]!r} on {computer.label}: the "
                                f"launcher did not receive its environment") from None
        except (ValueError, trio.TooSlowError) as exc:
            said = await _stderr_of(computer, channel)
            await _abandon(computer, channel)
            why = said or (str(exc) if isinstance(exc, ValueError)
                           else "the launcher did not start in time")
            raise ComputerError(f"cannot start {argv[0]!r} on {computer.label}: {why}"
                                ) from None
        identity = ProcessIdentity(pid=launched.pid, pgid=launched.pgid,
                                   start_time=float(launched.start), computer=self.name,
                                   actor=actor)
        proc = SshProcess(computer, conn, channel, identity,
                          ChannelReceiveStream(computer.bridge, channel.stdout, rest))
        computer.adopt(proc, conn)
        proc.start_watching()
        return proc

    async def reclaim(self, identity: ProcessIdentity) -> bool:
        """Queue the tree for reclaim on the next connection (made in the background now).
        The daemon's startup does not wait on a remote host that may be down; no agent
        starts on the computer before the queue is done. Returns False: nothing was killed
        *yet* (the computer logs it when it is)."""
        self.computer.add_orphan(identity)
        await trio.lowlevel.checkpoint()
        return False


def forwarded(env: Mapping[str, str]) -> dict[str, str]:
    """What of `env` differs from this daemon's own environment (see the module doc)."""
    own = os.environ
    return {k: v for k, v in env.items()
            if own.get(k) != v and k not in scripts.SCRUB and k not in (INSTANCE_VAR, ACTOR_VAR)}


async def _first_line(stream: ChannelReceiveStream, timeout: float) -> tuple[bytes, bytes]:
    """The launcher's identity line and whatever came after it in the same reads. Lines
    before it are skipped: a login script that talks on stdout (bash reads ~/.bashrc for
    commands run by sshd) must not break the launch."""
    buf = b""
    skipped = 0
    with trio.fail_after(timeout):
        while True:
            while b"\n" in buf:
                line, _, rest = buf.partition(b"\n")
                if line.startswith((scripts.IDENTITY_PREFIX, scripts.ERROR_PREFIX)):
                    return line, rest
                skipped += len(line) + 1
                buf = rest
            if skipped + len(buf) > MAX_PREAMBLE:
                raise ValueError(f"unexpected launcher output {buf[:200]!r}")
            data = await stream.receive_some(65536)
            if not data:
                raise ValueError("the launcher ended before it started the command")
            buf += data


async def _stderr_of(computer: Computer, channel: Any) -> str:
    """What the remote shell said on stderr (e.g. `setsid: not found`), briefly."""
    stream = ChannelReceiveStream(computer.bridge, channel.stderr)
    chunks: list[bytes] = []
    with trio.move_on_after(1):
        while data := await stream.receive_some(4096):
            chunks.append(data)
            if sum(len(c) for c in chunks) > 4096:
                break
    text = b"".join(chunks).decode("utf-8", "replace").strip()
    return " | ".join(line.strip() for line in text.splitlines()[-3:] if line.strip())


async def _abandon(computer: Computer, channel: Any) -> None:
    try:
        await computer.bridge.call_sync(channel.close)
    except Exception:  # it is being thrown away
        pass


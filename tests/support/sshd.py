"""A real SSH server on loopback for the remote-agent tests, run as its own process.

    python -m tests.support.sshd --port PORT --host-key FILE --authorized-keys FILE
                         [--port-file FILE] [--child-env NAME=VALUE ...] [--exec-log FILE]

It is asyncssh's server (plain asyncio; nothing of the daemon runs here): public key
authentication against `--authorized-keys`, the host key from `--host-key` (so a restart on
the same port presents the same key and the daemon's known_hosts entry stays valid), SFTP on
the local file system, and `exec` requests run with `/bin/sh -c COMMAND` on this machine,
like OpenSSH does: the shell starts a new session (OpenSSH calls setsid(2) for every
session), stdin/stdout/stderr are wired to the channel, and the exit status or the killing
signal goes back to the client. Remote port forwards (`tcpip-forward`) are allowed, as
OpenSSH's default `AllowTcpForwarding yes` does. Its processes are real local processes, so
a second exec channel's `kill -TERM -PGID` really reaches them.

It is a separate process so that a test can `kill -9` it to make "the host" vanish mid-turn,
and start it again. `--child-env` adds variables to the commands' environment only (the
tests put their leftover marker there, which the server itself must not carry).
`--exec-log` appends every exec request, as received, to a file (one JSON string a line):
what crossed the wire as a command line, for tests of what must never be in one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import asyncssh


async def _pump_in(reader: asyncssh.SSHReader[bytes], writer: asyncio.StreamWriter) -> None:
    """Channel -> the command's stdin; EOF on the channel closes its stdin."""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (asyncssh.Error, OSError):
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass


async def _pump_out(reader: asyncio.StreamReader, writer: asyncssh.SSHWriter[bytes]) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            writer.write(data)
            await writer.drain()
    except (asyncssh.Error, OSError):
        return


def _record(path: str, command: str) -> None:
    """Append `command` to the exec log (a few bytes on a local disk: not worth a thread)."""
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(command) + "\n")


def _make_handler(child_env: dict[str, str], exec_log: str | None) -> object:
    async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command
        if exec_log and command:
            _record(exec_log, command)
        if not command:
            process.stderr.write(b"this test server only runs commands\n")
            process.exit(1)
            return
        env = dict(os.environ)
        env.update(child_env)
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, cwd=os.path.expanduser("~"), start_new_session=True)
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        feeder = asyncio.ensure_future(_pump_in(process.stdin, proc.stdin))
        await asyncio.gather(_pump_out(proc.stdout, process.stdout),
                             _pump_out(proc.stderr, process.stderr))
        code = await proc.wait()
        feeder.cancel()
        try:
            if code < 0:
                name = signal.Signals(-code).name.removeprefix("SIG")
                process.exit_with_signal(name)
            else:
                process.exit(code)
        except (asyncssh.Error, OSError):
            pass

    return handle


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True  # always authenticate: keys only

    def password_auth_supported(self) -> bool:
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return True  # remote port forwarding, as OpenSSH allows by default


async def serve(args: argparse.Namespace) -> None:
    child_env = dict(item.split("=", 1) for item in args.child_env)
    server = await asyncssh.create_server(
        _Server, "127.0.0.1", args.port,
        server_host_keys=[args.host_key],
        authorized_client_keys=args.authorized_keys,
        process_factory=_make_handler(child_env, args.exec_log),
        sftp_factory=True, allow_scp=False, encoding=None,
        keepalive_interval=0)
    port = server.sockets[0].getsockname()[1]
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(str(port))
        os.replace(tmp, args.port_file)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.support.sshd")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host-key", required=True)
    parser.add_argument("--authorized-keys", required=True)
    parser.add_argument("--port-file")
    parser.add_argument("--child-env", action="append", default=[])
    parser.add_argument("--exec-log")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

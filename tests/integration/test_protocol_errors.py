"""Bad input gets a clear error and changes nothing else: malformed, truncated, oversized
frames, unknown requests, requests before hello, other users. The daemon and its other
clients carry on throughout (a turn streams on another connection meanwhile)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import pytest
import trio

from daemon.client import RequestFailed
from protocol import messages as m
from tests.support.harness import DaemonFactory, DaemonProcess, open_chat, turn, wait_turn_end

T = TypeVar("T")
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(m.ClientSideServerMessage)


class Raw:
    """A hand-driven connection for sending broken frames."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buf = b""

    def send(self, message: object) -> None:
        self.frame(_enc.encode(message))

    def frame(self, payload: bytes) -> None:
        self.sock.sendall(len(payload).to_bytes(4, "big") + payload)

    def recv(self) -> object:
        while len(self.buf) < 4 or len(self.buf) < 4 + int.from_bytes(self.buf[:4], "big"):
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.buf += data
        size = int.from_bytes(self.buf[:4], "big")
        payload, self.buf = self.buf[4:4 + size], self.buf[4 + size:]
        return _dec.decode(payload)

    def error(self) -> m.ErrorReply:
        """The next message, which must be an error reply."""
        message = self.recv()
        assert isinstance(message, m.ErrorReply), message
        return message

    def closed(self) -> bool:
        try:
            while True:
                self.recv()
        except EOFError:
            return True

    def close(self) -> None:
        self.sock.close()


def hello(raw: Raw) -> None:
    raw.send(m.Hello(client="raw"))
    assert isinstance(raw.recv(), m.Welcome)


async def run(fn: Callable[..., T], *args: Any) -> T:
    """Blocking socket calls off the trio thread (the daemon is another process)."""
    return await trio.to_thread.run_sync(fn, *args)


async def test_bad_frames_get_errors_and_hurt_nobody(daemon: DaemonProcess) -> None:
    async with daemon.client("bystander") as bystander:
        info = await open_chat(bystander, "steady", cwd=daemon.work)
        await bystander.request(m.Subscribe(id=0, chat=info.chat))
        streaming = await bystander.request(m.Prompt(id=0, chat=info.chat,
                                                     text="/chunks 3000"))

        raw = Raw(str(daemon.socket))
        # A request before hello.
        raw.send(m.Ping(id=7))
        error = await run(raw.error)
        assert (error.id, error.code) == (7, "hello_required")
        # A wrong protocol version, then the right hello.
        raw.send(m.Hello(protocol=99))
        error = await run(raw.error)
        assert error.code == "protocol_version"
        await run(hello, raw)
        # Not msgpack at all.
        raw.frame(b"\xc1\xc1 not msgpack")
        error = await run(raw.error)
        assert (error.id, error.code) == (None, "bad_frame")
        # Valid msgpack, unknown request type: the error names the id.
        raw.frame(_enc.encode({"type": "make_coffee", "id": 12}))
        error = await run(raw.error)
        assert (error.id, error.code) == (12, "unknown_request")
        # Known type, wrong field types.
        raw.frame(_enc.encode({"type": "prompt", "id": 13, "chat": 42}))
        error = await run(raw.error)
        assert (error.id, error.code) == (13, "bad_request")
        assert "chat" in error.message
        # Unknown chat and agent.
        raw.send(m.Prompt(id=14, chat="no-such-chat", text="hi"))
        error = await run(raw.error)
        assert (error.id, error.code) == (14, "unknown_chat")
        raw.send(m.OpenChat(id=15, agent="no-such-agent", cwd=str(daemon.work)))
        error = await run(raw.error)
        assert (error.id, error.code) == (15, "unknown_agent")
        # Still a working connection.
        raw.send(m.Ping(id=16))
        pong = await run(raw.recv)
        assert isinstance(pong, m.RawReply)
        assert pong.id == 16
        # An oversized frame: error, then that connection (only) closes.
        raw.sock.sendall((1 << 30).to_bytes(4, "big") + b"x" * 16)
        error = await run(raw.error)
        assert error.code == "frame_too_large"
        assert await run(raw.closed)
        raw.close()
        # A truncated frame, then EOF.
        cut = Raw(str(daemon.socket))
        await run(hello, cut)
        cut.sock.sendall((100).to_bytes(4, "big") + b"abc")
        cut.sock.shutdown(socket.SHUT_WR)
        assert await run(cut.closed)
        cut.close()

        ended = await wait_turn_end(bystander, info.chat, streaming.turn)
        assert ended.stop_reason == "end_turn"
        assert (await turn(bystander, info.chat, "still fine")).text == "still fine"


async def test_nul_bytes_in_paths_are_bad_requests_that_change_nothing(
        daemon: DaemonProcess) -> None:
    raw = Raw(str(daemon.socket))
    await run(hello, raw)
    nul = f"{daemon.work}\x00/etc"
    for request, field in ((m.ListChats(id=21, cwd=nul), "cwd"),
                           (m.OpenChat(id=22, chat="nul", cwd=nul), "cwd"),
                           (m.OpenChat(id=23, chat="nul", project=nul), "project"),
                           (m.WorkspaceNew(id=24, project=nul), "project")):
        raw.send(request)
        error = await run(raw.error)
        assert (error.id, error.code) == (request.id, "bad_request")
        assert f"$.{field}" in error.message
    # Nothing was created, and the connection still serves.
    raw.send(m.ListChats(id=25, include_closed=True))
    listing = await run(raw.recv)
    assert isinstance(listing, m.RawReply)
    assert listing.id == 25
    assert msgspec.msgpack.decode(listing.result, type=m.ChatList).chats == []
    raw.close()


async def test_invalid_arguments_are_clear_errors(daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        with pytest.raises(RequestFailed) as bad_id:
            await open_chat(client, "../etc", cwd=daemon.work)
        assert bad_id.value.code == "bad_request"
        with pytest.raises(RequestFailed) as relative:
            await open_chat(client, "rel", cwd="relative/dir")
        assert "absolute" in relative.value.message
        with pytest.raises(RequestFailed) as missing:
            await open_chat(client, "gone", cwd=str(daemon.work / "missing"))
        assert "not a directory" in missing.value.message
        info = await open_chat(client, "empty", cwd=daemon.work)
        with pytest.raises(RequestFailed) as empty:
            await client.request(m.Prompt(id=0, chat=info.chat, text="   "))
        assert empty.value.code == "bad_request"
        await client.request(m.CloseChat(id=0, chat=info.chat))
        with pytest.raises(RequestFailed) as closed:
            await client.request(m.Prompt(id=0, chat=info.chat, text="hi"))
        assert closed.value.code == "invalid_state"


def test_socket_and_directory_permissions(daemon: DaemonProcess) -> None:
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon.socket.parent).st_mode) == 0o700


def test_other_users_are_refused_by_peer_uid(daemon: DaemonProcess) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another user")
    # Open the file permissions so the connection reaches the daemon's own check.
    os.chmod(daemon.base, 0o755)
    os.chmod(daemon.socket.parent, 0o755)
    os.chmod(daemon.socket, 0o666)
    script = (
        "import os, socket, sys\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(5)\n"
        "s.connect(sys.argv[1])\n"
        "data = b''\n"
        "while True:\n"
        "    chunk = s.recv(65536)\n"
        "    if not chunk: break\n"
        "    data += chunk\n"
        "sys.stdout.buffer.write(data)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(daemon.socket)],
                            capture_output=True, timeout=20)
    assert result.returncode == 0, result.stderr
    data = result.stdout
    message = _dec.decode(data[4:4 + int.from_bytes(data[:4], "big")])
    assert isinstance(message, m.ErrorReply)
    assert message.code == "unauthorized"
    assert "65534" in daemon.log_text()


def test_client_verbs_without_a_daemon_say_so(tmp_path: object) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOKER_")}
    env["STOKER_SOCKET"] = "/tmp/stoker-no-daemon-here.sock"
    for argv in (["status"], ["ls"], ["send", "hello"], ["inspect", "x"]):
        result = subprocess.run([sys.executable, "-m", "daemon.cli", *argv], env=env,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 1, (argv, result.stderr)
        assert "not running" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    usage = subprocess.run([sys.executable, "-m", "daemon.cli", "send", "--nope"], env=env,
                           capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2


async def test_silent_connections_lose_their_slot_and_real_clients_get_in(
        daemon_factory: DaemonFactory) -> None:
    """Connections that never say hello are closed after `hello_timeout`, so a handful of
    them (here: every slot) cannot lock real clients out for good."""
    daemon = daemon_factory(config=(
        "[daemon]\nmax_connections = 4\nhello_timeout = \"500ms\"\nidle_timeout = \"0s\"\n"))
    daemon.start()
    silent = [Raw(str(daemon.socket)) for _ in range(4)]
    try:
        for raw in silent:
            error = await run(raw.error)
            assert error.code == "hello_required"
            assert "no hello within 0.5s" in error.message
            goodbye = await run(raw.recv)
            assert isinstance(goodbye, m.Goodbye), goodbye
            assert await run(raw.closed)
        # Every slot is free again: a real client is served.
        async with daemon.client() as client:
            info = await open_chat(client, "after", cwd=daemon.work)
            assert (await turn(client, info.chat, "in")).text == "in"
    finally:
        for raw in silent:
            raw.close()


async def test_idle_connections_without_a_subscription_are_closed(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=(
        "[daemon]\nidle_timeout = \"500ms\"\n[channels]\nheartbeat = \"100ms\"\n"))
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "watched", cwd=daemon.work)
    idle = Raw(str(daemon.socket))
    watching = Raw(str(daemon.socket))
    try:
        await run(hello, idle)
        await run(hello, watching)
        watching.send(m.Subscribe(id=1, chat=info.chat))
        # The idle one is told why and closed.
        goodbye = await run(idle.recv)
        assert isinstance(goodbye, m.Goodbye), goodbye
        assert "idle for 0.5s" in goodbye.reason
        assert await run(idle.closed)
        # The subscribed one is never idle: it keeps getting heartbeats well past the
        # idle timeout (counted, not slept: each heartbeat is 100 ms of daemon time).
        heartbeats = 0
        while heartbeats < 10:
            message = await run(watching.recv)
            assert not isinstance(message, m.Goodbye), message
            heartbeats += isinstance(message, m.Heartbeat)
    finally:
        idle.close()
        watching.close()

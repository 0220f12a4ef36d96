"""Clients that vanish rudely, against a real daemon on real sockets: a TCP or Unix reset
(SO_LINGER 0, so `close` sends RST) while the daemon writes to them or reads their
request, a half-close, a WebSocket close frame followed by a reset, a request body that
stops half-way. On every network entry point (the Unix socket, the WebSocket, the HTTP API,
the MCP endpoint) each ends its own connection only: the daemon stays up and answers, a
bystander's turn streaming meanwhile ends once with `end_turn`, and nothing is logged as a
traceback.

A reset is made while the daemon has data in flight: the hostile client stops reading a
turn of tens of thousands of deltas (`coalesce_chunks = 0`: one delta per chunk), so the
daemon's writes meet the reset as they happen (the failure seen in b45cfbe, where the
error left a nursery as an ExceptionGroup no caller caught and took the process down)."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
import trio

from daemon.client import Client
from protocol import deltas as d
from protocol import messages as m
from tests.integration.test_mcp_http import ECHO, Rig, bearer, connections_on
from tests.integration.test_tasks import mcp
from tests.support.acp_tee import tee_command
from tests.support.harness import (
    DaemonFactory,
    DaemonProcess,
    collect_turn,
    open_chat,
    short_tmpdir,
    subscribe,
    wait_log,
)
from tests.support.http_client import CONFIG, HttpDaemon, start_http_daemon

STREAMING = "[daemon]\ncoalesce_chunks = 0\n" + CONFIG
LONG_TURN = "/chunks 50000"


# ------------------------------------------------------------------------- helpers


def reset(sock: socket.socket) -> None:
    """Close with a reset (RST) rather than a FIN: SO_LINGER on with a zero timeout. (A
    Unix socket ignores SO_LINGER; closed with unread data, it resets its peer all the
    same: the daemon's next read or write fails with ECONNRESET.)"""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def recv(sock: socket.socket, size: int = 65536, timeout: float = 30.0) -> bytes:
    with trio.fail_after(timeout):
        return await trio.to_thread.run_sync(sock.recv, size, abandon_on_cancel=True)


async def recv_until(sock: socket.socket, marker: bytes, timeout: float = 30.0) -> bytes:
    data = b""
    with trio.fail_after(timeout):
        while marker not in data:
            more = await trio.to_thread.run_sync(sock.recv, 65536,
                                                   abandon_on_cancel=True)
            assert more, f"closed before {marker!r}: {data[:300]!r}"
            data += more
    return data


async def recv_at_least(sock: socket.socket, size: int, timeout: float = 60.0) -> bytes:
    data = b""
    with trio.fail_after(timeout):
        while len(data) < size:
            more = await trio.to_thread.run_sync(sock.recv, 65536,
                                                   abandon_on_cancel=True)
            assert more, f"closed after {len(data)} bytes"
            data += more
    return data


async def recv_all(sock: socket.socket, timeout: float = 30.0) -> bytes:
    """Everything until the daemon closes the connection."""
    data = b""
    with trio.fail_after(timeout):
        while more := await trio.to_thread.run_sync(sock.recv, 65536,
                                                   abandon_on_cancel=True):
            data += more
    return data


def unix_frames(data: bytes) -> list[dict[str, Any]]:
    frames = []
    while data:
        (size,) = struct.unpack(">I", data[:4])
        frames.append(msgspec.msgpack.decode(data[4:4 + size]))
        data = data[4 + size:]
    return frames


def frame(payload: bytes) -> bytes:
    """One Unix socket frame: a 4-byte big-endian length, then msgpack."""
    return struct.pack(">I", len(payload)) + payload


def unix_request(message: object) -> bytes:
    return frame(msgspec.msgpack.encode(message))


@dataclass
class Bystander:
    """A well-behaved client whose turn streams while the hostile ones misbehave."""

    proc: DaemonProcess
    client: Client
    chat: str
    turn: int

    async def ends_once(self) -> None:
        try:
            result = await collect_turn(self.client, self.chat, self.turn, timeout=180)
        except Exception as exc:
            raise AssertionError(f"the bystander's turn did not end: {exc!r}\n"
                                 f"{self.proc.log_text()[-8000:]}") from exc
        ended = [x.body for x in result.deltas
                 if isinstance(x.body, d.TurnEnded) and x.turn == self.turn]
        assert len(ended) == 1, ended
        assert ended[0].stop_reason == "end_turn", ended[0]


@asynccontextmanager
async def bystander(proc: DaemonProcess, chat: str = "bystander"
                    ) -> AsyncIterator[Bystander]:
    async with proc.client("bystander") as client:
        await open_chat(client, chat, cwd=proc.work)
        await subscribe(client, chat)
        accepted: m.PromptAccepted = await client.request(
            m.Prompt(id=0, chat=chat, text=LONG_TURN))
        yield Bystander(proc, client, chat, accepted.turn)


async def streaming_chat(proc: DaemonProcess, chat: str) -> int:
    """Open `chat` and start a long turn on it; the turn number."""
    async with proc.client("starter") as client:
        await open_chat(client, chat, cwd=proc.work)
        accepted: m.PromptAccepted = await client.request(
            m.Prompt(id=0, chat=chat, text=LONG_TURN))
    return accepted.turn


async def still_serves(proc: DaemonProcess) -> None:
    """The process is alive, a fresh client is answered, and nothing was a traceback."""
    assert proc.proc is not None
    assert proc.proc.poll() is None, proc.log_text()[-4000:]
    async with proc.client("after") as client:
        await client.request(m.GetStatus(id=0))
    assert "Traceback" not in proc.log_text(), proc.log_text()[-6000:]


@pytest.fixture
async def http(daemon_factory: DaemonFactory) -> HttpDaemon:
    return await start_http_daemon(daemon_factory, STREAMING)


def tcp_address(http: HttpDaemon) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(http.base)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


# ------------------------------------------------------------------------- Unix socket


def unix_connect(proc: DaemonProcess) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(proc.socket))
    return sock


async def unix_subscribed(proc: DaemonProcess, chat: str) -> socket.socket:
    """A raw Unix socket client, said hello and subscribed to `chat` from its start, that
    has read its first bytes of the stream and then reads nothing more."""
    sock = unix_connect(proc)
    sock.sendall(unix_request(m.Hello(client="hostile"))
                 + unix_request(m.Subscribe(id=1, chat=chat, since=m.Cursor(seq=0))))
    await recv_at_least(sock, 64 * 1024)
    return sock


async def test_unix_clients_reset_while_their_turn_streams(http: HttpDaemon) -> None:
    proc = http.proc
    await streaming_chat(proc, "hostile")
    async with bystander(proc) as other:
        socks = [await unix_subscribed(proc, "hostile") for _ in range(3)]
        for sock in socks:
            reset(sock)
        await other.ends_once()
    await still_serves(proc)


async def test_a_unix_client_resets_mid_request(http: HttpDaemon) -> None:
    proc = http.proc
    async with bystander(proc) as other:
        for cut in (1, 3, 10):
            sock = unix_connect(proc)
            whole = (unix_request(m.Hello(client="hostile"))
                     + unix_request(m.Prompt(id=1, chat="bystander", text="x" * 1000)))
            sock.sendall(whole[:len(whole) - cut])
            reset(sock)
        # A request whose frame says 1 MiB, cut after a few bytes.
        sock = unix_connect(proc)
        sock.sendall(unix_request(m.Hello(client="hostile")) + struct.pack(">I", 1 << 20)
                     + b"\x85" * 100)
        reset(sock)
        await other.ends_once()
    await still_serves(proc)


async def test_a_unix_client_half_closes_and_still_reads_its_answers(
        http: HttpDaemon) -> None:
    proc = http.proc
    async with bystander(proc) as other:
        sock = unix_connect(proc)
        sock.sendall(unix_request(m.Hello(client="hostile"))
                     + unix_request(m.GetStatus(id=7)))
        sock.shutdown(socket.SHUT_WR)
        # Its answers still come (welcome, then the reply), then the daemon closes.
        frames = unix_frames(await recv_all(sock))
        assert [f["type"] for f in frames][:2] == ["welcome", "reply"], frames
        assert frames[1]["id"] == 7
        assert frames[1]["result"]["pid"] == proc.pid
        sock.close()
        # A request that waits (a running task's result, up to 1 s) is answered too.
        task: m.TaskInfo = await other.client.request(
            m.TaskNew(id=0, parent="bystander", prompt="/sleep 60000"))
        sock = unix_connect(proc)
        sock.sendall(unix_request(m.Hello(client="hostile"))
                     + unix_request(m.GetTask(id=8, task=task.task, wait=1.0)))
        sock.shutdown(socket.SHUT_WR)
        frames = unix_frames(await recv_all(sock))
        assert [(f["type"], f.get("id")) for f in frames][:2] == [("welcome", None),
                                                                 ("reply", 8)], frames
        assert frames[1]["result"]["state"] == "running"
        sock.close()
        # Closed whole (not half) with such a request in flight, for up to an hour: nobody
        # can read its answer, and the connection ends at once.
        mark = len(proc.log_text())
        sock = unix_connect(proc)
        sock.sendall(unix_request(m.Hello(client="hostile"))
                     + unix_request(m.GetTask(id=9, task=task.task, wait=3600)))
        await wait_log(proc, f"task asked.*task={task.task} wait=3600", after=mark)
        assert unix_frames(await recv(sock))[0]["type"] == "welcome"
        sock.close()  # nothing unread: an orderly close, not a reset
        await wait_log(proc, f'client disconnected" peer_pid={os.getpid()} .*requests=1',
                       after=mark, timeout=30)
        await other.client.request(m.TaskCancel(id=0, task=task.task))
        # Half-closed while subscribed to a streaming turn: the connection ends, alone.
        sock = await unix_subscribed(proc, "bystander")
        sock.shutdown(socket.SHUT_WR)
        await recv(sock)
        reset(sock)
        await other.ends_once()
    await still_serves(proc)


# ------------------------------------------------------------------------- WebSocket


def ws_handshake(http: HttpDaemon, host: str, port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {http.token}\r\n\r\n"
            ).encode()


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final, masked client frame."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = struct.pack(">BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, size)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def ws_json(message: object) -> bytes:
    return ws_frame(msgspec.json.encode(message))


async def test_websocket_clients_reset_during_the_handshake(http: HttpDaemon) -> None:
    proc = http.proc
    host, port = tcp_address(http)
    async with bystander(proc) as other:
        whole = ws_handshake(http, host, port)
        for cut in (len(whole) // 3, len(whole) - 2, *[len(whole)] * 10):
            sock = socket.create_connection((host, port))
            sock.sendall(whole[:cut])
            reset(sock)  # the whole handshake: the daemon's 101 meets the reset
        # Upgraded, a hello sent, reset before the welcome is read.
        for _ in range(5):
            sock = socket.create_connection((host, port))
            sock.sendall(whole)
            await recv_until(sock, b"\r\n\r\n")
            sock.sendall(ws_json(m.Hello(encoding="json", client="hostile")))
            reset(sock)
        await other.ends_once()
    await still_serves(proc)


async def ws_subscribed(http: HttpDaemon, chat: str) -> socket.socket:
    """A raw WebSocket client, upgraded, said hello (JSON) and subscribed to `chat` from its
    start, that has read its first bytes of the stream and then reads nothing more."""
    host, port = tcp_address(http)
    sock = socket.create_connection((host, port))
    sock.sendall(ws_handshake(http, host, port))
    await recv_until(sock, b"\r\n\r\n")
    sock.sendall(ws_json(m.Hello(encoding="json", client="hostile"))
                 + ws_json(m.Subscribe(id=1, chat=chat, since=m.Cursor(seq=0))))
    await recv_at_least(sock, 64 * 1024)
    return sock


async def test_websocket_clients_reset_while_their_turn_streams(http: HttpDaemon) -> None:
    proc = http.proc
    await streaming_chat(proc, "hostile")
    async with bystander(proc) as other:
        socks = [await ws_subscribed(http, "hostile") for _ in range(3)]
        for sock in socks:
            reset(sock)
        await other.ends_once()
    await still_serves(proc)


async def test_websocket_clients_send_a_close_frame_then_reset(http: HttpDaemon) -> None:
    proc = http.proc
    await streaming_chat(proc, "hostile")
    async with bystander(proc) as other:
        for _ in range(3):
            sock = await ws_subscribed(http, "hostile")
            sock.sendall(ws_frame(struct.pack(">H", 1000) + b"bye", opcode=0x8))
            reset(sock)
        # A close frame with a request in flight that waits up to an hour: the connection
        # ends at once (nobody can read the answer after a WebSocket close).
        task: m.TaskInfo = await other.client.request(
            m.TaskNew(id=0, parent="bystander", prompt="/sleep 60000"))
        sock = await ws_subscribed(http, "hostile")
        peer = "{}:{}".format(*sock.getsockname())
        sock.sendall(ws_json(m.GetTask(id=2, task=task.task, wait=3600))
                     + ws_frame(struct.pack(">H", 1000), opcode=0x8))
        await recv_all(sock)
        sock.close()
        await wait_log(proc, f"websocket client disconnected\" peer={peer} ", timeout=30)
        await other.client.request(m.TaskCancel(id=0, task=task.task))
        # And one that reads a little more after its close frame before the reset.
        sock = await ws_subscribed(http, "hostile")
        sock.sendall(ws_frame(struct.pack(">H", 1000), opcode=0x8))
        await recv(sock)
        reset(sock)
        await other.ends_once()
    await still_serves(proc)


async def test_websocket_clients_send_garbage_after_the_handshake(http: HttpDaemon) -> None:
    """Bytes that are no WebSocket frame, a text message that is not UTF-8, an unmasked
    frame, a reserved opcode, an oversized ping: each ends its own connection."""
    proc = http.proc
    host, port = tcp_address(http)
    for junk in (b"\x00" * 100, b"\xff" * 100, ws_frame(b"\xff\xfe"), b"\x81\x05hello",
                 ws_frame(b"x" * 200, opcode=0x3), ws_frame(b"x" * 200, opcode=0x9)):
        sock = socket.create_connection((host, port))
        sock.sendall(ws_handshake(http, host, port))
        await recv_until(sock, b"\r\n\r\n")
        sock.sendall(ws_json(m.Hello(encoding="json", client="hostile")) + junk)
        with trio.fail_after(30):
            while await trio.to_thread.run_sync(sock.recv, 65536, abandon_on_cancel=True):
                pass
        sock.close()
    await still_serves(proc)


# ------------------------------------------------------------------------- HTTP API


def http_request(http: HttpDaemon, method: str, path: str, body: bytes = b"",
                 length: int | None = None) -> bytes:
    host, port = tcp_address(http)
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {http.token}\r\n")
    if body or length is not None:
        head += (f"Content-Type: application/json\r\n"
                 f"Content-Length: {len(body) if length is None else length}\r\n")
    return (head + "\r\n").encode() + body


async def test_http_clients_reset_while_their_responses_are_written(http: HttpDaemon) -> None:
    """Hundreds of pipelined requests, none of their responses read: the daemon's writes
    fill the socket's buffers and meet the reset."""
    proc = http.proc
    host, port = tcp_address(http)
    async with bystander(proc) as other:
        for path in ("/openapi.json", "/api/status", "/"):
            sock = socket.create_connection((host, port))
            sock.sendall(http_request(http, "GET", path) * 400)
            await recv_at_least(sock, 64 * 1024)
            reset(sock)
        await other.ends_once()
    await still_serves(proc)
    async with http.client() as client:
        answer = await client.get("/api/status", headers=http.auth)
    assert answer.status_code == 200


async def test_http_request_bodies_that_stop_half_way(http: HttpDaemon) -> None:
    proc = http.proc
    host, port = tcp_address(http)
    prompt = json.dumps({"chat": "bystander", "text": "hi"}).encode()
    async with bystander(proc) as other:
        # Cut, then reset.
        for cut in (1, len(prompt) // 2):
            sock = socket.create_connection((host, port))
            sock.sendall(http_request(http, "POST", "/api/prompt", prompt[:cut],
                                      length=len(prompt)))
            reset(sock)
        # Cut, then half-closed: a clear error, then the connection ends.
        sock = socket.create_connection((host, port))
        sock.sendall(http_request(http, "POST", "/api/prompt", prompt[:5], length=len(prompt)))
        sock.shutdown(socket.SHUT_WR)
        answer = await recv_until(sock, b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400"), answer
        sock.close()
        await other.ends_once()
        # None of the cut prompts was accepted: the next turn is the one after the
        # bystander's.
        following: m.PromptAccepted = await other.client.request(
            m.Prompt(id=0, chat="bystander", text="after"))
        assert following.turn == other.turn + 1
    await still_serves(proc)


# ------------------------------------------------------------------------- MCP endpoint


@pytest.fixture
def rig(daemon_factory: DaemonFactory) -> Rig:
    """A daemon whose `parent` agent takes MCP over HTTP (its session setup recorded, for
    the chat's bearer credential), with one delta per chunk."""
    base = short_tmpdir()
    trace_dir = base / "traces"
    trace_dir.mkdir()
    parent = tee_command(trace_dir / "p", [*ECHO, "--mcp-http"])
    daemon = daemon_factory(base=base, config=(
        f"[daemon]\ncoalesce_chunks = 0\n[agents.parent]\ncommand = {json.dumps(parent)}\n"))
    daemon.start()
    return Rig(daemon, trace_dir)


async def mcp_endpoint(rig: Rig, chat: str) -> tuple[str, int, str, str]:
    """(host, port, path, bearer) of `chat`'s MCP endpoint, bound by a first tool call."""
    async with rig.daemon.client("mcp") as client:
        await open_chat(client, chat, agent="parent", cwd=rig.daemon.work)
        await mcp(client, chat, "list_tasks")
    entry = rig.entry_for(chat)
    url = urllib.parse.urlsplit(entry["url"])
    assert url.hostname is not None
    assert url.port is not None
    return url.hostname, url.port, url.path, bearer(entry)


def mcp_post(host: str, port: int, path: str, authorization: str, body: bytes,
             length: int | None = None) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {authorization}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
            ).encode() + body


def rpc(method: str, params: object = None, id: int = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": id, "method": method,
                       "params": params or {}}).encode()


async def mcp_still_serves(host: str, port: int, path: str, authorization: str) -> None:
    sock = socket.create_connection((host, port))
    sock.sendall(mcp_post(host, port, path, authorization, rpc("tools/list")))
    answer = await recv_until(sock, b"spawn_task")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    sock.close()


async def test_mcp_clients_reset_mid_request(rig: Rig) -> None:
    proc = rig.daemon
    host, port, path, authorization = await mcp_endpoint(rig, "boss")
    body = rpc("tools/call", {"name": "list_tasks", "arguments": {}})
    async with bystander(proc) as other:
        # Cut in the head, in the body, then reset.
        whole = mcp_post(host, port, path, authorization, body)
        for cut in (20, len(whole) - len(body) // 2, len(whole) - 1):
            sock = socket.create_connection((host, port))
            sock.sendall(whole[:cut])
            reset(sock)
        # A whole call that waits (a task's result, up to 60 s), reset while it waits.
        async with proc.client("mcp") as client:
            task = await mcp(client, "boss", "spawn_task",
                             {"agent": "echo", "prompt": "/sleep 60000"})
        waiting = rpc("tools/call", {"name": "task_result",
                                     "arguments": {"id": task["id"], "wait_seconds": 60}})
        for _ in range(3):
            mark = len(proc.log_text())
            sock = socket.create_connection((host, port))
            sock.sendall(mcp_post(host, port, path, authorization, waiting))
            await wait_log(proc, f"task asked.*task={task['id']} wait=60", after=mark)
            reset(sock)
        # Each waiting call ended with its connection (none is left for its 60 s).
        with trio.fail_after(30):
            while connections_on(proc.pid, port):
                await trio.sleep(0.05)
        await other.ends_once()
    await mcp_still_serves(host, port, path, authorization)
    await still_serves(proc)


async def test_mcp_clients_reset_while_their_responses_are_written(rig: Rig) -> None:
    """Pipelined calls whose answers are not read, then a reset."""
    proc = rig.daemon
    host, port, path, authorization = await mcp_endpoint(rig, "boss")
    async with bystander(proc) as other:
        for _ in range(3):
            sock = socket.create_connection((host, port))
            sock.sendall(b"".join(mcp_post(host, port, path, authorization,
                                           rpc("tools/list", id=i)) for i in range(100)))
            await recv_at_least(sock, 16 * 1024)
            reset(sock)
        await other.ends_once()
    await mcp_still_serves(host, port, path, authorization)
    await still_serves(proc)


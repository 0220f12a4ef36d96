"""The WebSocket listener against a real daemon: handshake policy (token, Origin, limits),
the protocol in both encodings compared with the Unix socket, replay, errors, limits.

Every daemon here binds port 0 and reports the port it got in `status.websocket`, which the
tests read over the Unix socket: no port is guessed, so parallel runs cannot collide.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import stat
import struct
import urllib.parse
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec
import psutil
import pytest
import trio
from trio_websocket import CloseReason, ConnectionClosed, ConnectionRejected, open_websocket_url

from daemon.client import RequestFailed
from daemon.listeners.websocket.listener import PENDING_HANDSHAKES
from protocol import deltas as d
from protocol import messages as m
from protocol.codec import Encoding
from protocol.errors import ErrorCode
from tests.support.bystander import assert_within_twice, bystander
from tests.support.harness import DaemonFactory, DaemonProcess, open_chat, turn, wait_log
from tests.support.ws_client import WsClient, auth_headers

ALLOWED = "https://allowed.example"
CONFIG = f"""
[channels]
heartbeat = "200ms"

[websocket]
enabled = true
port = 0
allowed_origins = ["{ALLOWED}"]
max_connections = 3
max_message = "64KiB"
"""


class WsDaemon:
    """A running daemon with WebSocket enabled, its URL and token."""

    def __init__(self, proc: DaemonProcess, url: str) -> None:
        self.proc = proc
        self.url = url

    @property
    def token(self) -> str:
        return self.proc.cli("token").stdout.strip()

    def connect(self, encoding: Encoding = "json", **kwargs: Any
                ) -> AbstractAsyncContextManager[WsClient]:
        return WsClient.connect(self.url, token=kwargs.pop("token", self.token),
                                encoding=encoding, **kwargs)


@pytest.fixture
async def ws(daemon_factory: DaemonFactory) -> WsDaemon:
    return await _ws_daemon(daemon_factory, CONFIG)


async def _ws_daemon(daemon_factory: DaemonFactory, config: str) -> WsDaemon:
    proc = daemon_factory(config=config)
    proc.start()
    async with proc.client() as client:
        status: m.StatusResult = await client.request(m.GetStatus(id=0))
    assert status.websocket is not None
    assert status.websocket.startswith("ws://127.0.0.1:")
    assert not status.websocket.endswith(":0/")
    return WsDaemon(proc, status.websocket)


async def _until_closed(client: WsClient, timeout: float = 15.0
                        ) -> tuple[list[Any], CloseReason]:
    """Read until the daemon closes the connection: what came before, and the close."""
    received: list[Any] = []
    with trio.fail_after(timeout):
        while True:
            try:
                received.append(await client.receive())
            except ConnectionClosed as closed:
                reason = closed.reason
                break
    assert reason is not None
    return received, reason


async def _rejected(url: str, headers: list[tuple[bytes, bytes]],
                    subprotocols: list[str] | None = None) -> ConnectionRejected:
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(url, extra_headers=headers, subprotocols=subprotocols):
            pass
    return info.value


# ------------------------------------------------------------------------- handshake


async def test_token_and_origin_are_checked_before_the_upgrade(ws: WsDaemon) -> None:
    token = ws.token
    assert (await _rejected(ws.url, [])).status_code == 401
    assert (await _rejected(ws.url, auth_headers("not-the-token"))).status_code == 401
    assert (await _rejected(ws.url, auth_headers(token + "x"))).status_code == 401
    assert (await _rejected(ws.url, [(b"Authorization", f"Basic {token}".encode())])
            ).status_code == 401
    # A web page: refused unless its origin is listed, whatever token it has.
    bad = await _rejected(ws.url, auth_headers(token, origin="https://evil.example"))
    assert bad.status_code == 403
    assert b"evil.example" in (bad.body or b"")
    assert (await _rejected(ws.url, auth_headers(None, origin=ALLOWED))).status_code == 401
    # A listed origin with the token is accepted.
    async with ws.connect(origin=ALLOWED) as client:
        assert client.welcome is not None
        assert client.welcome.encoding == "json"
    # Browsers send the token as a subprotocol; the daemon selects plain `stoker`.
    async with WsClient.connect(ws.url, token=None, origin=ALLOWED,
                                subprotocols=["stoker", f"stoker.bearer.{token}"]) as client:
        assert client.ws.subprotocol == "stoker"
        pong = await client.request(m.Ping(id=0))
        assert isinstance(pong, m.Pong)
    assert (await _rejected(ws.url, [], subprotocols=["stoker", "stoker.bearer.nope"])
            ).status_code == 401
    log = ws.proc.log_text()
    assert "refused websocket handshake" in log
    assert token not in log, "the token must never be logged"


async def test_rotated_token_applies_to_the_next_handshake(ws: WsDaemon) -> None:
    old = ws.token
    token_file = ws.proc.state_dir / "websocket.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == old
    async with ws.connect(token=old) as kept:
        rotated = ws.proc.cli("token", "--rotate")
        assert rotated.returncode == 0, rotated.stderr
        new = rotated.stdout.strip()
        assert new != old
        assert len(new) >= 43
        assert ws.token == new
        assert (await _rejected(ws.url, auth_headers(old))).status_code == 401
        async with ws.connect(token=new) as client:
            await client.request(m.Ping(id=0))
        # A connection opened with the old token was authorised then and stays open.
        await kept.request(m.Ping(id=0))


def test_token_command_works_without_a_daemon(daemon_factory: DaemonFactory) -> None:
    proc = daemon_factory()
    first = proc.cli("token")
    assert first.returncode == 0, first.stderr
    token_file = proc.state_dir / "websocket.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert proc.cli("token").stdout == first.stdout
    as_json = proc.cli("token", "--json")
    assert first.stdout.strip() in as_json.stdout


async def test_status_shows_the_url(ws: WsDaemon) -> None:
    shown = ws.proc.cli("status", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["websocket"] == ws.url


async def test_a_busy_port_leaves_the_daemon_running_without_websocket(
        daemon_factory: DaemonFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = daemon_factory(config=f"[websocket]\nenabled = true\nport = {port}\n")
        proc.start()
        async with proc.client() as client:
            status: m.StatusResult = await client.request(m.GetStatus(id=0))
    assert status.websocket is None
    assert "websocket disabled: cannot listen" in proc.log_text()


async def test_websocket_is_off_by_default(daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        status: m.StatusResult = await client.request(m.GetStatus(id=0))
    assert status.websocket is None
    assert not (daemon.state_dir / "websocket.token").exists()


# ------------------------------------------------------------------------- protocol


def _turn_shape(deltas: list[d.Delta], turn_id: int) -> list[tuple[str, str]]:
    """What must be identical across transports: each delta of the turn, kind and text."""
    return [(str(type(x.body).__struct_config__.tag), getattr(x.body, "text", ""))
            for x in deltas if x.turn == turn_id]


async def _ws_turn(client: WsClient, chat: str, text: str) -> tuple[int, list[d.Delta]]:
    accepted: m.PromptAccepted = await client.request(m.Prompt(id=0, chat=chat, text=text))
    deltas: list[d.Delta] = []
    with trio.fail_after(20):
        while True:
            event = await client.next_event()
            if isinstance(event, d.Delta) and event.chat == chat:
                deltas.append(event)
                if event.turn == accepted.turn and isinstance(event.body, d.TurnEnded):
                    return accepted.turn, deltas


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_same_protocol_as_the_unix_socket(ws: WsDaemon, encoding: Encoding) -> None:
    prompt = "hello there warm world"
    async with ws.proc.client() as unix:
        unix_chat = await open_chat(unix, "via-unix", cwd=ws.proc.work)
        unix_turn = await turn(unix, unix_chat.chat, prompt)
    async with ws.connect(encoding) as client:
        assert client.welcome is not None
        assert client.welcome.encoding == encoding
        assert client.welcome.max_frame == 64 * 1024
        info: m.ChatInfo = await client.request(m.OpenChat(id=0, agent="echo",
                                                           cwd=str(ws.proc.work)))
        assert info.created
        assert info.head_seq == 0
        sub: m.Subscribed = await client.request(m.Subscribe(id=0, chat=info.chat))
        assert sub.epoch == info.epoch
        complete = await client.next_event()
        assert isinstance(complete, m.ReplayComplete)
        assert complete.head_seq == 0
        turn_id, deltas = await _ws_turn(client, info.chat, prompt)
        assert _turn_shape(deltas, turn_id) == _turn_shape(unix_turn.deltas, unix_turn.turn)
        assert "".join(x.body.text for x in deltas if isinstance(x.body, d.Text)) == prompt
        seqs = [x.seq for x in deltas]
        assert seqs == list(range(1, len(seqs) + 1)), "gapless seqs from 1"
        # Heartbeats carry the head seq of every subscribed chat (turn-less deltas such as
        # the actor's `status` may follow turn_ended: the head is the last delta seen).
        last = seqs[-1]
        with trio.fail_after(5):
            while not isinstance(beat := await client.next_event(), m.Heartbeat):
                if isinstance(beat, d.Delta):
                    last = beat.seq
        assert beat.heads == {info.chat: last}
        # Every daemon message came in the frame type of the chosen encoding.
        assert set(client.raw_types) == {str if encoding == "json" else bytes}
    await _check_replay(ws, encoding, info, head=last)


async def _check_replay(ws: WsDaemon, encoding: Encoding, info: m.ChatInfo, head: int
                        ) -> None:
    async with ws.connect(encoding) as client:
        # since {seq: 0}: everything retained, then replay_complete, in order.
        request = m.Subscribe(id=0, chat=info.chat, since=m.Cursor(seq=0), live=False)
        sub = await client.request(request)
        assert (sub.head_seq, sub.floor_seq) == (head, 1)
        replayed = [await client.next_event() for _ in range(head + 1)]
        assert [x.seq for x in replayed[:-1]] == list(range(1, head + 1))
        # replay_complete names the subscribe request it completes.
        assert replayed[-1] == m.ReplayComplete(chat=info.chat, head_seq=head,
                                                request=request.id)
        # A cursor in the same epoch: only what follows it.
        await client.request(m.Subscribe(id=0, chat=info.chat,
                                         since=m.Cursor(seq=head - 2, epoch=info.epoch)))
        tail = [await client.next_event() for _ in range(3)]
        assert [getattr(x, "seq", None) for x in tail[:2]] == [head - 1, head]
        assert isinstance(tail[2], m.ReplayComplete)
        # A cursor from another epoch cannot be served: resync with a snapshot.
        await client.request(m.Subscribe(id=0, chat=info.chat,
                                         since=m.Cursor(seq=1, epoch="another-epoch")))
        resync = await client.next_event()
        assert isinstance(resync, m.ResyncRequired)
        assert resync.seq == head
        assert resync.snapshot.chat == info.chat


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_errors_are_values_and_the_connection_carries_on(ws: WsDaemon,
                                                               encoding: Encoding) -> None:
    async with ws.connect(encoding) as client:
        await client.send_raw("{not json" if encoding == "json" else b"\xc1\xc1")
        bad = await client.receive()
        assert isinstance(bad, m.ErrorReply)
        assert (bad.code, bad.id) == (ErrorCode.BAD_FRAME, None)
        await client.send({"type": "no_such_request", "id": 7})
        unknown = await client.receive()
        assert isinstance(unknown, m.ErrorReply)
        assert (unknown.code, unknown.id) == (ErrorCode.UNKNOWN_REQUEST, 7)
        await client.send({"type": "prompt", "id": 8})
        invalid = await client.receive()
        assert isinstance(invalid, m.ErrorReply)
        assert (invalid.code, invalid.id) == (ErrorCode.BAD_REQUEST, 8)
        with pytest.raises(RequestFailed) as failed:
            await client.request(m.Subscribe(id=0, chat="no-such-chat"))
        assert failed.value.code == ErrorCode.UNKNOWN_CHAT
        assert isinstance(await client.request(m.Ping(id=0)), m.Pong)


async def test_requests_before_hello_are_refused(ws: WsDaemon) -> None:
    async with open_websocket_url(ws.url, extra_headers=auth_headers(ws.token)) as conn:
        await conn.send_message('{"type": "ping", "id": 1}')
        with trio.fail_after(10):
            decoded = msgspec.json.decode(await conn.get_message(), type=m.ErrorReply)
        assert (decoded.code, decoded.id) == (ErrorCode.HELLO_REQUIRED, 1)


# ------------------------------------------------------------------------- limits


async def test_oversized_message_closes_only_that_connection(ws: WsDaemon) -> None:
    async with ws.connect("msgpack") as bystander, ws.connect("json") as client:
        huge = m.Prompt(id=1, chat="x", text="a" * (64 * 1024 + 1))
        await client.send(huge)
        _, closed = await _until_closed(client)
        assert closed.code == 1009
        assert isinstance(await bystander.request(m.Ping(id=0)), m.Pong)
    async with ws.connect() as fresh:
        assert isinstance(await fresh.request(m.Ping(id=0)), m.Pong)
    assert ws.proc.proc is not None
    assert ws.proc.proc.poll() is None


def _masked(payload: bytes, first: int = 0x81) -> bytes:
    """One client frame (masked, as a client's must be), of fewer than 126 bytes."""
    mask = os.urandom(4)
    return (bytes([first, 0x80 | len(payload)]) + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each whole frame the daemon sent (unmasked)."""
    frames = []
    while len(data) >= 2:
        size, at = data[1] & 0x7F, 2
        if size == 126:
            size, at = struct.unpack_from(">H", data, 2)[0], 4
        elif size == 127:
            size, at = struct.unpack_from(">Q", data, 2)[0], 10
        if len(data) < at + size:
            break
        frames.append((data[0] & 0x0F, data[at:at + size]))
        data = data[at + size:]
    return frames


async def _recv_until(sock: socket.socket, marker: bytes, received: bytes = b"") -> bytes:
    with trio.fail_after(10):
        while marker not in received:
            more = await trio.to_thread.run_sync(sock.recv, 65536, abandon_on_cancel=True)
            assert more, received
            received += more
    return received


async def test_a_frame_header_declaring_a_huge_message_is_refused_at_once(
        daemon_factory: DaemonFactory) -> None:
    """trio-websocket checks `max_message` only as a payload arrives: a header declaring
    2^62 bytes, then nothing, held its connection until `idle_timeout` (an hour here). It
    is refused as soon as the header is read (whole, or in pieces): a close frame 1009,
    then the connection ends, logged; a bystander is not affected."""
    ws = await _ws_daemon(daemon_factory, '[daemon]\nidle_timeout = "1h"\n' + CONFIG)
    address = urllib.parse.urlsplit(ws.url)
    assert address.hostname is not None
    assert address.port is not None
    header = struct.pack(">BBQ", 0x82, 0x80 | 127, 1 << 62) + os.urandom(4)
    async with ws.connect("msgpack") as bystander:
        for pieces in ([header], [header[:1], header[1:3], header[3:]]):
            mark = len(ws.proc.log_text())
            sock = socket.create_connection((address.hostname, address.port))
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {address.netloc}\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                         f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                         f"Authorization: Bearer {ws.token}\r\n\r\n".encode())
            received = await _recv_until(sock, b"\r\n\r\n")
            sock.sendall(_masked(msgspec.json.encode(m.Hello(encoding="json", client="raw"))))
            received = await _recv_until(sock, b"welcome", received)
            assert received.startswith(b"HTTP/1.1 101 "), received[:200]
            for piece in pieces:
                sock.sendall(piece)
            with trio.fail_after(10):  # not idle_timeout
                while more := await trio.to_thread.run_sync(sock.recv, 65536,
                                                              abandon_on_cancel=True):
                    received += more
            sock.close()
            frames = _server_frames(received.partition(b"\r\n\r\n")[2])
            assert frames[-1][0] == 0x8, frames
            assert frames[-1][1][:2] == struct.pack(">H", 1009), frames[-1]
            await wait_log(ws.proc, "closing connection: frame too large.* "
                           f"error=\"frame of {1 << 62} bytes exceeds the limit of 65536",
                           after=mark)
        assert isinstance(await bystander.request(m.Ping(id=0)), m.Pong)


async def test_connection_limit(ws: WsDaemon) -> None:
    token = ws.token
    async with ws.connect(token=token) as first, ws.connect(token=token), \
            ws.connect(token=token):
        refused = await _rejected(ws.url, auth_headers(token))
        assert refused.status_code == 503
        await first.request(m.Ping(id=0))
    # Once those closed, a slot frees as soon as the daemon has seen the close.
    with trio.fail_after(10):
        while (status := await _try_connect(ws, token)) == 503:
            await trio.sleep(0.02)
    assert status == 101


async def _try_connect(ws: WsDaemon, token: str) -> int:
    """101 if a connection could be opened and used, else the handshake's HTTP status."""
    try:
        async with ws.connect(token=token) as client:
            await client.request(m.Ping(id=0))
    except ConnectionRejected as exc:
        return exc.status_code
    return 101


FLOOD = 400
"""Silent TCP connections opened at once: more than the descriptor table the test leaves
the daemon (FD_LIMIT), so before the gate each one cost the daemon a descriptor."""
FD_LIMIT = 200


def _streams(daemon: psutil.Process, port: int) -> int:
    return sum(1 for c in daemon.net_connections("tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)


async def test_a_flood_of_silent_tcp_connections_exhausts_no_descriptors(
        ws: WsDaemon) -> None:
    daemon = psutil.Process(ws.proc.pid)
    # At start the daemon raised its soft open-file limit to the hard one...
    soft, hard = daemon.rlimit(psutil.RLIMIT_NOFILE)
    assert soft == hard
    # ...which here is made small, as systemd's soft 1024 once was, to flood it for real.
    daemon.rlimit(psutil.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
    host, port = ws.url.removeprefix("ws://").rstrip("/").rsplit(":", 1)
    flood: list[socket.socket] = []
    async with bystander(ws.proc) as other:
        baseline = await other.sample()
        before = daemon.num_fds()
        try:
            await _flood(ws, daemon, host, int(port), before, flood)
            # Another Unix-socket client's turns: within twice their normal latency.
            assert_within_twice(baseline, await other.sample())
        finally:
            for sock in flood:
                sock.close()
    # Once the flood is gone, WebSocket clients get in again.
    token = ws.token
    with trio.fail_after(30):
        while await _try_connect(ws, token) != 101:
            await trio.sleep(0.05)


async def _flood(ws: WsDaemon, daemon: psutil.Process, host: str, port: int, before: int,
             flood: list[socket.socket]) -> None:
    for _ in range(FLOOD):
        flood.append(socket.create_connection((host, port), timeout=10))
    # The daemon takes up to max_connections + PENDING_HANDSHAKES of them (a condition,
    # not a sleep); the rest wait in the kernel's backlog, costing it nothing.
    # (Counted as the daemon's established TCP streams on the port: its descriptor
    # count also moves with unrelated sockets, such as a Unix client still closing.)
    with trio.fail_after(30):
        while _streams(daemon, port) < 3 + PENDING_HANDSHAKES:
            await trio.sleep(0.02)
    assert daemon.num_fds() >= before + 3 + PENDING_HANDSHAKES - 1
    # Unix-socket clients are served and new agents start (pipes, a process).
    async with ws.proc.client() as client:
        info = await open_chat(client, "flooded", cwd=ws.proc.work)
        assert (await turn(client, info.chat, "still served")).text == "still served"
    assert daemon.num_fds() < FD_LIMIT - 32


async def test_shutdown_says_goodbye_and_closes_going_away(ws: WsDaemon) -> None:
    async with ws.connect("msgpack") as client:
        await client.request(m.Ping(id=0))
        assert ws.proc.proc is not None
        os.kill(ws.proc.pid, signal.SIGTERM)
        received, closed = await _until_closed(client)
        assert closed.code == 1001
        goodbyes = [x for x in received if isinstance(x, m.Goodbye)]
        assert len(goodbyes) == 1
        assert "shutting down" in goodbyes[0].reason
    assert ws.proc.proc.wait(20) == 0

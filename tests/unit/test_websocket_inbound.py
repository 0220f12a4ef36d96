"""The WebSocket's inbound frame headers (daemon/listeners/websocket/inbound.py):
`FrameScanner` finds a message over the limit from its headers alone, however the bytes are
cut; `ClientStream` (over a socket pair) ends the stream there, after a close frame 1009 once
the handshake was answered 101, and writes nothing after it."""

from __future__ import annotations

import os
import struct

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from daemon.listeners.websocket.inbound import ClientStream, FrameScanner, close_frame

LIMIT = 1000


def client_frame(payload: bytes, opcode: int = 0x2, fin: bool = True) -> bytes:
    """A masked client frame (the mask is kept, the payload is not masked: the scanner
    does not read payloads)."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        head = struct.pack(">BB", first, 0x80 | size)
    elif size < 65536:
        head = struct.pack(">BBH", first, 0x80 | 126, size)
    else:
        head = struct.pack(">BBQ", first, 0x80 | 127, size)
    return head + os.urandom(4) + payload


def huge_header(size: int = 1 << 62) -> bytes:
    return struct.pack(">BBQ", 0x82, 0x80 | 127, size) + os.urandom(4)


def scan(data: bytes, cuts: list[int]) -> int | None:
    """Feed `data` cut at `cuts`; the absolute offset of the refused header, or None."""
    scanner = FrameScanner(LIMIT)
    at = 0
    for cut in [*sorted(cuts), len(data)]:
        cut = max(cut, at)
        found = scanner.feed(data[at:cut])
        if found is not None:
            return at + found[0]
        at = cut
    return None


def test_a_huge_header_is_refused_with_its_declared_size() -> None:
    assert FrameScanner(LIMIT).feed(huge_header()) == (0, 1 << 62)


def test_messages_within_the_limit_pass_and_each_counts_alone() -> None:
    data = b"".join(client_frame(b"x" * n) for n in (0, 1, 125, 126, LIMIT)) * 3
    assert scan(data, []) is None


def test_the_frames_of_one_message_add_up_and_control_frames_do_not() -> None:
    first = client_frame(b"x" * 600, opcode=0x1, fin=False)
    ping = client_frame(b"p" * 100, opcode=0x9)
    second = client_frame(b"x" * 300, opcode=0x0, fin=False)
    third = client_frame(b"x" * 200, opcode=0x0)
    assert scan(first + ping + second + ping, []) is None
    assert scan(first + ping + second + third, []) == len(first + ping + second)


@given(st.lists(st.integers(min_value=0, max_value=3000), max_size=12))
def test_the_refused_header_is_found_however_the_bytes_are_cut(cuts: list[int]) -> None:
    before = client_frame(b"a" * 500) + client_frame(b"b" * 200, opcode=0x9)
    data = before + client_frame(b"c" * 900) + huge_header() + b"\x00" * 100
    assert scan(before + client_frame(b"c" * 900), cuts) is None
    assert scan(data, cuts) == len(before) + len(client_frame(b"c" * 900))


REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def _stream(replay: bytes) -> tuple[trio.SocketStream, ClientStream]:
    """(the client's end, the daemon's `ClientStream`) of a Unix socket pair."""
    ours, theirs = trio.socket.socketpair()
    stream = ClientStream(trio.SocketStream(ours), replay, head_size=len(REQUEST),
                          max_message=LIMIT)
    return trio.SocketStream(theirs), stream


@pytest.mark.parametrize("answer", [b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                                    b"HTTP/1.1 401 Unauthorized\r\n\r\n"])
async def test_the_stream_ends_at_the_refused_header(answer: bytes) -> None:
    ok = client_frame(b"hello")
    client, stream = _stream(REQUEST + ok)
    await client.send_all(huge_header())
    assert await stream.receive_some(65536) == REQUEST + ok
    async with trio.open_nursery() as nursery:
        # The refusal waits for the handshake's answer: only after a 101 is there a close.
        ended = trio.Event()

        async def receive() -> None:
            assert await stream.receive_some(65536) == b""
            ended.set()

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        assert not ended.is_set()
        await stream.send_all(answer)
    assert stream.refused == 1 << 62
    closing = close_frame(1009, f"message of {1 << 62} bytes exceeds the limit of {LIMIT} bytes")
    expected = answer + (closing if b" 101 " in answer else b"")
    sent = b""
    while len(sent) < len(expected):
        sent += await client.receive_some()
    assert sent == expected
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"\x81\x02hi")
    assert await stream.receive_some(65536) == b""

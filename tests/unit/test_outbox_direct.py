"""A connection's idle writer lends its outbox the socket's write-without-waiting
(`Outbox.direct`, `UnixTransport.send_now`): frames go into the socket from the task that
offers them. Over a real Unix socket pair: the order holds whatever the socket takes, what it
does not take is queued for the writer, and a broken socket falls back to the writer."""

from __future__ import annotations

import socket

import trio

from daemon.channels.channel import Outbox
from daemon.listeners.unix import UnixTransport


def _pair() -> tuple[UnixTransport, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    return UnixTransport(stream, max_frame=1 << 20, peer="test"), theirs


def _outbox() -> Outbox:
    return Outbox(max_frames=100_000, max_bytes=1 << 30, hard_max_bytes=1 << 31)


def _armed(outbox: Outbox) -> bool:
    return outbox.direct is not None


def _read_all(peer: socket.socket) -> bytes:
    out = bytearray()
    while True:
        try:
            data = peer.recv(1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


async def test_frames_go_straight_into_the_socket_in_order() -> None:
    transport, peer = _pair()
    outbox = _outbox()
    outbox.direct = transport.send_now
    outbox.put(b"reply;")
    assert outbox.offer(b"one;")
    assert outbox.offer_batch([b"two;", b"three;"], 10)
    assert not outbox.frames
    assert outbox.direct_frames == 4
    assert _read_all(peer) == b"reply;one;two;three;"
    peer.close()


async def test_what_the_socket_does_not_take_is_queued_before_the_rest() -> None:
    """The peer does not read: the socket fills, the part of a frame it did not take (or
    the whole frame) is queued, nothing overtakes it, and every byte arrives once, in order,
    when the writer sends what was queued."""
    transport, peer = _pair()
    outbox = _outbox()
    outbox.direct = transport.send_now
    big = b"<" + b"x" * (1 << 20) + b">"
    assert outbox.offer(big)
    assert 0 < outbox.nbytes < len(big)  # the socket took part of it: the rest is queued
    frames = [big] + [bytes([65 + i % 26]) * 1000 + b"|" for i in range(200)]
    for frame in frames[1:]:
        assert outbox.offer(frame)
    assert outbox.frames  # from the first write the socket did not take whole, on
    # through the writer, which is the only way out once something is queued
    assert outbox.direct_frames == 0
    received = bytearray()
    async with trio.open_nursery() as nursery:
        async def drain() -> None:
            while True:
                await trio.lowlevel.wait_readable(peer)
                data = _read_all(peer)
                received.extend(data)
                if len(received) >= sum(map(len, frames)):
                    return

        nursery.start_soon(drain)
        while outbox.frames:
            await transport.send_batch(outbox.take(1 << 16))
    assert bytes(received) == b"".join(frames)
    peer.close()


async def test_a_broken_socket_leaves_the_frame_to_the_writer() -> None:
    transport, peer = _pair()
    peer.close()
    outbox = _outbox()
    outbox.direct = transport.send_now
    assert outbox.offer(b"lost?")
    assert not _armed(outbox)
    assert list(outbox.frames) == [b"lost?"]  # the writer's send finds the broken pipe


async def test_nothing_goes_direct_while_frames_are_queued_or_the_outbox_is_closed() -> None:
    transport, peer = _pair()
    outbox = _outbox()
    outbox.put(b"first;")  # queued: no direct sender yet (the writer is busy)
    outbox.direct = transport.send_now
    assert outbox.offer(b"second;")
    assert list(outbox.frames) == [b"first;", b"second;"]
    outbox.take(1 << 20)
    outbox.closed = True
    assert outbox.offer(b"third;")
    assert list(outbox.frames) == [b"third;"]
    assert _read_all(peer) == b""
    peer.close()

"""The fan-out floor: a raw trio Unix-socket pump of the same bytes, without the daemon.

`python -m tests.bench.pump SOCKET DELTAS SUBSCRIBERS [encode]` listens on SOCKET, waits for
SUBSCRIBERS connections, then writes to each the frames a `/chunks DELTAS` turn produces
(the same `Delta` structs, framed by the same `FrameEncoder`), coalesced into 256 KB sends
like the daemon's connection writer, ending with a `turn_ended` delta. It prints "ready"
once listening, "started T" (`time.perf_counter()`) once every subscriber is connected and
it begins, and exits when every subscriber has been served.

Without `encode` the frames are encoded before the clock starts: a ceiling (what the
readers can absorb), not a floor. With `encode` each delta is built and encoded inside the
timed loop, once, and its bytes fanned out to every subscriber's sender (as the hub does):
the floor a server that produces the deltas must pay, without the agent, ACP decoding, the
store or the pool.
"""

from __future__ import annotations

import os
import sys
import time

import trio

from protocol import deltas as d
from protocol.framing import FrameEncoder

BATCH = 256 * 1024
"""The daemon's `SEND_BATCH_BYTES`."""


def frames(count: int) -> list[bytes]:
    enc = FrameEncoder(max_frame=1 << 31)
    out = [enc.encode(d.Delta(chat="bench", seq=i + 1, ts=1.7e9, turn=1,
                              body=d.Text(text=f"c{i}" if i == 0 else f" c{i}")))
           for i in range(count)]
    out.append(enc.encode(d.Delta(chat="bench", seq=count + 1, ts=1.7e9, turn=1,
                                  body=d.TurnEnded(stop_reason="end_turn"))))
    return out


async def serve(path: str, count: int, subscribers: int) -> None:
    # Each batch is joined per send, as the daemon's writer does (not pre-joined once),
    # so the floor pays the same copies.
    all_frames = frames(count)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(subscribers + 8)
    listener = trio.SocketListener(sock)
    print("ready", flush=True)
    streams = [await listener.accept() for _ in range(subscribers)]
    print(f"started {time.perf_counter()!r}", flush=True)

    async def pump(stream: trio.SocketStream) -> None:
        current: list[bytes] = []
        size = 0
        for frame in all_frames:
            current.append(frame)
            size += len(frame)
            if size >= BATCH:
                await stream.send_all(b"".join(current))
                current, size = [], 0
        if current:
            await stream.send_all(b"".join(current))

    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(pump, stream)
    for stream in streams:
        await stream.aclose()
    await listener.aclose()
    os.unlink(path)


async def serve_encoding(path: str, count: int, subscribers: int) -> None:
    """The floor: encode inside the loop, once per delta, and fan the batches out."""
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(subscribers + 8)
    listener = trio.SocketListener(sock)
    print("ready", flush=True)
    streams = [await listener.accept() for _ in range(subscribers)]
    print(f"started {time.perf_counter()!r}", flush=True)
    channels = [trio.open_memory_channel[bytes](16) for _ in streams]

    async def produce() -> None:
        enc = FrameEncoder(max_frame=1 << 31)
        senders = [send for send, _ in channels]
        current: list[bytes] = []
        size = 0
        for i in range(count + 1):
            body: d.DeltaBody = (d.Text(text=f"c{i}" if i == 0 else f" c{i}") if i < count
                                 else d.TurnEnded(stop_reason="end_turn"))
            frame = enc.encode(d.Delta(chat="bench", seq=i + 1, ts=time.time(), turn=1,
                                       body=body))
            current.append(frame)
            size += len(frame)
            if size >= BATCH or i == count:
                data = b"".join(current)
                current, size = [], 0
                for send in senders:
                    await send.send(data)
        for send in senders:
            await send.aclose()

    async def pump(stream: trio.SocketStream, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        async with receive:
            async for data in receive:
                await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        for stream, (_, receive) in zip(streams, channels, strict=True):
            nursery.start_soon(pump, stream, receive)
    for stream in streams:
        await stream.aclose()
    await listener.aclose()
    os.unlink(path)


if __name__ == "__main__":
    if sys.argv[4:] == ["encode"]:
        trio.run(serve_encoding, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    else:
        trio.run(serve, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))

"""Length-prefixed framing for the Unix socket: a 4-byte big-endian length, then msgpack.

Pure functions and a small incremental reader; no I/O. The maximum frame size is enforced on
both sides: a peer announcing a larger frame gets `frame_too_large` and the connection closes,
because after an oversized header the stream cannot be trusted to resynchronise.
"""

from __future__ import annotations

from typing import Any

import msgspec

HEADER_SIZE = 4
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
"""16 MiB: generous for prompts with images, small enough to bound a connection's memory."""


class FrameError(ValueError):
    """The byte stream is not a valid sequence of frames."""


class FrameTooLarge(FrameError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


def frame(payload: bytes | bytearray | memoryview) -> bytes:
    """Prefix `payload` with its length."""
    return len(payload).to_bytes(HEADER_SIZE, "big") + bytes(payload)


class FrameEncoder:
    """Encodes messages straight into framed bytes, reusing one msgpack encoder.

    `encode_into` with an offset writes the payload after a reserved header, so a frame is
    built with one allocation and no copy.
    """

    __slots__ = ("_encoder", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self.max_frame = max_frame

    def encode(self, message: Any) -> bytes:
        buf = bytearray(HEADER_SIZE)
        self._encoder.encode_into(message, buf, HEADER_SIZE)
        size = len(buf) - HEADER_SIZE
        if size > self.max_frame:
            raise FrameTooLarge(size, self.max_frame)
        buf[:HEADER_SIZE] = size.to_bytes(HEADER_SIZE, "big")
        return bytes(buf)

    def payload(self, message: Any) -> bytes:
        """The msgpack payload alone (for WebSocket binary messages and the log)."""
        return self._encoder.encode(message)


class FrameReader:
    """Splits a byte stream into frame payloads.

    Feed it whatever the socket returned; it yields every complete payload and keeps the
    rest. A header announcing more than `max_frame` raises `FrameTooLarge` at once, before
    any of that frame is buffered.
    """

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            size = int.from_bytes(buf[pos : pos + HEADER_SIZE], "big")
            if size > self.max_frame:
                raise FrameTooLarge(size, self.max_frame)
            if end - pos - HEADER_SIZE < size:
                break
            start = pos + HEADER_SIZE
            out.append(bytes(buf[start : start + size]))
            pos = start + size
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back (non-zero at EOF = truncated frame)."""
        return len(self._buf)

"""Server-to-client WebSocket messages in bulk: a batch of messages, one write.

trio-websocket sends each message with its own `send_all`, and wsproto builds each frame in
about 2 us of Python: at one message per delta that held a WebSocket subscriber to ~30k
deltas/s and cost the daemon ~20 us of CPU per delivered delta (measured by
`scripts/bench`, scenario fan-out). The Unix socket already coalesces whatever is queued
into one send (DESIGN.md: "one send per delta caps a socket at ~20k deltas/s"); this does the
same for the WebSocket.

A server's frames are never masked (RFC 6455 section 5.1), and with no extension negotiated
a whole message is one final frame: a 2, 4 or 10 byte header (FIN + opcode, then the length)
and the payload. The daemon's listener accepts with trio-websocket, which negotiates no
extension; `BatchSender.attach` checks that, and the connection's state, through
trio-websocket's and wsproto's internals, and returns None when anything is not as expected
(another version), in which case the transport keeps sending message by message.
"""

from __future__ import annotations

import struct
from typing import Any

import trio

_SHORT = struct.Struct(">BB").pack
_MEDIUM = struct.Struct(">BBH").pack
_LONG = struct.Struct(">BBQ").pack
TEXT = 0x81
"""FIN + text opcode."""
BINARY = 0x82
"""FIN + binary opcode."""


def frame_header(size: int, first: int) -> bytes:
    """The header of one final, unmasked frame of `size` payload bytes."""
    if size < 126:
        return _SHORT(first, size)
    if size < 65536:
        return _MEDIUM(first, 126, size)
    return _LONG(first, 127, size)


def encode_messages(payloads: list[bytes]) -> bytes:
    """One buffer with each payload as one message: text when it is JSON (a protocol
    message always encodes as an object, so JSON starts with `{` and msgpack never does),
    binary otherwise."""
    parts: list[bytes] = []
    append = parts.append
    for payload in payloads:
        size = len(payload)
        first = TEXT if payload[:1] == b"{" else BINARY
        append(_SHORT(first, size) if size < 126 else frame_header(size, first))
        append(payload)
    return b"".join(parts)


class BatchSender:
    """Writes batches of messages to one trio-websocket connection, one `send_all` each,
    under the connection's own send lock (so they never interleave with its pongs or close
    frame)."""

    __slots__ = ("_open", "_ws")

    def __init__(self, ws: Any, open_state: Any) -> None:
        self._ws = ws
        self._open = open_state

    @classmethod
    def attach(cls, ws: Any) -> BatchSender | None:
        """A sender for `ws`, or None when its internals are not the ones this knows (the
        caller then sends message by message through the public API)."""
        try:
            from wsproto.connection import ConnectionState
        except ImportError:
            return None
        proto = getattr(ws, "_wsproto", None)
        stream = getattr(ws, "_stream", None)
        lock = getattr(ws, "_stream_lock", None)
        connection = getattr(proto, "connection", None)
        frames = getattr(connection, "_proto", None)
        if (proto is None or stream is None or lock is None or connection is None
                or getattr(frames, "extensions", None) != []
                or not hasattr(ws, "_close_reason") or getattr(ws, "is_client", True)):
            return None
        return cls(ws, ConnectionState.OPEN)

    async def send(self, payloads: list[bytes]) -> None:
        """Send every payload as one message. Raises `trio.ClosedResourceError` when the
        WebSocket is closed or closing, or the stream breaks."""
        ws = self._ws
        if ws._close_reason is not None or ws._wsproto.state is not self._open:
            raise trio.ClosedResourceError(f"websocket closed: {ws._close_reason}")
        data = encode_messages(payloads)
        async with ws._stream_lock:
            try:
                await ws._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                abort = getattr(ws, "_abort_web_socket", None)
                if abort is not None:
                    await abort()
                raise trio.ClosedResourceError(f"websocket closed: {exc}") from None

"""How deltas and server messages become bytes for a subscriber: one encoder per format, the
Unix socket's length prefix, and a ring entry's encodings (made once, shared by every
subscriber in the same mode).

Kept apart from the hub so that a connection can encode its replies exactly as the hub
encodes deltas without importing the hub's state.
"""

from __future__ import annotations

import struct
from typing import Literal

import msgspec

from protocol import deltas as d
from protocol.framing import HEADER_SIZE

Mode = Literal["framed", "msgpack", "json"]
"""How a subscriber wants frames: length-prefixed msgpack (Unix socket), bare msgpack or
JSON (WebSocket messages)."""

_json_encoder = msgspec.json.Encoder()
msgpack_encoder = msgspec.msgpack.Encoder()
frame_header = struct.Struct(">I").pack
"""The Unix socket's 4-byte big-endian length prefix (`protocol.framing.HEADER_SIZE`)."""
_delta_decoder = msgspec.msgpack.Decoder(d.Delta)


def encode_message(message: object, mode: Mode) -> bytes:
    """A server message (reply, `lagged`, `replay_complete`...) as a subscriber in `mode`
    takes it. One place for the hub's control frames and a connection's replies, so both
    always frame the same way."""
    if mode == "json":
        return _json_encoder.encode(message)
    payload = msgpack_encoder.encode(message)
    if mode == "msgpack":
        return payload
    return frame_header(len(payload)) + payload



class Entry:
    """One delta in the ring, with its encodings (JSON made on first use)."""

    __slots__ = ("_json", "delta", "frame", "seq")

    def __init__(self, seq: int, delta: d.Delta, frame: bytes) -> None:
        self.seq = seq
        self.delta = delta
        self.frame = frame
        self._json: bytes | None = None

    def render(self, mode: Mode) -> bytes:
        if mode == "framed":
            return self.frame
        if mode == "msgpack":
            return self.frame[HEADER_SIZE:]
        if self._json is None:
            self._json = _json_encoder.encode(self.delta)
        return self._json


def render_logged(data: bytes, mode: Mode) -> bytes:
    """Encode a logged delta (its msgpack payload) for a subscriber."""
    if mode == "framed":
        return frame_header(len(data)) + data
    if mode == "msgpack":
        return data
    return _json_encoder.encode(_delta_decoder.decode(data))

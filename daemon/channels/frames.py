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



class Entry(msgspec.Struct, gc=False):
    """One delta in the ring, with its encodings (JSON made on first use).

    Out of the cyclic collector (`gc=False`: it holds a delta, bytes and an int, never a
    cycle): the ring keeps thousands and a streaming turn makes one per delta, which as
    tracked objects set off collections that walked the whole ring."""

    seq: int
    delta: d.Delta
    frame: bytes
    json: bytes | None = None

    def render(self, mode: Mode) -> bytes:
        if mode == "framed":
            return self.frame
        if mode == "msgpack":
            return self.frame[HEADER_SIZE:]
        if self.json is None:
            self.json = _json_encoder.encode(self.delta)
        return self.json


_DELTA_HEAD = b"\x86\xa4type\xa5delta\xa4chat"
"""How every `Delta` payload begins: a map of six entries, the tag, the `chat` key."""
_TS_KEY = b"\xa2ts"
TURN_KEY = b"\xa4turn"
"""Where a logged tail starts (`logged_tail`)."""


def log_prefix(chat: str) -> bytes:
    """The bytes of each of `chat`'s delta payloads up to its seq value (made once per
    channel): what `logged_tail` leaves out and `logged_payload` puts back."""
    return _DELTA_HEAD + msgpack_encoder.encode(chat) + b"\xa3seq"


def tail_offset(prefix: bytes) -> int:
    """Where the tail of a payload beginning with `prefix` starts, less its seq's size."""
    return len(prefix) + len(_TS_KEY) + 9  # the ts: a float64


def logged_tail(payload: bytes, prefix: bytes, seq: int) -> bytes:
    """What the log stores of a delta's msgpack payload: its fields after chat, seq and ts
    (turn and body), since the row holds those three already (82 -> ~33 bytes for a short
    text chunk). If the payload is not laid out as expected (a `ts` that is not a float),
    the whole of it, which `logged_payload` also reads."""
    # msgpack's size of a non-negative int (fixint, uint8, uint16, uint32, uint64)
    seq_size = (1 if seq < 0x80 else 2 if seq < 0x100 else 3 if seq < 0x10000
                else 5 if seq < 0x100000000 else 9)
    start = tail_offset(prefix) + seq_size
    if payload.startswith(TURN_KEY, start):
        return payload[start:]
    return payload


def logged_payload(prefix: bytes, seq: int, ts: float, data: bytes) -> bytes:
    """A logged delta's full msgpack payload, from its row. Rows hold the tail only
    (`logged_tail`) or, when written before that change or not laid out as expected, the
    whole payload (a six-entry map: first byte 0x86, which no tail starts with)."""
    if data[:1] == b"\x86":
        return data
    encode = msgpack_encoder.encode
    return b"".join((prefix, encode(seq), _TS_KEY, encode(float(ts)), data))


def render_logged(data: bytes, mode: Mode) -> bytes:
    """Encode a logged delta (its full msgpack payload, `logged_payload`) for a
    subscriber."""
    if mode == "framed":
        return frame_header(len(data)) + data
    if mode == "msgpack":
        return data
    return _json_encoder.encode(_delta_decoder.decode(data))

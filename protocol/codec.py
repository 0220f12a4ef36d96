"""Encoders and decoders for both ends of a connection, built once and reused.

msgspec decoders are typed: a frame that is not a valid message fails with a precise
`msgspec.ValidationError` (with a JSON path) that the daemon turns into an `ErrorReply`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .messages import (
    RESULT_TYPES,
    ClientMessage,
    ClientSideServerMessage,
    Encoding,
    RawReply,
    RequestHead,
)

__all__ = ["ClientCodec", "Encoding", "ServerCodec"]


class ServerCodec:
    """The daemon's side: decodes client messages, encodes server messages."""

    __slots__ = ("_head_json", "_head_msgpack", "_json_dec", "_json_enc", "_msgpack_dec",
                 "_msgpack_enc")

    def __init__(self) -> None:
        self._msgpack_dec = msgspec.msgpack.Decoder(ClientMessage)
        self._json_dec = msgspec.json.Decoder(ClientMessage)
        self._head_msgpack = msgspec.msgpack.Decoder(RequestHead)
        self._head_json = msgspec.json.Decoder(RequestHead)
        self._msgpack_enc = msgspec.msgpack.Encoder()
        self._json_enc = msgspec.json.Encoder()

    def decode(self, payload: bytes, encoding: Encoding = "msgpack") -> Any:
        if encoding == "msgpack":
            return self._msgpack_dec.decode(payload)
        return self._json_dec.decode(payload)

    def head(self, payload: bytes, encoding: Encoding = "msgpack") -> RequestHead | None:
        """Best-effort type and id of a frame that failed to decode, for the error reply."""
        try:
            if encoding == "msgpack":
                return self._head_msgpack.decode(payload)
            return self._head_json.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    def encode(self, message: Any, encoding: Encoding = "msgpack") -> bytes:
        if encoding == "msgpack":
            return self._msgpack_enc.encode(message)
        return self._json_enc.encode(message)


class ClientCodec:
    """A client's side: encodes requests, decodes server messages and typed results."""

    __slots__ = ("_dec", "_enc", "encoding")

    def __init__(self, encoding: Encoding = "msgpack") -> None:
        self.encoding = encoding
        if encoding == "msgpack":
            self._enc: msgspec.msgpack.Encoder | msgspec.json.Encoder = msgspec.msgpack.Encoder()
            self._dec: Any = msgspec.msgpack.Decoder(ClientSideServerMessage)
        else:
            self._enc = msgspec.json.Encoder()
            self._dec = msgspec.json.Decoder(ClientSideServerMessage)

    def encode(self, message: Any) -> bytes:
        return self._enc.encode(message)

    def decode(self, payload: bytes | str) -> Any:
        return self._dec.decode(payload)

    def result(self, reply: RawReply, request_type: type[msgspec.Struct]) -> Any:
        """Decode `reply.result` as the result type of `request_type`."""
        result_type = RESULT_TYPES[request_type]
        if self.encoding == "msgpack":
            return msgspec.msgpack.decode(reply.result, type=result_type)
        return msgspec.json.decode(reply.result, type=result_type)

"""Stoker's wire contract: message types, framing and error codes. No I/O lives here.

Clients in Python import this package; clients in other languages follow docs/PROTOCOL.md,
which describes the same types.
"""

from . import deltas
from .codec import ClientCodec, Encoding, ServerCodec
from .deltas import Delta, DeltaBody
from .errors import ErrorCode
from .framing import DEFAULT_MAX_FRAME, FrameEncoder, FrameError, FrameReader, FrameTooLarge
from .messages import PROTOCOL_VERSION

__all__ = [
    "DEFAULT_MAX_FRAME",
    "PROTOCOL_VERSION",
    "ClientCodec",
    "Delta",
    "DeltaBody",
    "Encoding",
    "ErrorCode",
    "FrameEncoder",
    "FrameError",
    "FrameReader",
    "FrameTooLarge",
    "ServerCodec",
    "deltas",
]

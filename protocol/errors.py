"""Error codes of the client protocol.

An error is a value (`ErrorReply` with a code and a message), never a dropped socket. Codes are
short stable strings so that clients in any language can switch on them; messages are for
humans and may change.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Why a request failed. Grouped by whose fault it is."""

    # The request itself is wrong: fix the client.
    BAD_FRAME = "bad_frame"
    """The frame could not be decoded (malformed msgpack/JSON). A well-formed message of
    the wrong shape is `bad_request` (or `unknown_request`)."""
    FRAME_TOO_LARGE = "frame_too_large"
    """The frame exceeded the connection's maximum frame size; the connection closes."""
    UNKNOWN_REQUEST = "unknown_request"
    """The request `type` is not one this daemon knows."""
    BAD_REQUEST = "bad_request"
    """The request is well-formed but its arguments are invalid."""
    PROTOCOL_VERSION = "protocol_version"
    """`hello` asked for a protocol version this daemon does not speak."""
    HELLO_REQUIRED = "hello_required"
    """A request arrived before `hello`."""
    UNAUTHORIZED = "unauthorized"
    """Peer credentials or token were refused."""

    # The request names something that does not exist or is in the wrong state.
    UNKNOWN_CHAT = "unknown_chat"
    UNKNOWN_AGENT = "unknown_agent"
    UNKNOWN_WORKSPACE = "unknown_workspace"
    UNKNOWN_COMPUTER = "unknown_computer"
    NOT_FOUND = "not_found"
    """Something else named by the request (a permission request, a terminal) is unknown."""
    ALREADY_ANSWERED = "already_answered"
    """A permission request was already resolved (the first answer wins)."""
    INVALID_STATE = "invalid_state"
    """The chat or agent cannot do this now (closed, no session yet, ...)."""
    UNSUPPORTED = "unsupported"
    """The agent does not support this (no modes, no images in prompts, ...)."""

    # Limits.
    QUEUE_FULL = "queue_full"
    """The chat's prompt queue is at its bound."""
    LIMIT = "limit"
    """Some other configured limit (connections, subscriptions) was reached."""

    # The agent or the daemon failed.
    AGENT_ERROR = "agent_error"
    """The agent answered with a JSON-RPC error; `detail` carries it."""
    AGENT_UNAVAILABLE = "agent_unavailable"
    """The agent could not be started or is `failed`."""
    AUTH_REQUIRED = "auth_required"
    """The agent needs `authenticate` first (see `stoker auth`)."""
    GIT_ERROR = "git_error"
    SHUTTING_DOWN = "shutting_down"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    """The daemon cannot write its database (a full disk, an I/O error): nothing was changed
    (or, when the request was already under way, it was not confirmed durable). Reads and
    subscriptions keep working; the daemon recovers by itself once it can write; retry."""
    INTERNAL = "internal"
    """A bug in the daemon. The daemon stays up; the log has the traceback."""

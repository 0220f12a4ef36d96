"""The protocol's requests over HTTP: `POST /api/<type>` with the request's fields as a JSON
object, answered with the result as JSON, or an `ErrorReply` (the socket's own error value,
`id` null) with the protocol's error code and an HTTP status that matches it.

Everything is derived from `protocol.requests`: a request type added there is served here
(and documented in `/openapi.json`) with no change in this package. `subscribe` and
`unsubscribe` act on a connection's subscriptions; over HTTP a subscription is the event
stream `GET /api/chats/{chat}/events` (`sse`).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import msgspec

from protocol import messages as m
from protocol.errors import ErrorCode

REQUEST_TYPES: dict[str, type[m.RequestBase]] = {
    str(t.__struct_config__.tag): t for t in m.Request.__args__
    if t not in (m.Subscribe, m.Unsubscribe)
}
"""Every request served by `POST /api/<tag>`, by tag."""

READ_ONLY = frozenset({"ping", "status", "agents", "ls", "workspace_ls", "computers"})
"""Requests that change nothing: also served as `GET /api/<type>?field=value` (so a plain
`curl URL` works). Every other request is POST only: a GET must be safe to repeat."""

STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_FRAME: 400,
    ErrorCode.FRAME_TOO_LARGE: 413,
    ErrorCode.UNKNOWN_REQUEST: 404,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.PROTOCOL_VERSION: 400,
    ErrorCode.HELLO_REQUIRED: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.UNKNOWN_CHAT: 404,
    ErrorCode.UNKNOWN_AGENT: 404,
    ErrorCode.UNKNOWN_WORKSPACE: 404,
    ErrorCode.UNKNOWN_COMPUTER: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ALREADY_ANSWERED: 409,
    ErrorCode.INVALID_STATE: 409,
    ErrorCode.UNSUPPORTED: 422,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.LIMIT: 429,
    ErrorCode.AGENT_ERROR: 502,
    ErrorCode.AGENT_UNAVAILABLE: 503,
    ErrorCode.AUTH_REQUIRED: 409,
    ErrorCode.GIT_ERROR: 500,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.INTERNAL: 500,
}
"""The HTTP status of each error code (the body always names the code itself)."""

_encoder = msgspec.json.Encoder()


class ApiError(Exception):
    """A request refused before it reached the router."""

    def __init__(self, code: ErrorCode, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS[code]


def status_of(code: ErrorCode) -> int:
    return STATUS.get(code, 500)


def error_body(code: ErrorCode, message: str, detail: Any = None) -> bytes:
    return _encoder.encode(m.ErrorReply(id=None, code=code, message=message, detail=detail))


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def decode_query(tag: str, query: str) -> m.RequestBase:
    """A read-only request from a query string (`?include_closed=true&cwd=/src`): values
    are converted to the fields' types (`true`/`false`, numbers)."""
    fields: dict[str, Any] = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    fields["id"] = 0
    try:
        return msgspec.convert(fields, REQUEST_TYPES[tag], strict=False)
    except msgspec.ValidationError as exc:
        raise ApiError(ErrorCode.BAD_REQUEST, f"invalid request: {exc}") from None


def decode_request(tag: str, body: bytes) -> m.RequestBase:
    """The request `tag` with the fields of the JSON object `body` (empty: no fields).
    `id` and `type` may be given and are ignored (`type` must then match)."""
    request_type = REQUEST_TYPES.get(tag)
    if request_type is None:
        if tag in ("subscribe", "unsubscribe"):
            raise ApiError(ErrorCode.UNKNOWN_REQUEST,
                           f"{tag} is a WebSocket/socket request; over HTTP, stream a chat "
                           "with GET /api/chats/{chat}/events")
        raise ApiError(ErrorCode.UNKNOWN_REQUEST, f"unknown request type {tag!r}")
    try:
        fields = msgspec.json.decode(body) if body.strip() else {}
    except msgspec.DecodeError as exc:
        raise ApiError(ErrorCode.BAD_FRAME, f"malformed JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ApiError(ErrorCode.BAD_REQUEST, "the body must be a JSON object")
    fields["id"] = 0
    try:
        return msgspec.convert(fields, request_type)
    except msgspec.ValidationError as exc:
        raise ApiError(ErrorCode.BAD_REQUEST, f"invalid request: {exc}") from None

"""The OpenAPI 3.1 document of the HTTP API (`GET /openapi.json`), generated from the
protocol's msgspec types: one path per request type (`POST /api/<type>`, its body the
request's fields, its answer the type `RESULT_TYPES` names), the event stream, and the
schemas from `msgspec.json.schema_components`. Nothing here is written by hand twice: a new
request type appears in the document as soon as it is in `protocol.requests`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import msgspec

from daemon.listeners.http.api import READ_ONLY, REQUEST_TYPES, STATUS
from daemon.version import VERSION
from protocol import messages as m

REF = "#/components/schemas/{name}"
EVENT_TYPES: tuple[Any, ...] = (m.Subscribed, m.Delta, m.ReplayComplete, m.ResyncRequired,
                                m.Lagged, m.Heartbeat, m.Goodbye)
EVENTS_PATH = "/api/chats/{chat}/events"
STREAMED = ("subscribe", "unsubscribe")
"""Requests that HTTP serves as the event stream, not as a POST."""


def _summary(kind: type) -> tuple[str, str]:
    doc = inspect.getdoc(kind) or ""
    if doc.startswith(("Base ", "A base")) or not doc:
        return kind.__name__, ""
    first, _, rest = doc.partition("\n\n")
    return " ".join(first.split()), rest.strip()


def _body_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A request's schema as an HTTP body: `id` and `type` are not sent."""
    out = dict(schema)
    props = {k: v for k, v in schema.get("properties", {}).items() if k not in ("id", "type")}
    out["properties"] = props
    required = [r for r in schema.get("required", []) if r not in ("id", "type")]
    if required:
        out["required"] = required
    else:
        out.pop("required", None)
    return out


@functools.cache
def document() -> dict[str, Any]:
    requests = list(REQUEST_TYPES.values())
    results = [m.RESULT_TYPES[t] for t in requests]
    _, components = msgspec.json.schema_components(
        [*requests, *results, m.ErrorReply, *EVENT_TYPES], ref_template=REF)
    for kind in requests:
        components[kind.__name__] = _body_schema(components[kind.__name__])
    error = {"description": "An error: the protocol's `ErrorReply`, `id` null; the HTTP "
                            "status follows the code",
             "content": {"application/json": {"schema": {"$ref": REF.format(
                 name="ErrorReply")}}}}
    paths: dict[str, Any] = {}
    for tag, kind in REQUEST_TYPES.items():
        summary, description = _summary(kind)
        body_required = bool(components[kind.__name__].get("required"))
        result = m.RESULT_TYPES[kind]
        paths[f"/api/{tag}"] = {"post": {
            "operationId": tag,
            "summary": summary,
            "description": description,
            "requestBody": {"required": body_required, "content": {"application/json": {
                "schema": {"$ref": REF.format(name=kind.__name__)}}}},
            "responses": {
                "200": {"description": "The result",
                        "content": {"application/json": {"schema": {
                            "$ref": REF.format(name=result.__name__)}}}},
                "default": error,
            },
        }}
    for tag in READ_ONLY:
        kind = REQUEST_TYPES[tag]
        post = paths[f"/api/{tag}"]["post"]
        schema = components[kind.__name__]
        paths[f"/api/{tag}"]["get"] = {
            "operationId": f"{tag}_get",
            "summary": post["summary"],
            "description": "The same request as the POST, its fields as query parameters.",
            "parameters": [{"name": name, "in": "query", "required": False, "schema": prop}
                           for name, prop in schema.get("properties", {}).items()],
            "responses": post["responses"],
        }
    paths[EVENTS_PATH] = {"get": {
        "operationId": "events",
        "summary": "Stream a chat's deltas as Server-Sent Events",
        "description": (
            "The HTTP form of `subscribe`. Each protocol message is one event: `event:` is "
            "its type, `data:` its JSON, `id:` the delta's seq (on `delta`, "
            "`resync_required` and the first event, `subscribed`). Resume with "
            "`Last-Event-ID` (an EventSource does it by itself): no gap, no duplicate. "
            "Closing the stream is `unsubscribe`."),
        "x-stoker-requests": list(STREAMED),
        "parameters": [
            {"name": "chat", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "since", "in": "query", "required": False,
             "description": "Replay after this seq (absent: live only). `Last-Event-ID` "
                            "wins when both are given.",
             "schema": {"type": "integer", "minimum": 0}},
            {"name": "epoch", "in": "query", "required": False,
             "description": "The history `since` belongs to; another epoch gets "
                            "`resync_required`.", "schema": {"type": "string"}},
            {"name": "live", "in": "query", "required": False,
             "description": "false: end after `replay_complete`.",
             "schema": {"type": "boolean", "default": True}},
            {"name": "Last-Event-ID", "in": "header", "required": False,
             "schema": {"type": "integer", "minimum": 0}},
        ],
        "responses": {
            "200": {"description": "An event stream; each event's data is one of these",
                    "content": {"text/event-stream": {"schema": {"oneOf": [
                        {"$ref": REF.format(name=t.__name__)} for t in EVENT_TYPES]}}}},
            "default": error,
        },
    }}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Stoker",
            "version": VERSION,
            "description": (
                "Every request of the Stoker client protocol (docs/PROTOCOL.md) as JSON over "
                "HTTP. Authenticate with `Authorization: Bearer $(stoker token)`. Error "
                "codes: " + ", ".join(f"`{code}` {status}" for code, status in
                                      STATUS.items()) + "."),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "`stoker token` prints it"},
                "session": {"type": "apiKey", "in": "cookie", "name": "stoker_session",
                            "description": "The console's session, from `stoker web`"},
            },
        },
    }


@functools.cache
def document_bytes() -> bytes:
    return msgspec.json.encode(document())

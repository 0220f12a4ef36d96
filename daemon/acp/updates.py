"""From an agent's `session/update` to a delta body. Pure functions, no I/O.

Text chunks are the hot path (one per streamed token or word), so they are decoded into
typed structs and mapped with a type switch. Kinds we do not know, or updates that do not
match their declared shape, become `raw` deltas carrying the agent's JSON: kept, not dropped.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from daemon.acp import types as t
from protocol import deltas as d
from protocol.messages import TextBlock

_notification = msgspec.json.Decoder(t.SessionNotification)
_update = msgspec.json.Decoder(t.SessionUpdate)
_any = msgspec.json.Decoder()


class _TypedNotification(t._Lenient):
    """`session/update` params with the update decoded in the same pass (the fast path)."""

    session_id: str
    update: t.SessionUpdate


_typed = msgspec.json.Decoder(_TypedNotification)
_NO_RAW = msgspec.Raw(b"null")
_CHUNKS: dict[type, type[d.Text] | type[d.Reasoning] | type[d.UserText]] = {
    t.AgentMessageChunk: d.Text,
    t.AgentThoughtChunk: d.Reasoning,
    t.UserMessageChunk: d.UserText,
}


class _ChunkText(msgspec.Struct):
    """A text content block, validated as `ContentBlock`'s text member is (tag required)."""

    type: Literal["text"]
    text: str


class _ChunkUpdate(msgspec.Struct, rename="camel"):
    session_update: Literal["agent_message_chunk", "agent_thought_chunk",
                            "user_message_chunk"]
    content: _ChunkText


class _ChunkParams(msgspec.Struct, rename="camel"):
    session_id: str
    update: _ChunkUpdate


class _ChunkLine(msgspec.Struct):
    """A whole JSON-RPC line that is a `session/update` notification of a text chunk."""

    method: Literal["session/update"]
    params: _ChunkParams
    id: msgspec.UnsetType = msgspec.UNSET
    """Must be absent: a line with an id (even null) is a request, not a notification."""


_chunk_line = msgspec.json.Decoder(_ChunkLine)
_CHUNK_BODIES: dict[str, type[d.Text] | type[d.Reasoning] | type[d.UserText]] = {
    "agent_message_chunk": d.Text,
    "agent_thought_chunk": d.Reasoning,
    "user_message_chunk": d.UserText,
}


def usage_body(usage: t.PromptUsage) -> d.Usage:
    """Token counts of one agent call or turn, as a delta."""
    return d.Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                   cached_tokens=usage.cached_read_tokens, total_tokens=usage.total_tokens)


def _text_chunk(line: bytes) -> _ChunkLine | None:
    """The line decoded, when it is a `session/update` notification of a chunk with text."""
    try:
        msg = _chunk_line.decode(line)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    # Empty chunks may carry `_meta` (qwen's per-call token usage): the general path reads
    # it. They are rare, so the fast path loses nothing by declining them.
    return msg if msg.params.update.content.text else None


def decode_chunk_line(line: bytes) -> d.Text | d.Reasoning | d.UserText | None:
    """The delta body of a raw JSON-RPC line when it is a `session/update` notification of
    an agent, thought or user chunk with text content; None for any other line.

    The hot path of a streaming turn, in one typed decode of the line (the general path
    decodes the envelope, then the params: see `JsonRpcConnection`'s `on_lines`). What it
    accepts decodes to the same body `decode_session_update` makes; a line it declines
    (another kind, another content, a shape it does not match) costs a decode that stops
    at the first mismatch, and goes the general way."""
    msg = _text_chunk(line)
    if msg is None:
        return None
    update = msg.params.update
    return _CHUNK_BODIES[update.session_update](text=update.content.text)


def decode_session_chunk_line(line: bytes
                              ) -> tuple[str, d.Text | d.Reasoning | d.UserText] | None:
    """`decode_chunk_line` with the `sessionId` the chunk belongs to (a shared process's
    lines go to the session they name)."""
    msg = _text_chunk(line)
    if msg is None:
        return None
    update = msg.params.update
    return msg.params.session_id, _CHUNK_BODIES[update.session_update](
        text=update.content.text)


def decode_session_update(params: msgspec.Raw | None) -> tuple[str | None, d.DeltaBody]:
    """Decode `session/update` params into (sessionId, delta body).

    One typed decode of the params serves every known kind (text chunks, one per streamed
    token, are the hot path: this was three decodes per chunk). Tool calls, which keep the
    update's own JSON (`acp`), and anything that does not match its declared shape take the
    general path below: params, then the update, each decoded on its own, so a malformed
    update still yields its session id and a `raw` delta."""
    if params is None:
        return None, d.Raw(method="session/update", acp=None)
    try:
        typed = _typed.decode(params)
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    else:
        update = typed.update
        kind = type(update)
        make = _CHUNKS.get(kind)
        if make is not None:
            content = update.content  # type: ignore[union-attr]
            if type(content) is TextBlock:
                if not content.text and kind is t.AgentMessageChunk:
                    usage = t.usage_from_meta(update.meta)  # type: ignore[union-attr]
                    if usage is not None:
                        return typed.session_id, usage_body(usage)
                return typed.session_id, make(text=content.text)
        if kind is not t.ToolCallUpdate and kind is not t.ToolCallProgress:
            # Only tool calls keep the update's own JSON (`acp`): everything else maps
            # from the typed update alone.
            return typed.session_id, map_update(update, _NO_RAW)
    try:
        note = _notification.decode(params)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None, d.Raw(method="session/update", acp=_safe_json(params))
    try:
        update = _update.decode(note.update)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return note.session_id, d.Raw(method="session/update", acp=_safe_json(note.update))
    return note.session_id, map_update(update, note.update)


def _safe_json(raw: msgspec.Raw) -> Any:
    try:
        return _any.decode(raw)
    except msgspec.DecodeError:
        return bytes(raw).decode("utf-8", "replace")


def _block(content: Any) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(content)
    return result


def map_update(update: t.SessionUpdate, raw: msgspec.Raw) -> d.DeltaBody:
    kind = type(update)
    if kind is t.AgentMessageChunk:
        content = update.content  # type: ignore[union-attr]
        if type(content) is TextBlock:
            return d.Text(text=content.text)
        return d.Content(role="agent", block=_block(content))
    if kind is t.AgentThoughtChunk:
        content = update.content  # type: ignore[union-attr]
        if type(content) is TextBlock:
            return d.Reasoning(text=content.text)
        return d.Content(role="thought", block=_block(content))
    if kind is t.UserMessageChunk:
        content = update.content  # type: ignore[union-attr]
        if type(content) is TextBlock:
            return d.UserText(text=content.text)
        return d.Content(role="user", block=_block(content))
    if isinstance(update, t.ToolCallUpdate):
        return d.ToolCall(tool_call_id=update.tool_call_id, title=update.title,
                          status=update.status, acp=_any.decode(raw))
    if isinstance(update, t.ToolCallProgress):
        return d.ToolUpdate(tool_call_id=update.tool_call_id, status=update.status,
                            acp=_any.decode(raw))
    if isinstance(update, t.PlanUpdate):
        return d.Plan(entries=update.entries)
    if isinstance(update, t.CommandsUpdate):
        return d.Commands(commands=update.available_commands)
    if isinstance(update, t.CurrentModeUpdate):
        return d.Mode(mode=update.current_mode_id)
    if isinstance(update, t.ConfigOptionUpdate):
        return d.Config(options=update.config_options)
    if isinstance(update, t.SessionInfoUpdate):
        return d.Info(title=update.title, updated_at=update.updated_at)
    if isinstance(update, t.UsageUpdate):
        return d.Usage(used=update.used, size=update.size, cost=update.cost)
    return d.Raw(method="session/update", acp=_safe_json(raw))

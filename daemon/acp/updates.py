"""From an agent's `session/update` to a delta body. Pure functions, no I/O.

Text chunks are the hot path (one per streamed token or word), so they are decoded into
typed structs and mapped with a type switch. Kinds we do not know, or updates that do not
match their declared shape, become `raw` deltas carrying the agent's JSON: kept, not dropped.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol import deltas as d
from protocol.messages import TextBlock

from . import types as t

_notification = msgspec.json.Decoder(t.SessionNotification)
_update = msgspec.json.Decoder(t.SessionUpdate)
_any = msgspec.json.Decoder()


def decode_session_update(params: msgspec.Raw | None) -> tuple[str | None, d.DeltaBody]:
    """Decode `session/update` params into (sessionId, delta body)."""
    if params is None:
        return None, d.Raw(method="session/update", acp=None)
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

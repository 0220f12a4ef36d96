"""`stoker acp`'s translations between the daemon's world and ACP. Pure functions, no I/O.

The daemon's chat *is* the editor's ACP session (`sessionId` = chat id), and the chat's
deltas are what the editor is shown. This module decides, for each delta, which
`session/update` (if any) the editor gets, and maps daemon errors to JSON-RPC errors.

Deltas that came from the agent's own `session/update` carry the agent's object (`acp`), which
is forwarded unchanged where it exists (tool calls), so nothing the agent said is lost on the
way to the editor. What ACP has no place for (actor status, terminals the daemon runs, diffs,
unknown update kinds) is not forwarded: every line `stoker acp` writes must validate against
the official schema.
"""

from __future__ import annotations

import datetime
from typing import Any, Final

import msgspec

from daemon.acp.rpc import (
    AUTH_REQUIRED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    RESOURCE_NOT_FOUND,
    RpcError,
)
from protocol import deltas as d
from protocol import messages as m
from protocol.errors import ErrorCode

JsonObj = dict[str, Any]

SERVED_SESSION_CAPABILITIES: Final[JsonObj] = {"list": {}, "resume": {}, "close": {}}
"""Served by the daemon itself, whatever the backend agent supports: the daemon is the
session store."""

_PASSED_CAPABILITIES: Final = ("promptCapabilities", "mcpCapabilities")
"""Backend capabilities the editor is told about as they are: what the agent accepts in a
prompt and which MCP transports it can use are the agent's business."""


def agent_capabilities(backend: JsonObj) -> JsonObj:
    """The `agentCapabilities` of `stoker acp`: the backend's prompt and MCP capabilities,
    plus load/list/resume/close, which the daemon serves for any agent."""
    caps: JsonObj = {key: backend[key] for key in _PASSED_CAPABILITIES
                     if isinstance(backend.get(key), dict)}
    caps["loadSession"] = True
    caps["sessionCapabilities"] = dict(SERVED_SESSION_CAPABILITIES)
    return caps


def text_chunk(kind: str, text: str) -> JsonObj:
    return {"sessionUpdate": kind, "content": {"type": "text", "text": text}}


_CHUNK_KIND: Final = {
    "agent": "agent_message_chunk",
    "thought": "agent_thought_chunk",
    "user": "user_message_chunk",
}


def delta_update(body: d.DeltaBody, *, own_client: str | None, notices: bool = False
                 ) -> JsonObj | None:
    """The `update` of the `session/update` an editor gets for a live delta, or None.

    `own_client` is the `hello.client` name of this bridge: a turn it started is not echoed
    back as a user message (the editor already shows what it sent), while a turn another
    client started is shown as that user's message. `notices`: the editor advertised
    `clientCapabilities.session.notices`, so daemon notices may be sent as `notice` updates.
    """
    kind = type(body)
    if kind is d.Text:
        return text_chunk("agent_message_chunk", body.text)  # type: ignore[union-attr]
    if kind is d.Reasoning:
        return text_chunk("agent_thought_chunk", body.text)  # type: ignore[union-attr]
    if kind is d.UserText:
        return text_chunk("user_message_chunk", body.text)  # type: ignore[union-attr]
    if isinstance(body, d.TurnStarted):
        if own_client is not None and body.by == own_client:
            return None
        return text_chunk("user_message_chunk", body.prompt)
    if isinstance(body, d.Content):
        return {"sessionUpdate": _CHUNK_KIND[body.role], "content": body.block}
    if isinstance(body, d.ToolCall):
        if body.acp.get("sessionUpdate") == "tool_call":
            return body.acp
        return {"sessionUpdate": "tool_call", "toolCallId": body.tool_call_id,
                "title": body.title, "status": body.status}
    if isinstance(body, d.ToolUpdate):
        if body.acp.get("sessionUpdate") == "tool_call_update":
            return body.acp
        update: JsonObj = {"sessionUpdate": "tool_call_update", "toolCallId": body.tool_call_id}
        if body.status is not None:
            # ACP's tool statuses have no "cancelled" (the daemon closes a cancelled turn's
            # open tools with it): an editor shows it as failed.
            update["status"] = "failed" if body.status == "cancelled" else body.status
        return update
    if isinstance(body, d.Plan):
        return {"sessionUpdate": "plan", "entries": body.entries}
    if isinstance(body, d.Commands):
        return {"sessionUpdate": "available_commands_update", "availableCommands": body.commands}
    if isinstance(body, d.Mode):
        return {"sessionUpdate": "current_mode_update", "currentModeId": body.mode}
    if isinstance(body, d.Config):
        return {"sessionUpdate": "config_option_update", "configOptions": body.options}
    if isinstance(body, d.Usage):
        return _usage_update(body)
    if isinstance(body, d.Info):
        info: JsonObj = {"sessionUpdate": "session_info_update"}
        if body.title is not None:
            info["title"] = body.title
        if body.updated_at is not None:
            info["updatedAt"] = body.updated_at
        return info
    if isinstance(body, d.Notice):
        if notices and body.message:
            return {"sessionUpdate": "notice", "severity": body.level, "title": body.message}
        return None
    if isinstance(body, d.Task):
        return task_notice(body) if notices else None
    return None


def task_notice(body: d.Task) -> JsonObj:
    """A task of the chat changed (docs/TASKS.md): a `notice` for an editor that takes them."""
    title = f"task {body.task} ({body.agent}: {body.title}) {body.event}"
    if body.error:
        title += f": {body.error}"
    elif body.summary:
        title += f": {body.summary}"
    severity = "error" if body.event in ("failed", "interrupted") else "info"
    return {"sessionUpdate": "notice", "severity": severity, "title": title}


class PromptHold:
    """Shows a turn's prompt when the turn runs, not when it was queued.

    `turn_started` is published when a prompt is *accepted*; with a turn running, the next
    one waits in the queue. Sent at once, its user message would land in the middle of the
    running turn's reply. So the prompt is held until the first delta of its own turn (or
    its `turn_ended`, so that a prompt cancelled in the queue is still shown). Used for live
    forwarding and for `session/load` replays alike.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[int, JsonObj] = {}

    def feed(self, turn: int, body: d.DeltaBody, update: JsonObj | None) -> list[JsonObj]:
        """The updates to send, in order, for one delta (and its mapped `update`)."""
        if isinstance(body, d.TurnStarted):
            if update is not None:
                self._held[turn] = update
            return []
        out: list[JsonObj] = []
        held = self._held.pop(turn, None) if self._held else None
        if held is not None:
            out.append(held)
        if update is not None:
            out.append(update)
        return out

    def flush(self) -> list[JsonObj]:
        """Everything still held, in turn order (the end of a replay: those turns are
        queued or running silently, and their prompts are part of the history)."""
        out = [self._held[turn] for turn in sorted(self._held)]
        self._held.clear()
        return out


def _usage_update(body: d.Usage) -> JsonObj | None:
    """Only context usage (`usage_update`) has an ACP update; token counts of a prompt's
    answer do not."""
    if body.used is None or body.size is None:
        return None
    update: JsonObj = {"sessionUpdate": "usage_update", "used": body.used, "size": body.size}
    cost = body.cost
    if (isinstance(cost, dict) and isinstance(cost.get("amount"), int | float)
            and isinstance(cost.get("currency"), str)):
        update["cost"] = {"amount": cost["amount"], "currency": cost["currency"]}
    return update


_HISTORY_KINDS: Final = (d.TurnStarted, d.Text, d.Reasoning, d.UserText, d.Content, d.ToolCall,
                         d.ToolUpdate, d.Plan)


def history_update(body: d.DeltaBody) -> JsonObj | None:
    """The `update` replayed by `session/load` for a retained delta, or None.

    History is the conversation: every prompt (whoever sent it) as a user message, the
    agent's messages and thoughts, tool calls and plans. State (mode, config, commands,
    usage) is not history: the load response and later updates carry it."""
    if not isinstance(body, _HISTORY_KINDS):
        return None
    return delta_update(body, own_client=None)


def session_setup(detail: m.ActorDetail | None) -> JsonObj:
    """`modes` and `configOptions` of a new/load/resume response, from the actor's detail."""
    result: JsonObj = {}
    if detail is None:
        return result
    modes = detail.modes
    if (isinstance(modes, dict) and isinstance(modes.get("currentModeId"), str)
            and isinstance(modes.get("availableModes"), list)):
        result["modes"] = {"currentModeId": modes["currentModeId"],
                           "availableModes": modes["availableModes"]}
    if detail.config_options:
        result["configOptions"] = detail.config_options
    return result


def current_actor(detail: m.ChatDetail) -> m.ActorDetail | None:
    """The actor of the chat's current agent (a chat keeps one actor per agent it used)."""
    return next((a for a in detail.actors if a.agent == detail.chat.agent), None)


def session_info(chat: m.ChatSummary) -> JsonObj:
    """One `SessionInfo` of a `session/list` answer."""
    info: JsonObj = {"sessionId": chat.chat, "cwd": chat.cwd}
    if chat.title:
        info["title"] = chat.title
    if chat.updated_at > 0:
        stamp = datetime.datetime.fromtimestamp(chat.updated_at, tz=datetime.UTC)
        info["updatedAt"] = stamp.isoformat().replace("+00:00", "Z")
    return info


def permission_outcome(raw: msgspec.Raw) -> str | None:
    """The option id an editor selected in its `session/request_permission` answer, or None
    for `cancelled` (and for anything unreadable: no answer is not consent)."""
    try:
        answer = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    outcome = answer.get("outcome") if isinstance(answer, dict) else None
    if isinstance(outcome, dict) and outcome.get("outcome") == "selected":
        option = outcome.get("optionId")
        return option if isinstance(option, str) else None
    return None


def permission_params(chat: str, request: str, tool_call: JsonObj,
                      options: list[JsonObj]) -> JsonObj:
    """`session/request_permission` params for a daemon permission request. The agent's
    `toolCall` is passed as is; `toolCallId` is required by ACP, so one is made up from the
    daemon's request id if the agent left it out."""
    call = dict(tool_call)
    if not isinstance(call.get("toolCallId"), str):
        call["toolCallId"] = request
    return {"sessionId": chat, "toolCall": call, "options": options}


_RPC_CODES: Final = {
    ErrorCode.UNKNOWN_CHAT: RESOURCE_NOT_FOUND,
    ErrorCode.NOT_FOUND: RESOURCE_NOT_FOUND,
    ErrorCode.AUTH_REQUIRED: AUTH_REQUIRED,
    ErrorCode.BAD_REQUEST: INVALID_PARAMS,
    ErrorCode.UNKNOWN_AGENT: INVALID_PARAMS,
    ErrorCode.UNKNOWN_WORKSPACE: INVALID_PARAMS,
    ErrorCode.UNSUPPORTED: INVALID_PARAMS,
    ErrorCode.INVALID_STATE: INVALID_PARAMS,
    ErrorCode.ALREADY_ANSWERED: INVALID_PARAMS,
    ErrorCode.QUEUE_FULL: INVALID_PARAMS,
}


def daemon_error(code: str, message: str, detail: Any = None) -> RpcError:
    """A daemon `ErrorReply` as the JSON-RPC error the editor gets. An agent's own JSON-RPC
    error keeps its code; `data.stoker` names the daemon's code for the curious."""
    rpc_code = _RPC_CODES.get(code, INTERNAL_ERROR)  # type: ignore[call-overload]
    if code == ErrorCode.AGENT_ERROR and isinstance(detail, dict):
        agent_code = detail.get("code")
        if isinstance(agent_code, int):
            rpc_code = agent_code
    data: JsonObj = {"stoker": str(code)}
    if code == ErrorCode.AUTH_REQUIRED and isinstance(detail, dict):
        methods = detail.get("authMethods")
        if isinstance(methods, list):
            data["authMethods"] = methods
    return RpcError(rpc_code, message, data)


def turn_failed(chat: str, turn: int, error: str) -> RpcError:
    """A turn that ended with an error (agent crashed, daemon shut down, ...). ACP has no
    stop reason for failure, and agents that fail answer `session/prompt` with an error, so
    the bridge does the same."""
    return RpcError(INTERNAL_ERROR, f"the turn failed: {error}",
                    {"stoker": "turn_failed", "chat": chat, "turn": turn, "error": error})

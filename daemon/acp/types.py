"""ACP messages the daemon decodes, as lenient msgspec Structs.

Lenient on purpose: unknown fields are ignored and most fields have defaults, because agents
in the wild send extras (`models`, `_meta`, unstable fields) and omit optional ones. What we
*send* is checked against the official schema in the tests instead.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.messages import ContentBlock

PROTOCOL_VERSION = 1


class _Lenient(msgspec.Struct, rename="camel", kw_only=True):
    pass


class PromptCapabilities(_Lenient):
    image: bool = False
    audio: bool = False
    embedded_context: bool = False


class AgentCapabilities(_Lenient):
    load_session: bool = False
    prompt_capabilities: PromptCapabilities = msgspec.field(default_factory=PromptCapabilities)
    mcp_capabilities: dict[str, Any] = {}
    session_capabilities: dict[str, Any] = {}


class InitializeResult(_Lenient):
    protocol_version: int = PROTOCOL_VERSION
    agent_capabilities: AgentCapabilities = msgspec.field(default_factory=AgentCapabilities)
    auth_methods: list[dict[str, Any]] = []
    agent_info: dict[str, Any] | None = None


class SessionSetup(_Lenient):
    """The result of session/new, session/load and session/resume."""

    session_id: str | None = None
    modes: dict[str, Any] | None = None
    config_options: list[dict[str, Any]] | None = None
    models: dict[str, Any] | None = None
    """Unstable ACP (`SessionModelState`), sent by qwen and opencode."""


class PromptUsage(_Lenient):
    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    thought_tokens: int | None = None
    cached_read_tokens: int | None = None
    cached_write_tokens: int | None = None


def usage_from_meta(meta: Any) -> PromptUsage | None:
    """Token usage an agent put in an update's `_meta.usage`, if it has the known shape."""
    if not isinstance(meta, dict) or not isinstance(meta.get("usage"), dict):
        return None
    try:
        return msgspec.convert(meta["usage"], PromptUsage)
    except msgspec.ValidationError:
        return None


class PromptResult(_Lenient):
    stop_reason: str = "end_turn"
    usage: PromptUsage | None = None


class SetConfigResult(_Lenient):
    config_options: list[dict[str, Any]] | None = None


# ----------------------------------------------------------------- session/update


class _Update(msgspec.Struct, tag_field="sessionUpdate", rename="camel", kw_only=True):
    pass


class AgentMessageChunk(_Update, tag="agent_message_chunk"):
    content: ContentBlock
    meta: Any = msgspec.field(default=None, name="_meta")
    """Extension data. qwen reports each LLM call's token usage here (`_meta.usage`, the
    shape of ACP's unstable `Usage`) on an empty chunk. `Any`, so that an odd `_meta`
    never costs the chunk its text."""


class AgentThoughtChunk(_Update, tag="agent_thought_chunk"):
    content: ContentBlock


class UserMessageChunk(_Update, tag="user_message_chunk"):
    content: ContentBlock


class ToolCallUpdate(_Update, tag="tool_call"):
    tool_call_id: str
    title: str = ""
    status: str = "pending"


class ToolCallProgress(_Update, tag="tool_call_update"):
    tool_call_id: str
    status: str | None = None


class PlanUpdate(_Update, tag="plan"):
    entries: list[dict[str, Any]] = []


class CommandsUpdate(_Update, tag="available_commands_update"):
    available_commands: list[dict[str, Any]] = []


class CurrentModeUpdate(_Update, tag="current_mode_update"):
    current_mode_id: str


class ConfigOptionUpdate(_Update, tag="config_option_update"):
    config_options: list[dict[str, Any]] = []


class SessionInfoUpdate(_Update, tag="session_info_update"):
    title: str | None = None
    updated_at: str | None = None


class UsageUpdate(_Update, tag="usage_update"):
    used: int = 0
    size: int = 0
    cost: dict[str, Any] | None = None


SessionUpdate = (
    AgentMessageChunk
    | AgentThoughtChunk
    | UserMessageChunk
    | ToolCallUpdate
    | ToolCallProgress
    | PlanUpdate
    | CommandsUpdate
    | CurrentModeUpdate
    | ConfigOptionUpdate
    | SessionInfoUpdate
    | UsageUpdate
)


class SessionNotification(_Lenient):
    session_id: str
    update: msgspec.Raw


# ----------------------------------------------------------------- agent -> client requests


class _SessionRequest(_Lenient):
    session_id: str


class ReadTextFile(_SessionRequest):
    path: str
    line: int | None = None
    limit: int | None = None


class WriteTextFile(_SessionRequest):
    path: str
    content: str


class PermissionOption(_Lenient):
    option_id: str
    name: str = ""
    kind: str = ""


class RequestPermission(_SessionRequest):
    tool_call: dict[str, Any] = {}
    options: list[PermissionOption] = []


class EnvVariable(_Lenient):
    name: str
    value: str


class CreateTerminal(_SessionRequest):
    command: str
    args: list[str] = []
    env: list[EnvVariable] = []
    cwd: str | None = None
    output_byte_limit: int | None = None


class TerminalRef(_SessionRequest):
    terminal_id: str

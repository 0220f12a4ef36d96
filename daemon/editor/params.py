"""The params of the ACP requests `stoker acp` serves, decoded leniently: editors send
`_meta` and fields newer than this bridge, which are ignored rather than refused.
"""

from __future__ import annotations

from typing import Any

import msgspec

from daemon.acp.types import PROTOCOL_VERSION
from protocol import messages as m


class Params(msgspec.Struct, rename="camel", kw_only=True):
    """Lenient decoding of what editors send: unknown fields (`_meta`, newer ones) ignored."""


class InitializeParams(Params):
    """`initialize`."""

    protocol_version: int = PROTOCOL_VERSION
    client_capabilities: dict[str, Any] = {}
    client_info: dict[str, Any] | None = None


class NewSessionParams(Params):
    """`session/new`."""

    cwd: str
    mcp_servers: list[dict[str, Any]] = []


class LoadSessionParams(Params):
    """`session/load` and `session/resume`."""

    session_id: str
    cwd: str = ""
    mcp_servers: list[dict[str, Any]] = []


class ListSessionsParams(Params):
    """`session/list`."""

    cwd: str | None = None
    cursor: str | None = None


class SessionRef(Params):
    """`session/close` and `session/cancel`: just the session."""

    session_id: str


class PromptParams(Params):
    """`session/prompt`."""

    session_id: str
    prompt: list[m.ContentBlock]


class SetModeParams(Params):
    """`session/set_mode`."""

    session_id: str
    mode_id: str


class SetConfigParams(Params):
    """`session/set_config_option`."""

    session_id: str
    config_id: str
    value: str | bool


class AuthenticateParams(Params):
    """`authenticate`."""

    method_id: str


def decode(params: msgspec.Raw | None, kind: type[Any]) -> Any:
    """A request's params as `kind`; absent params decode as `{}`."""
    return msgspec.json.decode(params or b"{}", type=kind)

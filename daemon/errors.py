"""The daemon's exception hierarchy.

One base, `StokerError`, each subclass carrying the protocol `ErrorCode` it maps to. Code deep
in the daemon raises the meaningful subclass; the connection boundary turns any `StokerError`
into an `ErrorReply` with that code, and anything else into `internal` (logged with its
traceback). Nothing a client or an agent does may take the daemon down.
"""

from __future__ import annotations

from typing import Any, ClassVar

from protocol.errors import ErrorCode


class StokerError(Exception):
    """Base of every error the daemon reports to a client."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class BadRequest(StokerError):
    code = ErrorCode.BAD_REQUEST


class UnknownChat(StokerError):
    code = ErrorCode.UNKNOWN_CHAT

    def __init__(self, chat: str) -> None:
        super().__init__(f"unknown chat {chat!r}")
        self.chat = chat


class UnknownAgent(StokerError):
    code = ErrorCode.UNKNOWN_AGENT

    def __init__(self, agent: str, known: list[str] | None = None) -> None:
        hint = f" (known: {', '.join(sorted(known))})" if known else ""
        super().__init__(f"unknown agent {agent!r}{hint}")
        self.agent = agent


class UnknownWorkspace(StokerError):
    code = ErrorCode.UNKNOWN_WORKSPACE


class UnknownComputer(StokerError):
    code = ErrorCode.UNKNOWN_COMPUTER


class NotFound(StokerError):
    code = ErrorCode.NOT_FOUND


class AlreadyAnswered(StokerError):
    code = ErrorCode.ALREADY_ANSWERED


class InvalidState(StokerError):
    code = ErrorCode.INVALID_STATE


class Unsupported(StokerError):
    code = ErrorCode.UNSUPPORTED


class QueueFull(StokerError):
    code = ErrorCode.QUEUE_FULL


class LimitReached(StokerError):
    code = ErrorCode.LIMIT


class AgentUnavailable(StokerError):
    """The agent could not be started, or is `failed` past its restart limit."""

    code = ErrorCode.AGENT_UNAVAILABLE


class AgentRequestFailed(StokerError):
    """The agent answered one of our requests with a JSON-RPC error."""

    code = ErrorCode.AGENT_ERROR

    def __init__(self, method: str, rpc_code: int, rpc_message: str, data: Any = None) -> None:
        super().__init__(
            f"agent answered {method} with error {rpc_code}: {rpc_message}",
            detail={"code": rpc_code, "message": rpc_message, "data": data},
        )
        self.method = method
        self.rpc_code = rpc_code
        self.rpc_message = rpc_message
        self.data = data


class AuthRequired(StokerError):
    code = ErrorCode.AUTH_REQUIRED


class GitError(StokerError):
    code = ErrorCode.GIT_ERROR


class ShuttingDown(StokerError):
    code = ErrorCode.SHUTTING_DOWN


class ConfigError(StokerError):
    """The config file is invalid. Raised at startup (exit 1) and on reload (old config
    stays)."""

    code = ErrorCode.BAD_REQUEST

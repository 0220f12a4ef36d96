"""Messages to a backend actor, and the one-shot reply some of them carry.

The pool (on behalf of clients) talks to backend actors only through these, sent into the
actor's mailbox (a trio memory channel). Commands that need an answer carry a `Reply`, which
the actor resolves when it is done; the requester awaits it.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec
import trio

from protocol.messages import ContentBlock

T = TypeVar("T")


class Reply(Generic[T]):
    """A value or an exception, delivered once."""

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def set(self, value: T) -> None:
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> T:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class PromptJob(msgspec.Struct, kw_only=True):
    """A turn, from acceptance to its end. Mutable: the actor marks its progress."""

    turn: int
    content: list[ContentBlock]
    summary: str
    by: str = ""
    accepted_at: float = 0.0
    started: bool = False
    cancel_requested: bool = False
    ended: bool = False
    streamed_usage: bool = False
    """The agent reported this turn's token usage while streaming (`_meta.usage`): the
    prompt response's own usage, if any, would count it twice."""
    started_at: float | None = None
    """Wall time the turn reached the agent."""
    first_output_at: float | None = None
    tool_calls: int = 0
    open_tools: dict[str, None] = msgspec.field(default_factory=dict)
    """Tool calls of this turn without a final status yet: closed when the turn ends."""
    tokens: list[int | None] = msgspec.field(default_factory=lambda: [None, None, None])
    """Input, output, cached tokens reported during the turn."""
    cost: dict[str, Any] | None = None
    restarts: int = 0
    answered: trio.Event = msgspec.field(default_factory=trio.Event)
    """Set once the agent has answered the turn's `session/prompt` (or the turn stopped
    waiting for it): what a cancel waits for."""


class Cancel(msgspec.Struct, kw_only=True):
    queued: bool = False
    by: str = ""
    turn: int | None = None
    """Only this turn (running or queued); None: the running turn."""


class Permit(msgspec.Struct, kw_only=True):
    request: str
    option: str | None
    by: str
    reply: Any
    """Reply[None]"""


class SetMode(msgspec.Struct, kw_only=True):
    mode: str
    reply: Any


class SetConfig(msgspec.Struct, kw_only=True):
    option: str
    value: str | bool
    reply: Any


class Authenticate(msgspec.Struct, kw_only=True):
    method: str
    reply: Any


class Warm(msgspec.Struct, kw_only=True):
    """Start the agent (if not running) without a prompt, e.g. to learn its capabilities."""

    reply: Any = None


class Hibernate(msgspec.Struct, kw_only=True):
    reason: str


class Close(msgspec.Struct, kw_only=True):
    reason: str


class Shutdown(msgspec.Struct, kw_only=True):
    reason: str


class SetPolicy(msgspec.Struct, kw_only=True):
    """The chat's permission policy changed: requests from now on follow it."""

    policy: str


class UseSpec(msgspec.Struct, kw_only=True):
    """A reload changed this agent's definition: the next generation uses it."""

    spec: Any
    """AgentSpec"""


ActorMessage = (
    PromptJob | Cancel | Permit | SetMode | SetConfig | Authenticate | Warm | Hibernate | Close
    | Shutdown | SetPolicy | UseSpec
)

"""Deltas: what happens in a chat, numbered.

Every chat is a channel. Each event in it is a `Delta` envelope carrying the chat id, a
gapless `seq` (per chat, from 1), a wall-clock timestamp, the turn it belongs to (0 for none)
and a `body` whose `kind` says what happened. Bodies are a tagged union on `kind`.

Bodies that come from the agent's ACP `session/update` keep the agent's own object in an `acp`
field where it carries more than the extracted fields, so that nothing the agent said is lost
and an ACP client can be fed the update unchanged (`stoker acp` does exactly that).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

TurnStop = Literal["end_turn", "max_tokens", "max_turn_requests", "refusal", "cancelled"]
Policy = Literal["ask", "allow", "deny"]
"""A chat's permission policy: `ask` a client, or `allow`/`deny` at once."""


class _Body(msgspec.Struct, tag_field="kind", omit_defaults=True, gc=False):
    """Base of every delta body.

    `gc=False` (inherited): bodies hold only strings, numbers, decoded JSON and other
    bodies, never a reference back, so they cannot form a cycle and the cyclic collector
    need not track them; the daemon makes several per delta (docs/PERFORMANCE.md, ingest)."""


class TurnStarted(_Body, tag="turn_started"):
    """A prompt was accepted. Every turn_started is followed, later, by exactly one turn_ended."""

    agent: str
    prompt: str
    """The prompt's text (other content blocks are summarised as `[image]`, `[file NAME]`)."""
    queued: int = 0
    """How many turns of this chat were ahead of it when it was accepted."""
    by: str = ""
    """The client that sent the prompt (its `hello.client`)."""


class Text(_Body, tag="text"):
    """A chunk of the agent's reply (`agent_message_chunk` with text content), or several
    consecutive chunks joined, when the agent wrote them faster than the daemon read
    (`daemon.coalesce_chunks`): the text is the same either way; how it is cut is not."""

    text: str


class Reasoning(_Body, tag="reasoning"):
    """A chunk of the agent's visible reasoning (`agent_thought_chunk`), or several joined
    (as `text`)."""

    text: str


class UserText(_Body, tag="user_text"):
    """A chunk of a user message as the agent reports it (`user_message_chunk`), or several
    joined (as `text`)."""

    text: str


class Content(_Body, tag="content"):
    """A non-text content block in an agent, thought or user chunk (image, audio, resource)."""

    role: Literal["agent", "thought", "user"]
    block: dict[str, Any]


class ToolCall(_Body, tag="tool_call"):
    tool_call_id: str
    title: str
    status: str = "pending"
    acp: dict[str, Any] = {}


class ToolUpdate(_Body, tag="tool_update"):
    tool_call_id: str
    status: str | None = None
    acp: dict[str, Any] = {}


class Plan(_Body, tag="plan"):
    entries: list[dict[str, Any]]


class Commands(_Body, tag="commands"):
    """The agent's slash commands (`available_commands_update`)."""

    commands: list[dict[str, Any]]


class Mode(_Body, tag="mode"):
    """The session's current mode changed (`current_mode_update` or a set_mode we sent)."""

    mode: str
    available: list[dict[str, Any]] = []


class Config(_Body, tag="config"):
    """The session's config options changed (`config_option_update`, set_config_option)."""

    options: list[dict[str, Any]]


class Usage(_Body, tag="usage"):
    """Context and token usage. `used`/`size` from `usage_update`, tokens from prompt replies."""

    used: int | None = None
    size: int | None = None
    cost: dict[str, Any] | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    total_tokens: int | None = None


class Info(_Body, tag="info"):
    """Session metadata from the agent (`session_info_update`)."""

    title: str | None = None
    updated_at: str | None = None


class PermissionRequest(_Body, tag="permission_request"):
    """The agent asks for permission. Answer with a `permit` request naming `request`."""

    request: str
    agent: str
    tool_call: dict[str, Any]
    options: list[dict[str, Any]]
    policy: Policy = "ask"
    """How it will be decided: `ask` waits for a client's answer; `allow`/`deny` are
    answered at once by the chat's policy (a `permission_resolved` follows)."""
    expires_at: float | None = None


class PermissionResolved(_Body, tag="permission_resolved"):
    request: str
    outcome: Literal["selected", "cancelled"]
    option: str | None = None
    by: str = ""
    """Who decided: a client name, `policy:allow`, `policy:deny`, `timeout`, `cancel`."""


class Status(_Body, tag="status"):
    """An actor changed state: starting, ready, busy, hibernated, crashed, restarting,
    failed, closed."""

    agent: str
    state: str
    reason: str = ""
    pid: int | None = None
    generation: int = 0


class Notice(_Body, tag="notice"):
    """Something a human watching the chat should know (context reset, policy applied...)."""

    level: Literal["info", "warning", "error"]
    message: str


class Terminal(_Body, tag="terminal"):
    """A terminal the agent runs: `created`, `output` (data), `exited` (exit_code/signal),
    `released`."""

    terminal: str
    event: Literal["created", "output", "exited", "released"]
    command: list[str] = []
    data: str = ""
    exit_code: int | None = None
    signal: str | None = None


class Diff(_Body, tag="diff"):
    """The workspace changed during a turn. Latest wins; fetch the full diff with `diff`."""

    workspace: str
    files: int
    insertions: int
    deletions: int
    stat: str = ""


class Raw(_Body, tag="raw"):
    """Anything from the agent this daemon does not map (an unknown update kind or
    notification), kept rather than dropped."""

    method: str
    acp: Any = None


class TurnTiming(msgspec.Struct, omit_defaults=True, gc=False):
    """Where a turn's time and tokens went (unix times, as the deltas' `ts`)."""

    accepted: float
    """The prompt was accepted (its `turn_started`)."""
    started: float | None = None
    """It reached the agent (None: it ended while queued)."""
    first_output: float | None = None
    """The reply's first text, reasoning, content block or tool call."""
    ended: float = 0.0
    tool_calls: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    cost: dict[str, Any] | None = None
    """The agent's last cost report during the turn (`usage_update`: cumulative per session)."""
    restarts: int = 0
    """Times the agent crashed or was restarted while this turn ran."""


class TurnEnded(_Body, tag="turn_ended"):
    """The turn is over: exactly one of `stop_reason` and `error` is set."""

    stop_reason: TurnStop | None = None
    error: str | None = None
    timing: TurnTiming | None = None
    """Set by this daemon on every turn it ends (older logs lack it)."""


class Task(_Body, tag="task"):
    """A task of this chat (a child chat, docs/TASKS.md) changed: `spawned` (accepted;
    running or queued), `started` (its prompt went to its agent), `finished` (its turn
    ended; `summary` is the start of its answer), `failed` (`error` says why), `cancelled`,
    `interrupted` (the daemon stopped while it ran). Published on the parent's channel."""

    task: str
    event: Literal["spawned", "started", "finished", "failed", "cancelled", "interrupted"]
    agent: str
    title: str = ""
    state: str = ""
    """The task's state after the event: queued, running, done, failed, cancelled,
    interrupted."""
    summary: str = ""
    stop_reason: str | None = None
    error: str | None = None


class Workflow(_Body, tag="workflow"):
    """A workflow run whose chat this is changed (docs/WORKFLOWS.md): with `unit`, that
    unit (a step, or `NAME[i]`, an item of a fan-out) is now `state` (waiting, pending,
    running, done, cached, failed, cancelled, skipped); without, the run is (running,
    done, failed, cancelled; `error` says why it stopped). Published on the run's chat's
    channel once it has one (a run whose every step is cached has none)."""

    run: str
    state: str
    unit: str | None = None
    error: str | None = None
    tokens: int = 0
    """The run's tokens so far."""


DeltaBody = (
    TurnStarted
    | Text
    | Reasoning
    | UserText
    | Content
    | ToolCall
    | ToolUpdate
    | Plan
    | Commands
    | Mode
    | Config
    | Usage
    | Info
    | PermissionRequest
    | PermissionResolved
    | Status
    | Notice
    | Terminal
    | Diff
    | Raw
    | TurnEnded
    | Task
    | Workflow
)

DELTA_KINDS: tuple[str, ...] = tuple(
    str(t.__struct_config__.tag)
    for t in DeltaBody.__args__
)


# gc=False: acyclic, like the bodies (see `_Body`).
class Delta(msgspec.Struct, tag="delta", tag_field="type", gc=False):
    """One numbered event of a chat's channel."""

    chat: str
    seq: int
    ts: float
    turn: int
    body: DeltaBody

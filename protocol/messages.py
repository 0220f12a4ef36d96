"""Messages between clients and the daemon.

A connection opens with `Hello` from the client and `Welcome` from the daemon. After that the
client sends requests (each with an `id` it chooses) and the daemon sends `Reply` or
`ErrorReply` naming that id, plus unsolicited messages for subscriptions: `Delta`,
`ReplayComplete`, `ResyncRequired`, `Lagged`, `Heartbeat`, `Goodbye`.

Every message is a msgspec Struct in a union tagged on `type`. `Reply.result` is typed per
request (see `RESULT_TYPES`); clients decode it with `ClientCodec.result` (protocol/codec.py).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .content import (
    AudioBlock,
    ContentBlock,
    ImageBlock,
    ResourceBlock,
    ResourceLinkBlock,
    TextBlock,
)
from .deltas import Delta
from .errors import ErrorCode
from .requests import (
    Authenticate,
    Cancel,
    CloseChat,
    CloseWorkspace,
    Cursor,
    DescribeAgent,
    GetStatus,
    GetTask,
    GetWorkflow,
    Inspect,
    ListAgents,
    ListChats,
    ListComputers,
    ListTasks,
    ListWorkflows,
    ListWorkspaces,
    McpUp,
    OpenChat,
    Permit,
    Ping,
    Prompt,
    Reap,
    Reload,
    Request,
    RequestBase,
    RestoreWorkspace,
    SetConfig,
    SetMode,
    SetPolicy,
    Stats,
    Subscribe,
    TaskCancel,
    TaskNew,
    TaskSend,
    Trace,
    Unsubscribe,
    Warm,
    WorkflowCancel,
    WorkflowResume,
    WorkflowRun,
    WorkspaceDiff,
    WorkspaceNew,
    _Request,
)
from .results import (
    RESULT_TYPES,
    ActorCounts,
    ActorDetail,
    AgentDescription,
    AgentInfo,
    AgentsResult,
    ChatDetail,
    ChatInfo,
    ChatList,
    ChatSummary,
    ComputerInfo,
    ComputerList,
    DiffFile,
    DiffResult,
    Ok,
    PendingPermission,
    Pong,
    PromptAccepted,
    ReapEntry,
    ReapResult,
    ReloadResult,
    SharedProcess,
    Snapshot,
    StatsResult,
    StatsRow,
    StatusResult,
    Struct,
    Subscribed,
    TaskInfo,
    TaskList,
    ToolSpan,
    TraceResult,
    TurnTrace,
    UsageTotals,
    WorkflowFile,
    WorkflowInfo,
    WorkflowList,
    WorkflowStepInfo,
    WorkspaceInfo,
    WorkspaceList,
)

PROTOCOL_VERSION = 1

Encoding = Literal["msgpack", "json"]


# --------------------------------------------------------------------------- handshake


class Hello(msgspec.Struct, tag="hello", tag_field="type", omit_defaults=True, kw_only=True):
    protocol: int = PROTOCOL_VERSION
    encoding: Encoding = "msgpack"
    """WebSocket only: the encoding of every later message. The Unix socket is msgpack."""
    client: str = ""
    """A name for logs and for `by` fields (e.g. `cli`, `zed`, `web`)."""
    token: str | None = None
    """Reserved; ignored. The WebSocket token is checked in the HTTP handshake, before any
    message (`Authorization: Bearer` or a `stoker.bearer.<token>` subprotocol)."""


class Welcome(msgspec.Struct, tag="welcome", tag_field="type", kw_only=True):
    protocol: int
    version: str
    pid: int
    encoding: str
    max_frame: int


ClientMessage = Hello | Request


class RequestHead(msgspec.Struct):
    """Decoded from a frame that failed full validation, to name the request in the error."""

    type: Any = None
    id: Any = None


# --------------------------------------------------------------------------- daemon -> client


class Reply(msgspec.Struct, tag="reply", tag_field="type", kw_only=True):
    id: int
    result: Any


class RawReply(msgspec.Struct, tag="reply", tag_field="type", kw_only=True):
    """`Reply` as a client decodes it: the result left raw until the client knows its type."""

    id: int
    result: msgspec.Raw


class ErrorReply(msgspec.Struct, tag="error", tag_field="type", omit_defaults=True,
                 kw_only=True):
    id: int | None
    """None when the failed frame carried no usable id."""
    code: ErrorCode
    message: str
    detail: Any = None


class ReplayComplete(msgspec.Struct, tag="replay_complete", tag_field="type", kw_only=True,
                     omit_defaults=True):
    """Replay of a subscription is done; what follows is live."""

    chat: str
    head_seq: int
    request: int | None = None
    """The id of the `subscribe` request this completes (None after a `lagged` replay), so a
    client that re-subscribed can tell which subscription it belongs to."""


class ResyncRequired(msgspec.Struct, tag="resync_required", tag_field="type", kw_only=True):
    """The cursor cannot be served (other epoch, or older than what is retained). Start over
    from `snapshot`; live deltas continue after `seq`."""

    chat: str
    epoch: str
    seq: int
    reason: str
    snapshot: Snapshot
    request: int | None = None
    """The `subscribe` request whose cursor could not be served (None when it happened
    later, during a replay)."""


class Lagged(msgspec.Struct, tag="lagged", tag_field="type", kw_only=True):
    """The subscriber fell behind its send queue bound. The daemon replays the `missed`
    deltas from `from_seq` on (nothing is skipped), then sends `replay_complete`."""

    chat: str
    from_seq: int
    head_seq: int
    missed: int


class Heartbeat(msgspec.Struct, tag="heartbeat", tag_field="type", kw_only=True):
    """Sent periodically; `heads` has the head seq of each subscribed chat so a client can
    tell a quiet chat from a lost delta."""

    time: float
    heads: dict[str, int]


class Goodbye(msgspec.Struct, tag="goodbye", tag_field="type", kw_only=True):
    """The daemon is closing this connection (shutdown, protocol error)."""

    reason: str


ServerMessage = (
    Welcome
    | Reply
    | ErrorReply
    | Delta
    | ReplayComplete
    | ResyncRequired
    | Lagged
    | Heartbeat
    | Goodbye
)

ClientSideServerMessage = (
    Welcome
    | RawReply
    | ErrorReply
    | Delta
    | ReplayComplete
    | ResyncRequired
    | Lagged
    | Heartbeat
    | Goodbye
)
"""What a client decodes: like `ServerMessage` but with raw reply results."""


__all__ = [
    "PROTOCOL_VERSION",
    "RESULT_TYPES",
    "ActorCounts",
    "ActorDetail",
    "AgentDescription",
    "AgentInfo",
    "AgentsResult",
    "AudioBlock",
    "Authenticate",
    "Cancel",
    "ChatDetail",
    "ChatInfo",
    "ChatList",
    "ChatSummary",
    "ClientMessage",
    "ClientSideServerMessage",
    "CloseChat",
    "CloseWorkspace",
    "ComputerInfo",
    "ComputerList",
    "ContentBlock",
    "Cursor",
    "Delta",
    "DescribeAgent",
    "DiffFile",
    "DiffResult",
    "Encoding",
    "ErrorCode",
    "ErrorReply",
    "GetStatus",
    "GetTask",
    "GetWorkflow",
    "Goodbye",
    "Heartbeat",
    "Hello",
    "ImageBlock",
    "Inspect",
    "Lagged",
    "ListAgents",
    "ListChats",
    "ListComputers",
    "ListTasks",
    "ListWorkflows",
    "ListWorkspaces",
    "McpUp",
    "Ok",
    "OpenChat",
    "PendingPermission",
    "Permit",
    "Ping",
    "Pong",
    "Prompt",
    "PromptAccepted",
    "RawReply",
    "Reap",
    "ReapEntry",
    "ReapResult",
    "Reload",
    "ReloadResult",
    "ReplayComplete",
    "Reply",
    "Request",
    "RequestBase",
    "RequestHead",
    "ResourceBlock",
    "ResourceLinkBlock",
    "RestoreWorkspace",
    "ResyncRequired",
    "ServerMessage",
    "SetConfig",
    "SetMode",
    "SetPolicy",
    "SharedProcess",
    "Snapshot",
    "Stats",
    "StatsResult",
    "StatsRow",
    "StatusResult",
    "Struct",
    "Subscribe",
    "Subscribed",
    "TaskCancel",
    "TaskInfo",
    "TaskList",
    "TaskNew",
    "TaskSend",
    "TextBlock",
    "ToolSpan",
    "Trace",
    "TraceResult",
    "TurnTrace",
    "Unsubscribe",
    "UsageTotals",
    "Warm",
    "Welcome",
    "WorkflowCancel",
    "WorkflowFile",
    "WorkflowInfo",
    "WorkflowList",
    "WorkflowResume",
    "WorkflowRun",
    "WorkflowStepInfo",
    "WorkspaceDiff",
    "WorkspaceInfo",
    "WorkspaceList",
    "WorkspaceNew",
    "_Request",
]

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

from .deltas import Delta, Policy
from .errors import ErrorCode

PROTOCOL_VERSION = 1

Encoding = Literal["msgpack", "json"]


class Struct(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False, kw_only=True):
    """Base for payload structs (results, parts of requests)."""


# --------------------------------------------------------------------------- content


class TextBlock(msgspec.Struct, tag="text", tag_field="type", omit_defaults=True):
    text: str


class ImageBlock(msgspec.Struct, tag="image", tag_field="type", omit_defaults=True,
                 rename="camel"):
    data: str
    """Base64."""
    mime_type: str
    uri: str | None = None


class AudioBlock(msgspec.Struct, tag="audio", tag_field="type", omit_defaults=True,
                 rename="camel"):
    data: str
    mime_type: str


class ResourceLinkBlock(msgspec.Struct, tag="resource_link", tag_field="type",
                        omit_defaults=True, rename="camel"):
    uri: str
    name: str
    mime_type: str | None = None
    title: str | None = None
    size: int | None = None


class ResourceBlock(msgspec.Struct, tag="resource", tag_field="type", omit_defaults=True):
    resource: dict[str, Any]
    """`{uri, text, mimeType?}` or `{uri, blob, mimeType?}` as in ACP."""


ContentBlock = TextBlock | ImageBlock | AudioBlock | ResourceLinkBlock | ResourceBlock
"""Prompt content, exactly ACP's ContentBlock shapes."""


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


# --------------------------------------------------------------------------- requests


class Cursor(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Where a subscriber left off: the chat's `epoch` and the last `seq` it received."""

    seq: int = 0
    epoch: str | None = None
    """None: accept whatever epoch the chat has (e.g. `since: {seq: 0}` = all retained)."""


class _Request(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    id: int


RequestBase = _Request
"""Base class of every request (subsystems define theirs in their own section below)."""


class Ping(_Request, tag="ping"):
    pass


class GetStatus(_Request, tag="status"):
    pass


class ListAgents(_Request, tag="agents"):
    pass


class OpenChat(_Request, tag="open_chat"):
    """Create a chat, or return the existing one with this id.

    With an existing chat, `agent` switches the chat's current agent; `cwd`, `workspace`,
    `project` must match (or be omitted)."""

    chat: str | None = None
    agent: str | None = None
    cwd: str | None = None
    """Working directory of a new chat. For an existing chat it is checked only when
    `require_cwd` is set."""
    require_cwd: bool = False
    workspace: str | None = None
    project: str | None = None
    computer: str | None = None
    policy: Policy | None = None
    title: str | None = None
    mcp_servers: list[dict[str, Any]] | None = None
    """ACP `McpServer` objects passed to the agent's session/new (and load/resume)."""
    create: bool = True
    """False: fail with `unknown_chat` instead of creating it."""


class Prompt(_Request, tag="prompt"):
    """Queue a turn. The reply comes when the prompt is accepted (durably queued), not when
    the turn ends: watch the chat's deltas for `turn_ended` with the returned turn."""

    chat: str
    text: str = ""
    content: list[ContentBlock] = []
    """If non-empty, the whole prompt (`text` is then ignored)."""
    agent: str | None = None
    """Switch the chat to this agent first."""


class Cancel(_Request, tag="cancel"):
    """Cancel the chat's running turn (the agent gets `session/cancel`; the turn ends with
    stop reason `cancelled`)."""

    chat: str
    queued: bool = False
    """Also drop the queued turns (each ends with `cancelled`)."""
    turn: int | None = None
    """Cancel only this turn: running -> cancelled; still queued -> dropped (it ends
    `cancelled` without reaching the agent); already ended -> nothing happens. Lets a client
    cancel its own prompt without touching another client's running turn."""


class CloseChat(_Request, tag="close"):
    chat: str


class Subscribe(_Request, tag="subscribe"):
    """Receive the chat's deltas. `since=None`: live only. Otherwise everything after
    `since.seq` is replayed, then `replay_complete`, then live deltas, with no gap and no
    duplicate. `live=False`: stop after `replay_complete` (for `stoker log`)."""

    chat: str
    since: Cursor | None = None
    live: bool = True


class Unsubscribe(_Request, tag="unsubscribe"):
    chat: str


class ListChats(_Request, tag="ls"):
    include_closed: bool = False
    cwd: str | None = None


class Inspect(_Request, tag="inspect"):
    chat: str


class Permit(_Request, tag="permit"):
    chat: str
    request: str
    option: str | None = None
    """None: answer `cancelled`."""


class SetPolicy(_Request, tag="policy"):
    chat: str
    policy: Policy


class SetMode(_Request, tag="mode"):
    chat: str
    mode: str


class SetConfig(_Request, tag="config"):
    chat: str
    option: str
    value: str | bool


class Authenticate(_Request, tag="auth"):
    chat: str
    method: str


class Reload(_Request, tag="reload"):
    """Re-read the config file (as SIGHUP does)."""


class DescribeAgent(_Request, tag="describe_agent"):
    """The agent's ACP capabilities as the daemon knows them. When no actor of this agent
    has run yet, the daemon starts the agent once, asks `initialize`, and stops it."""

    agent: str


class Warm(_Request, tag="warm"):
    """Start the chat's current agent if it is not running and wait until it is ready;
    returns its `ActorDetail` (modes, config options, capabilities)."""

    chat: str


# --------------------------------------------------------------------------- workspaces
# Requests and results of the workspaces subsystem (daemon/workspaces.py, docs/WORKSPACES.md).
# `OpenChat` with `workspace` or `project` is served by that subsystem as well.


class WorkspaceNew(_Request, tag="workspace_new"):
    """Create a workspace: a git worktree of `project` (an absolute path inside a git work
    tree) on a new branch (default `stoker/<id>`) from the project's HEAD."""

    project: str
    branch: str | None = None
    computer: str | None = None


class ListWorkspaces(_Request, tag="workspace_ls"):
    include_deleted: bool = False
    """Also list purged, forgotten and failed workspaces."""


class CloseWorkspace(_Request, tag="workspace_close"):
    """Close the workspace's open chats and mark it orphaned: the reaper may remove its
    worktree once the grace period passed, if nothing in it would be lost."""

    workspace: str


class RestoreWorkspace(_Request, tag="workspace_restore"):
    """Move a soft-deleted worktree back from the trash (before it is purged) and make git
    know it again. `workspace` is a workspace id or a tombstone id."""

    workspace: str


class WorkspaceDiff(_Request, tag="workspace_diff"):
    """Changes since the workspace's base commit: commits, uncommitted edits, untracked
    files."""

    workspace: str
    patch: bool = True
    """Include the unified diff."""
    stat: bool = False
    """Include git's `--stat` text."""


class Reap(_Request, tag="reap"):
    """Run the reaper now. `dry_run`: only report what would go and what stays, and why."""

    dry_run: bool = False


class WorkspaceInfo(Struct):
    workspace: str
    project: str
    path: str
    branch: str
    base: str
    """The commit the worktree was created from; diffs are against it."""
    state: str
    """creating, active, orphaned, trashed, purged, gone (its directory had vanished),
    failed (creation failed)."""
    created_at: float
    computer: str | None = None
    orphaned_at: float | None = None
    reason: str = ""
    """Why the reaper last kept it (dirty, unpushed, grace, ...), or what went wrong."""
    detail: str = ""
    chats: list[str] = []
    """Open chats working in it."""
    tombstone: str | None = None
    trashed_at: float | None = None
    purge_after: float | None = None
    """When trashed: the time after which the trash may be purged."""


class WorkspaceList(Struct):
    workspaces: list[WorkspaceInfo]


class DiffFile(Struct):
    path: str
    insertions: int = 0
    deletions: int = 0
    binary: bool = False


class DiffResult(Struct):
    workspace: str
    base: str
    files: list[DiffFile] = []
    insertions: int = 0
    deletions: int = 0
    summary: str = ""
    """git's `--stat` summary line ("2 files changed, 3 insertions(+)")."""
    stat: str = ""
    patch: str = ""
    truncated: bool = False
    """The patch was cut to fit in one reply frame."""


class ReapEntry(Struct):
    path: str
    action: Literal["keep", "delete", "forget", "purge"]
    reason: str
    detail: str = ""
    workspace: str | None = None
    """None for a directory under the root that the store does not know."""
    tombstone: str | None = None
    done: bool = False
    """The action was carried out (always False in a dry run and for `keep`)."""


class ReapResult(Struct):
    dry_run: bool
    entries: list[ReapEntry] = []


# --------------------------------------------------------------------------- computers
# Requests and results of the SSH subsystem (daemon/ssh/, docs/REMOTE.md).


class ListComputers(_Request, tag="computers"):
    """The configured remote computers and their SSH connections. It never connects: a
    computer nobody used yet stays `idle`."""

    probe: bool = True
    """Measure the latency now (one SFTP round trip on each live connection)."""


class ComputerInfo(Struct):
    name: str
    host: str
    port: int
    state: str
    """idle (not connected yet), connecting, connected, disconnected (lost; reconnecting),
    unreachable (the last attempt failed; retried with backoff), refused (host key or
    authentication: fix the config), removed (gone from the config)."""
    user: str | None = None
    latency_ms: float | None = None
    """Last measured SFTP round trip."""
    last_error: str = ""
    connected_since: float | None = None
    processes: int = 0
    """Agent and terminal processes running there now."""
    connects: int = 0
    losses: int = 0
    """Connections lost (not closed by us) since the daemon started."""


class ComputerList(Struct):
    computers: list[ComputerInfo] = []


Request = (
    Ping
    | GetStatus
    | ListAgents
    | OpenChat
    | Prompt
    | Cancel
    | CloseChat
    | Subscribe
    | Unsubscribe
    | ListChats
    | Inspect
    | Permit
    | SetPolicy
    | SetMode
    | SetConfig
    | Authenticate
    | Reload
    | DescribeAgent
    | Warm
    | WorkspaceNew
    | ListWorkspaces
    | CloseWorkspace
    | RestoreWorkspace
    | WorkspaceDiff
    | Reap
    | ListComputers
)

ClientMessage = Hello | Request


class RequestHead(msgspec.Struct):
    """Decoded from a frame that failed full validation, to name the request in the error."""

    type: Any = None
    id: Any = None


# --------------------------------------------------------------------------- results


class Ok(Struct):
    """The result of requests that only succeed or fail."""


class Pong(Struct):
    time: float


class ActorCounts(Struct):
    total: int = 0
    warm: int = 0
    busy: int = 0
    by_state: dict[str, int] = {}


class StatusResult(Struct):
    pid: int
    version: str
    started_at: float
    uptime: float
    socket: str
    state_dir: str
    chats: int
    actors: ActorCounts
    memory_rss: int
    """Summed RSS of warm agent process trees, bytes."""
    daemon_rss: int
    restarts_last_hour: int
    websocket: str | None = None


class AgentInfo(Struct):
    name: str
    command: list[str]
    available: bool
    source: Literal["builtin", "config"]
    reason: str = ""
    computer: str | None = None


class AgentsResult(Struct):
    agents: list[AgentInfo]
    default: str


class ChatInfo(Struct):
    chat: str
    agent: str
    cwd: str
    epoch: str
    head_seq: int
    created: bool = False
    workspace: str | None = None
    computer: str | None = None
    policy: str = "ask"
    title: str | None = None
    closed: bool = False


class PromptAccepted(Struct):
    chat: str
    turn: int
    queued: int
    """Turns ahead of this one."""


class ChatSummary(Struct):
    chat: str
    agent: str
    state: str
    cwd: str
    pid: int | None = None
    generation: int = 0
    rss: int | None = None
    idle: float | None = None
    """Seconds since the agent's last activity (None: no agent process)."""
    turns: int = 0
    queued: int = 0
    title: str | None = None
    workspace: str | None = None
    updated_at: float = 0.0
    closed: bool = False


class ChatList(Struct):
    chats: list[ChatSummary]


class UsageTotals(Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0
    cost: float = 0.0
    currency: str | None = None
    context_used: int | None = None
    context_size: int | None = None


class ActorDetail(Struct):
    agent: str
    state: str
    reason: str = ""
    pid: int | None = None
    pgid: int | None = None
    generation: int = 0
    session_id: str | None = None
    last_activity: float | None = None
    """Wall-clock time of the last traffic from the agent or turn activity."""
    turns: int = 0
    queued: int = 0
    current_turn: int | None = None
    restarts: int = 0
    rss: int | None = None
    capabilities: dict[str, Any] = {}
    agent_info: dict[str, Any] = {}
    auth_methods: list[dict[str, Any]] = []
    modes: dict[str, Any] | None = None
    config_options: list[dict[str, Any]] = []
    models: dict[str, Any] | None = None
    """The agent's (unstable ACP) model state, when it reports one instead of a `model`
    config option: `currentModelId`, `availableModels`."""
    commands: list[dict[str, Any]] = []
    usage: UsageTotals = msgspec.field(default_factory=UsageTotals)
    pending_permissions: list[str] = []
    terminals: list[str] = []


class AgentDescription(Struct):
    agent: str
    capabilities: dict[str, Any] = {}
    agent_info: dict[str, Any] = {}
    auth_methods: list[dict[str, Any]] = []
    protocol_version: int = 1


class ChatDetail(Struct):
    chat: ChatInfo
    actors: list[ActorDetail]


class PendingPermission(Struct):
    request: str
    agent: str
    tool_call: dict[str, Any]
    options: list[dict[str, Any]]
    seq: int


class Snapshot(Struct):
    """What a client needs to show a chat without its history: the state, the open turn and
    its text so far, pending permissions. Sent with `resync_required` and `subscribe`."""

    chat: str
    agent: str = ""
    state: str = ""
    turn: int | None = None
    turn_prompt: str | None = None
    turn_text: str = ""
    pending_permissions: list[PendingPermission] = []
    last_turn: int = 0


class Subscribed(Struct):
    chat: str
    epoch: str
    head_seq: int
    floor_seq: int
    """The lowest seq still retained (in memory or in the log)."""
    snapshot: Snapshot


RESULT_TYPES: dict[type[msgspec.Struct], type[msgspec.Struct]] = {
    Ping: Pong,
    GetStatus: StatusResult,
    ListAgents: AgentsResult,
    OpenChat: ChatInfo,
    Prompt: PromptAccepted,
    Cancel: Ok,
    CloseChat: Ok,
    Subscribe: Subscribed,
    Unsubscribe: Ok,
    ListChats: ChatList,
    Inspect: ChatDetail,
    Permit: Ok,
    SetPolicy: Ok,
    SetMode: Ok,
    SetConfig: Ok,
    Authenticate: Ok,
    Reload: Ok,
    DescribeAgent: AgentDescription,
    Warm: ActorDetail,
    WorkspaceNew: WorkspaceInfo,
    ListWorkspaces: WorkspaceList,
    CloseWorkspace: WorkspaceInfo,
    RestoreWorkspace: WorkspaceInfo,
    WorkspaceDiff: DiffResult,
    Reap: ReapResult,
    ListComputers: ComputerList,
}
"""The type of `Reply.result` for each request type."""


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

"""Results: the `result` of each request's `Reply` (`RESULT_TYPES` maps one to the other)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .requests import (
    Authenticate,
    Cancel,
    CloseChat,
    CloseWorkspace,
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
)


class Struct(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False, kw_only=True):
    """Base for payload structs (results, parts of requests)."""


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
    connections: list[int] = []
    """Open connections, as the number of long-lived channels (agents, terminals, git
    commands) each carries, the main connection first; more than one once a connection
    reached `sessions_per_connection` or the server refused a session (`MaxSessions`)."""


class ComputerList(Struct):
    computers: list[ComputerInfo] = []


# --------------------------------------------------------------------------- results


class Ok(Struct):
    """The result of requests that only succeed or fail."""


class ReloadResult(Struct):
    """What a reload changed."""

    changed: list[str] = []
    """Dotted names of the settings that changed (`lifecycle.idle_ttl`, `agents.qwen`):
    names only, never values."""
    restart_needed: list[str] = []
    """Those of `changed` that are read only at startup (`websocket.enabled`, ...): they
    take effect when the daemon restarts."""


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
    mcp_http: str | None = None
    """Stoker's MCP server over Streamable HTTP (loopback), once bound: it is bound the first
    time an agent that speaks MCP over HTTP gets it (docs/TASKS.md); None before."""
    config: str = ""
    """The config file the daemon reads (`stoker reload` re-reads it); when it does not
    exist, the defaults apply."""


class AgentInfo(Struct):
    name: str
    command: list[str]
    available: bool
    source: Literal["builtin", "config"]
    reason: str = ""
    computer: str | None = None
    process: Literal["per-chat", "shared"] = "per-chat"
    """`shared`: its chats share agent processes (docs/SHARED_PROCESSES.md)."""


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


class SharedProcess(Struct):
    """The shared agent process a chat's session is on (an agent with
    `process = "shared"`; docs/SHARED_PROCESSES.md)."""

    id: str
    """The process's name in the daemon: `AGENT@COMPUTER#N` (`local` for this machine)."""
    pid: int | None = None
    sessions: int = 0
    """Chats' sessions on it now; the chat's `rss` is the process tree's RSS split evenly
    among them."""


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
    process: SharedProcess | None = None
    """Set when the chat's session is on a shared agent process."""


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
    process: SharedProcess | None = None
    """Set when the session is on a shared agent process (its `rss` is then this chat's
    share of the process's)."""
    mcp: str | None = None
    """Stoker's MCP server in the current session: `up (stdio)`, `not up (http)`...; None
    when the session was not offered it (docs/TASKS.md)."""


class AgentDescription(Struct):
    agent: str
    capabilities: dict[str, Any] = {}
    agent_info: dict[str, Any] = {}
    auth_methods: list[dict[str, Any]] = []
    protocol_version: int = 1


class ChatDetail(Struct):
    chat: ChatInfo
    actors: list[ActorDetail]
    parent: str | None = None
    """Set when the chat is a task (docs/TASKS.md): the chat that started it."""
    tasks: list[str] = []
    """The chat's tasks, oldest first."""


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


class ToolSpan(Struct):
    """One tool call of a turn, from its `tool_call` to its last `tool_update`."""

    tool_call_id: str
    title: str
    kind: str = ""
    start: float = 0.0
    end: float | None = None
    """None: it never reported a final status (the turn ended first)."""
    status: str = "pending"
    """The last status it reported: completed, failed, cancelled, or still pending /
    in_progress when the turn ended without closing it."""


class TurnTrace(Struct):
    """One turn's timeline. Times are Unix seconds; durations are derived."""

    turn: int
    agent: str = ""
    prompt: str = ""
    accepted: float = 0.0
    """`turn_started`: the prompt was accepted (queued behind `queued` turns)."""
    queued: int = 0
    started: float = 0.0
    """When it could run: accepted, or the end of the turn before it."""
    first_output: float | None = None
    """The first text, reasoning, content or tool call of the reply."""
    ended: float | None = None
    """`turn_ended`; None: still running (or the log lost its end)."""
    outcome: str = ""
    """The stop reason (end_turn, cancelled, ...) or `error`."""
    error: str | None = None
    tool_calls: list[ToolSpan] = []
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    cost: float | None = None
    """In the agent's currency (`cost_currency`), when it reports one."""
    cost_currency: str | None = None
    restarts: int = 0
    """Times the agent crashed or was restarted during the turn."""

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    @property
    def ttft(self) -> float | None:
        return None if self.first_output is None else self.first_output - self.started


class TraceResult(Struct):
    chat: str
    turns: list[TurnTrace] = []
    truncated: bool = False
    """The log no longer holds the start of the oldest turn asked for."""


class StatsRow(Struct):
    key: str
    """The agent, the project directory or the day (YYYY-MM-DD, UTC)."""
    turns: int = 0
    failed: int = 0
    """Turns that ended with an error."""
    cancelled: int = 0
    duration_p50: float | None = None
    duration_p95: float | None = None
    ttft_p50: float | None = None
    ttft_p95: float | None = None
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    restarts: int = 0
    hibernations: int = 0


class StatsResult(Struct):
    by: str
    since: float
    rows: list[StatsRow] = []
    chats: int = 0
    """Chats looked at."""
# --------------------------------------------------------------------------- tasks


class TaskInfo(Struct):
    """One task: a chat with a parent (docs/TASKS.md)."""

    task: str
    """The task's chat id (attach, log, inspect it like any chat)."""
    parent: str
    agent: str
    title: str
    origin: str
    """client or agent."""
    state: str
    """queued (waiting for a slot under the parent's limit), running, done, failed,
    cancelled, interrupted (the daemon stopped while it ran)."""
    depth: int
    """1 for a task of a top-level chat, 2 for a task of a task, ..."""
    cwd: str
    created_at: float
    workspace: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    turn: int | None = None
    """The task chat's turn that runs (or ran) the latest prompt."""
    result: str = ""
    """The final text of its last turn (when done, failed or cancelled)."""
    stop_reason: str | None = None
    error: str | None = None
    files_changed: list[str] = []
    """Files changed in the task's worktree (workspace tasks only)."""
    tokens: int = 0
    """Tokens its turns used, from the agent's usage reports (`tasks.token_budget`)."""


class TaskList(Struct):
    tasks: list[TaskInfo] = []
    agents: list[str] = []
    """The agents tasks may use (the config's `tasks.agents`, else every available one)."""


# --------------------------------------------------------------------------- workflows


class WorkflowStepInfo(Struct):
    """One unit of a run: a step, or one item of a `for_each` step."""

    unit: str
    """The step's name, or `NAME[i]` for item i of a for_each step."""
    step: str
    state: str
    """waiting (for its needs), pending, running, done, cached (the result of an earlier
    run with the same spec), failed, cancelled, skipped (a step it needs failed)."""
    agent: str
    needs: list[str] = []
    index: int | None = None
    item: str | None = None
    task: str | None = None
    """The task (chat) of its latest attempt: attach, log, inspect it like any chat."""
    attempts: int = 0
    tokens: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    result: str = ""


class WorkflowInfo(Struct):
    """A run of a workflow (docs/WORKFLOWS.md)."""

    run: str
    name: str
    path: str
    state: str
    """running, done, failed, cancelled."""
    cwd: str
    created_at: float
    version: int = 0
    """Grows with every change of the run or its steps."""
    reason: str | None = None
    """Why it failed or stopped (a step's error, the token budget, a cancel)."""
    chat: str | None = None
    """The run's chat: its steps are its tasks (`stoker tasks CHAT`)."""
    origin: str | None = None
    """The chat whose agent started the run (through Stoker's MCP server), if one did."""
    ended_at: float | None = None
    tokens: int = 0
    budget: int | None = None
    concurrency: int = 3
    inputs: dict[str, Any] = {}
    steps: list[WorkflowStepInfo] = []


class WorkflowFile(Struct):
    """A discovered workflow file."""

    name: str
    path: str
    description: str = ""
    error: str | None = None
    """Why it would not run (validation), if it would not."""


class WorkflowList(Struct):
    runs: list[WorkflowInfo] = []
    available: list[WorkflowFile] = []


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
    Reload: ReloadResult,
    DescribeAgent: AgentDescription,
    Warm: ActorDetail,
    WorkspaceNew: WorkspaceInfo,
    ListWorkspaces: WorkspaceList,
    CloseWorkspace: WorkspaceInfo,
    RestoreWorkspace: WorkspaceInfo,
    WorkspaceDiff: DiffResult,
    Reap: ReapResult,
    ListComputers: ComputerList,
    Trace: TraceResult,
    Stats: StatsResult,
    TaskNew: TaskInfo,
    ListTasks: TaskList,
    GetTask: TaskInfo,
    TaskSend: TaskInfo,
    TaskCancel: TaskInfo,
    WorkflowRun: WorkflowInfo,
    ListWorkflows: WorkflowList,
    GetWorkflow: WorkflowInfo,
    WorkflowCancel: WorkflowInfo,
    WorkflowResume: WorkflowInfo,
    McpUp: Ok,
}
"""The type of `Reply.result` for each request type."""

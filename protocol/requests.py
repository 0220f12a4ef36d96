"""Requests: what a client asks of the daemon. Each carries an `id` the reply names; the
type of each reply's result is in `protocol.results.RESULT_TYPES`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .content import ContentBlock
from .deltas import Policy

FsPath = Annotated[str, msgspec.Meta(pattern="^[^\\x00]*$")]
"""A file-system path: any string without a NUL byte, which no path can hold. Refused when
the request is decoded (`bad_request` naming the field), before any code uses it."""

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
    cwd: FsPath | None = None
    """Working directory of a new chat. For an existing chat it is checked only when
    `require_cwd` is set."""
    require_cwd: bool = False
    workspace: str | None = None
    project: FsPath | None = None
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
    duplicate. `live=False`: stop after `replay_complete` (for `stoker log`); the replay
    then covers every delta the chat published before the request (it waits for their
    commit), so a client that saw a turn end or a task finish reads the delta saying so."""

    chat: str
    since: Cursor | None = None
    live: bool = True


class Unsubscribe(_Request, tag="unsubscribe"):
    chat: str


class ListChats(_Request, tag="ls"):
    include_closed: bool = False
    cwd: FsPath | None = None


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

    project: FsPath
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


# --------------------------------------------------------------------------- computers
# Requests and results of the SSH subsystem (daemon/ssh/, docs/REMOTE.md).


class ListComputers(_Request, tag="computers"):
    """The configured remote computers and their SSH connections. It never connects: a
    computer nobody used yet stays `idle`."""

    probe: bool = True
    """Measure the latency now (one SFTP round trip on each live connection)."""


class Trace(_Request, tag="trace"):
    """Where a chat's turns spent their time: per turn, when it was accepted, started,
    produced its first output and ended, and each tool call as a span (derived from the
    chat's logged deltas, so it covers what the log retains)."""

    chat: str
    turn: int | None = None
    """One turn; None: the chat's last `last` turns."""
    last: int = 20


class Stats(_Request, tag="stats"):
    """Turns, durations, time to first output, tokens, cost, failures and restarts,
    grouped by agent, project (the chat's directory) or day (UTC), over the chats active
    since `since`."""

    by: Literal["agent", "project", "day"] = "agent"
    since: float | None = None
    """Unix time; None: the last 7 days."""
# --------------------------------------------------------------------------- tasks
# Requests of the tasks subsystem (daemon/tasks/, docs/TASKS.md): a task is a chat with a
# parent chat. `caller` + `credential` are set by Stoker's MCP server (`stoker mcp`, or the
# daemon's HTTP endpoint), which acts for one chat: the daemon checks the credential it
# generated for that chat, and the request may then only touch that chat's own tasks.

TaskWorkspace = Annotated[str, msgspec.Meta(pattern="^[^\\x00]*$")]
"""Where a task works: `parent` (the parent's directory, the default), `worktree` (a new
git worktree of the parent's project) or an absolute directory inside the parent's."""


class _TaskRequest(_Request, kw_only=True):
    caller: str | None = None
    """The chat acting (set by Stoker's MCP server); requires `credential`."""
    credential: str | None = None
    """The per-chat credential the daemon gave `caller`'s MCP server."""


class TaskNew(_TaskRequest, tag="task_new", kw_only=True):
    """Start a task: a new chat under `parent` running `prompt` on `agent`. It runs at once
    if the parent has fewer running tasks than its limit, else it queues."""

    parent: str
    """The chat the task belongs to (its results come back there)."""
    prompt: str
    """What the task should do: its first prompt."""
    agent: str | None = None
    """Default: the parent's agent."""
    title: str | None = None
    """Default: the start of the prompt."""
    workspace: TaskWorkspace | None = None
    """`parent` (default), `worktree` or an absolute directory inside the parent's."""
    origin: Literal["client", "agent"] = "client"
    """Who asked: a client, or an agent (through Stoker's MCP server)."""


class ListTasks(_TaskRequest, tag="tasks", kw_only=True):
    """Tasks, oldest first: the children of `parent` (with `recursive`, the whole tree
    below it), or every task when `parent` is None."""

    parent: str | None = None
    """The chat whose tasks to list (with a credential: the caller's own by default)."""
    recursive: bool = False
    """Also the tasks of those tasks, all the way down."""


class GetTask(_TaskRequest, tag="task", kw_only=True):
    """One task's state and, once it ended, its result. `wait` > 0: answer when the task
    is no longer queued or running, or after `wait` seconds, whichever comes first."""

    task: str
    """The task's id (its chat id)."""
    wait: float = 0.0
    """Seconds to wait for the task to end (at most 3600)."""


class TaskSend(_TaskRequest, tag="task_send", kw_only=True):
    """Another prompt for a task (a follow-up in the same chat); it runs like a new task
    under the parent's limits."""

    task: str
    """The task's id."""
    prompt: str
    """The follow-up prompt."""


class TaskCancel(_TaskRequest, tag="task_cancel", kw_only=True):
    """Cancel a task: a queued one never runs, a running one gets `session/cancel`. Its
    own tasks are cancelled too."""

    task: str
    """The task's id."""


# --------------------------------------------------------------------------- workflows
# Requests of the workflows subsystem (daemon/workflows/, docs/WORKFLOWS.md): a run of a
# workflow file, each step a task under the run's chat.


class WorkflowRun(_Request, tag="workflow_run", kw_only=True):
    """Start a run of a workflow. The file is validated whole first: any problem (a cycle,
    an unknown step or agent, a bad template, a type error) is a `bad_request` naming the
    file, line and key, and nothing starts."""

    workflow: FsPath
    """The file's path, or the name of a discovered workflow (.stoker/workflows/NAME.toml
    in `cwd` or above it, then the config dir's workflows/)."""
    source: str | None = None
    """The file's text, as the client read it (None: the daemon reads `workflow`)."""
    inputs: dict[str, str] = {}
    """Input values as text (`--input k=v`), typed by the workflow's declarations."""
    cwd: FsPath | None = None
    """Where the steps work (workspace `inherit`); default: the file's directory."""
    caller: str | None = None
    """The chat acting (set by Stoker's MCP server, tool `run_workflow`); requires `credential`.
    The run then works in the caller's directory, and only the caller may read it."""
    credential: str | None = None


class ListWorkflows(_Request, tag="workflows", kw_only=True):
    """The runs, newest first; with `available`, also the workflow files discovered from
    `cwd`."""

    available: bool = False
    cwd: FsPath | None = None


class GetWorkflow(_Request, tag="workflow", kw_only=True):
    """One run with its steps. `wait` > 0: answer once the run's `version` differs from
    `version` (something changed) or it ended, or after `wait` seconds."""

    run: str
    wait: float = 0.0
    version: int = -1
    caller: str | None = None
    """As in `workflow_run`: an agent may read only the runs it started."""
    credential: str | None = None


class WorkflowCancel(_Request, tag="workflow_cancel", kw_only=True):
    """Cancel a run: its running steps are cancelled, nothing more starts."""

    run: str


class WorkflowResume(_Request, tag="workflow_resume", kw_only=True):
    """Run a failed or cancelled run again: finished steps are kept, the others run."""

    run: str



class McpUp(_Request, tag="mcp_up", kw_only=True):
    """Stoker's MCP server of `chat` is up: the agent finished the MCP handshake with it.
    Sent by `stoker mcp` (stdio); the daemon's HTTP endpoint notes it itself. The daemon
    warns in a chat whose session never brings its server up (docs/TASKS.md)."""

    chat: str
    credential: str
    """The chat's credential, from the server's environment."""
    agent: str | None = None
    """The agent whose session was offered this server (`STOKER_MCP_AGENT` in its
    environment): a chat's agents are checked apart. None: every offer of the chat."""


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
    | Trace
    | Stats
    | TaskNew
    | ListTasks
    | GetTask
    | TaskSend
    | TaskCancel
    | WorkflowRun
    | ListWorkflows
    | GetWorkflow
    | WorkflowCancel
    | WorkflowResume
    | McpUp
)

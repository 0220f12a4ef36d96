"""The config file: typed structs decoded by msgspec from TOML.

Every section is a Struct with `forbid_unknown_fields`, so a typo is an error naming the key
and its path (``unknown field `idle_tt` - at `$.lifecycle` ``), never a silently ignored
setting. Durations are strings such as "500ms", "10s", "30m", "7d"; sizes are "8GiB", "512KB"
or plain byte counts. A missing file means the defaults.
"""

from __future__ import annotations

import difflib
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from daemon.config import units
from daemon.errors import ConfigError

# The value types (daemon/config/units.py), here too: importers of the config use this module.
Duration = units.Duration
ByteSize = units.ByteSize
MemoryBudget = units.MemoryBudget
machine_memory = units.machine_memory
DEFAULT_MEMORY_SHARE = units.DEFAULT_MEMORY_SHARE
parse_duration = units.parse_duration
parse_size = units.parse_size
parse_memory_budget = units.parse_memory_budget
format_duration = units.format_duration
_dec_hook = units._dec_hook
_enc_hook = units._enc_hook


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=False):
    pass


class DaemonConfig(_Section):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    default_agent: str = "echo"
    max_frame: ByteSize = ByteSize(16 * 1024 * 1024)
    max_connections: int = 256
    hello_timeout: Duration = Duration(10.0)
    """A connection that says no hello within this is closed (0: never)."""
    idle_timeout: Duration = Duration(15 * 60.0)
    """A connection with no subscription and no request for this long is closed (0: never)."""
    queue_limit: int = 64
    """Prompts waiting per chat (beyond the running one); more -> `queue_full`."""
    stop_grace: Duration = Duration(5.0)
    """SIGTERM to an agent's process group, then SIGKILL after this."""
    stderr_log_rate: int = 20
    """Lines of one agent's stderr logged per second after the burst; the rest are counted
    and the count logged (0: no limit)."""
    stderr_log_burst: int = 200
    """Lines of one agent's stderr logged at once before the rate applies."""
    max_line: ByteSize = ByteSize(64 * 1024 * 1024)
    """Longest JSON-RPC line accepted from an agent (qwen's first update is ~100 KB)."""
    request_timeout: Duration = Duration(60.0)
    """initialize / session/new / set_mode... answered within this, or the agent is broken."""
    storage_patience: Duration = Duration(5.0)
    """How long a request waits for a store that cannot commit (a full disk) before it is
    answered `storage_unavailable`; a stop waits as long before giving up its writes."""
    coalesce_chunks: int = 16
    """A read of an agent's output holding at least this many text chunks publishes each
    run of one kind as one delta (up to 64 KiB of text; 0: one delta per chunk always)."""

    def __post_init__(self) -> None:
        if self.coalesce_chunks < 0:
            raise ValueError("coalesce_chunks must not be negative")
        if self.queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.stderr_log_rate < 0:
            raise ValueError("stderr_log_rate must not be negative")
        if self.stderr_log_burst < 1:
            raise ValueError("stderr_log_burst must be at least 1")
        if self.storage_patience <= 0:
            raise ValueError("storage_patience must be positive")


class AgentConfig(_Section):
    command: list[str]
    env: dict[str, str] = {}
    computer: str | None = None
    description: str = ""
    enabled: bool = True
    process: Literal["per-chat", "shared"] = "per-chat"
    """`shared`: the agent's chats share warm processes (one ACP session per chat on one
    connection; docs/SHARED_PROCESSES.md) instead of one process per chat."""
    shared_by: Literal["computer", "cwd"] = "computer"
    """With `process = "shared"`: one process per computer, or one per working directory."""
    sessions_per_process: int = 16
    """With `process = "shared"`: sessions on one process; more start another process."""

    def __post_init__(self) -> None:
        if not self.command or not self.command[0]:
            raise ValueError("command must be a non-empty list, e.g. [\"qwen\", \"--acp\"]")
        if self.sessions_per_process < 1:
            raise ValueError("sessions_per_process must be at least 1")


TRANSIENT_PATTERNS = (
    r"rate.?limit", r"too many requests", r"\b429\b", r"overloaded", r"\b50[0234]\b",
    r"service unavailable", r"temporarily unavailable", r"bad gateway", r"gateway time-?out",
    r"internal server error",
)
"""What marks an agent's error transient by default (`lifecycle.transient_patterns`)."""


class LifecycleConfig(_Section):
    idle_ttl: Duration = Duration(30 * 60.0)
    max_warm: int = 16
    memory_budget: MemoryBudget | None = msgspec.field(
        default_factory=lambda: MemoryBudget.of_machine(DEFAULT_MEMORY_SHARE))
    probe_interval: Duration = Duration(10.0)
    stale_grace: Duration = Duration(60.0)
    restart_max: int = 5
    restart_window: Duration = Duration(60.0)
    restart_backoff: Duration = Duration(0.5)
    restart_backoff_max: Duration = Duration(30.0)
    sweep_interval: Duration = Duration(5.0)
    """How often the warm agents' memory is measured against `memory_budget` (only when one
    is set: memory grows without an event). The idle TTL acts at its deadline, the cap at
    once."""
    turn_timeout: Duration | None = None
    """A turn still running this long after it started is cancelled and ends with an error
    naming the timeout (None: no limit)."""
    transient_retries: int = 2
    """A turn whose prompt failed with an error matching `transient_patterns`, before any
    of its output was published, is sent again up to this many times (0: never)."""
    transient_backoff: Duration = Duration(1.0)
    """The first retry's delay; it doubles for each further retry of the same turn."""
    transient_backoff_max: Duration = Duration(30.0)
    transient_patterns: list[str] = msgspec.field(
        default_factory=lambda: list(TRANSIENT_PATTERNS))
    """Regular expressions (case-insensitive) searched in the agent's error: its code,
    message and data, as `CODE MESSAGE DATA-JSON`."""

    def __post_init__(self) -> None:
        if self.max_warm < 1:
            raise ValueError("max_warm must be at least 1")
        if self.restart_max < 0:
            raise ValueError("restart_max must not be negative")
        if self.transient_retries < 0:
            raise ValueError("transient_retries must not be negative")
        for index, pattern in enumerate(self.transient_patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"transient_patterns[{index}] {pattern!r} is not a valid "
                                 f"regular expression: {exc}") from None

    def transient_regexes(self) -> list[re.Pattern[str]]:
        """`transient_patterns`, compiled (case-insensitive)."""
        return [re.compile(p, re.IGNORECASE) for p in self.transient_patterns]


class PermissionsConfig(_Section):
    policy: Literal["ask", "allow", "deny"] = "ask"
    timeout: Duration = Duration(600.0)


class ChannelsConfig(_Section):
    ring_size: int = 8192
    retain_deltas: int = 100_000
    retain_age: Duration = Duration(30 * 86400.0)
    subscriber_queue: int = 1024
    subscriber_bytes: ByteSize = ByteSize(8 * 1024 * 1024)
    heartbeat: Duration = Duration(15.0)
    retain_transitions: Duration = Duration(7 * 86400.0)
    """Agent state transitions (the `transitions` table) older than this are pruned (never
    those within `lifecycle.restart_window`, which restart intensity counts)."""

    def __post_init__(self) -> None:
        if self.ring_size < 16:
            raise ValueError("ring_size must be at least 16")
        if self.subscriber_queue < 16:
            raise ValueError("subscriber_queue must be at least 16")


Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
"""A TCP port (0: any free one); a larger number would silently wrap when bound."""


class WebSocketConfig(_Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 7717
    allowed_origins: list[str] = []
    max_connections: int = 64
    max_message: ByteSize = ByteSize(16 * 1024 * 1024)
    allowed_hosts: list[str] = []
    """Host names (besides IP addresses and localhost) that HTTP requests and WebSocket
    handshakes may name in `Host`; anything else is refused (DNS rebinding)."""
    metrics: bool = False
    """Serve Prometheus metrics at `/metrics` on this listener (with its token rules)."""


class WorktreesConfig(_Section):
    root: str = ""
    reap_interval: Duration = Duration(600.0)
    reap_grace: Duration = Duration(3600.0)
    trash_retention: Duration = Duration(7 * 86400.0)
    git_timeout: Duration = Duration(60.0)


class TerminalsConfig(_Section):
    output_limit: ByteSize = ByteSize(1024 * 1024)
    """Default cap on a terminal's retained output when the agent gives no outputByteLimit."""
    max_per_chat: int = 16


class ComputerConfig(_Section):
    host: str
    port: Port = 22
    user: str | None = None
    identity_files: list[str] = []
    use_agent: bool = True
    known_hosts: str | None = "~/.ssh/known_hosts"
    """None or "" disables host key verification (never do this outside tests)."""
    keepalive: Duration = Duration(15.0)
    connect_timeout: Duration = Duration(15.0)
    workdir: str = "~/.local/state/stoker-remote"
    """Remote base for worktrees and agent state."""
    sessions_per_connection: int = 6
    """Long-lived channels (agents, terminals, git commands) per SSH connection before
    another connection is opened. Keep it at least 2 below the server's `MaxSessions`
    (OpenSSH: 10): the main connection's SFTP and short control commands (stop, memory
    sampling) need sessions too. A server that refuses earlier is learnt from."""

    def __post_init__(self) -> None:
        if self.sessions_per_connection < 1:
            raise ValueError("sessions_per_connection must be at least 1")


class TasksConfig(_Section):
    """Background tasks (docs/TASKS.md) and Stoker's MCP server offered to agents."""

    max_running: int = 2
    """Running tasks per parent chat; more queue."""
    max_tasks: int = 32
    """Unfinished (queued + running) tasks in the whole daemon; more are refused."""
    max_depth: int = 2
    """1: only top-level chats may have tasks; 2: tasks may have tasks; ..."""
    agents: list[str] = []
    """Agents tasks may use; empty: every configured agent."""
    notify: Literal["delta", "prompt"] = "delta"
    """`prompt`: also prompt the parent with a task's result when it ends and the parent
    is idle. A `task` delta on the parent's channel is always published."""
    cascade: bool = True
    """Cancelling a parent's turn or closing the parent cancels its unfinished tasks."""
    token_budget: int | None = None
    """Tokens one task tree may use (summed from its tasks' usage deltas); when used up, new
    tasks and follow-ups in it are refused. None: no budget."""
    mcp: bool = True
    """Offer Stoker's MCP server (`stoker mcp`) on every session/new, load and resume."""
    mcp_exclude_agents: list[str] = []
    mcp_exclude_chats: list[str] = []
    mcp_transport: Literal["auto", "stdio", "http"] = "auto"
    """How the server is offered: `auto`: over HTTP (served by the daemon on loopback) to an
    agent whose `initialize` advertises `mcpCapabilities.http`, else stdio (`stoker mcp`, a
    process per session); `stdio`: always stdio; `http`: always HTTP, advertised or not."""
    mcp_transport_agents: dict[str, Literal["auto", "stdio", "http"]] = {}
    """`mcp_transport` per agent, over the default above."""
    mcp_start_timeout: Duration = Duration(30.0)
    """A session whose agent has not brought the offered server up this long after the
    session was set up gets a warning notice (daemon/mcp/presence.py); 0: no check."""

    def __post_init__(self) -> None:
        if self.max_running < 1 or self.max_tasks < 1 or self.max_depth < 0:
            raise ValueError("max_running and max_tasks must be at least 1, max_depth at "
                             "least 0")
        if self.mcp_start_timeout < 0:
            raise ValueError("mcp_start_timeout must not be negative")


class WorkflowsConfig(_Section):
    """Workflow runs (docs/WORKFLOWS.md)."""

    max_running: int = 8
    """Steps running at once over every run of the daemon; more wait `pending`."""
    run_retention: Duration = Duration(14 * 86400.0)
    """A `done` run (and its steps) is deleted this long after it ended."""
    resumable_retention: Duration | None = None
    """A `failed` or `cancelled` run can be resumed; it is deleted this long after it
    ended. None: kept until it is resumed (and then done)."""
    cache_retention: Duration = Duration(30 * 86400.0)
    """A cached step result neither written nor used for this long is dropped."""

    def __post_init__(self) -> None:
        if self.max_running < 1:
            raise ValueError("max_running must be at least 1")
        if self.run_retention <= 0 or self.cache_retention <= 0 or (
                self.resumable_retention is not None and self.resumable_retention <= 0):
            raise ValueError("run_retention, resumable_retention and cache_retention must "
                             "be more than 0")


class TracesConfig(_Section):
    otlp_endpoint: str = ""
    """Export OpenTelemetry spans (a turn, its tool calls) over OTLP/HTTP to this URL (e.g.
    ``http://127.0.0.1:4318/v1/traces``); empty: off. Needs the `otel` extra; read at start."""
    metrics: bool = True
    """Collect the Prometheus metrics derived from the published deltas (turns, durations,
    time to first output, tool calls, restarts, tokens, store commits). Off: the hub calls
    no metrics hook per delta, those metrics stay at zero and `stoker_metrics_collecting`
    says 0 (the scrape-time gauges are still served). Read at start."""

    def __post_init__(self) -> None:
        if self.otlp_endpoint and not self.otlp_endpoint.startswith(("http://", "https://")):
            raise ValueError("otlp_endpoint must be an http:// or https:// URL")


class Config(_Section):
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    agents: dict[str, AgentConfig] = {}
    lifecycle: LifecycleConfig = msgspec.field(default_factory=LifecycleConfig)
    permissions: PermissionsConfig = msgspec.field(default_factory=PermissionsConfig)
    channels: ChannelsConfig = msgspec.field(default_factory=ChannelsConfig)
    websocket: WebSocketConfig = msgspec.field(default_factory=WebSocketConfig)
    worktrees: WorktreesConfig = msgspec.field(default_factory=WorktreesConfig)
    terminals: TerminalsConfig = msgspec.field(default_factory=TerminalsConfig)
    computers: dict[str, ComputerConfig] = {}
    tasks: TasksConfig = msgspec.field(default_factory=TasksConfig)
    workflows: WorkflowsConfig = msgspec.field(default_factory=WorkflowsConfig)
    traces: TracesConfig = msgspec.field(default_factory=TracesConfig)

    def __post_init__(self) -> None:
        for name, agent in self.agents.items():
            if agent.computer is not None and agent.computer not in self.computers:
                raise ValueError(
                    f"agent {name!r} names computer {agent.computer!r}, "
                    f"which has no [computers.{agent.computer}] section"
                )


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check_names(raw: dict[str, Any], source: str) -> None:
    for section in ("agents", "computers"):
        table = raw.get(section)
        if isinstance(table, dict):
            for name, body in table.items():
                if not _NAME.match(name):
                    raise ConfigError(
                        f"{source}: invalid {section[:-1]} name {name!r}: use letters, digits,"
                        " '.', '_', '-'"
                    )
                if not isinstance(body, dict):
                    raise ConfigError(f"{source}: [{section}.{name}] must be a table")


def _split_commands(raw: dict[str, Any], source: str) -> None:
    """`command = "qwen --acp"` means what a shell would split it into: accepted, split
    with shlex, or refused with the exact list to write instead."""
    table = raw.get("agents")
    if not isinstance(table, dict):
        return
    for name, body in table.items():
        command = body.get("command") if isinstance(body, dict) else None
        if not isinstance(command, str):
            continue
        try:
            body["command"] = shlex.split(command)
        except ValueError as exc:
            raise ConfigError(
                f"{source}: [agents.{name}]: command {command!r} cannot be split ({exc});"
                ' write it as a list, e.g. command = ["qwen", "--acp"]'
            ) from None


_PROCESS_KEYS: dict[str, tuple[str, ...]] = {
    "process": ("per-chat", "shared"),
    "shared_by": ("computer", "cwd"),
}


def _check_process_keys(raw: dict[str, Any], text: str, source: str) -> None:
    """`process`, `shared_by` and `sessions_per_process` of each agent, checked here so
    that a bad value names the file, the line, the table and the key, and what to write."""
    table = raw.get("agents")
    if not isinstance(table, dict):
        return
    for name, body in table.items():
        if not isinstance(body, dict):
            continue
        for key, choices in _PROCESS_KEYS.items():
            value = body.get(key, choices[0])
            if value not in choices:
                where = _key_line(text, name, key)
                allowed = " or ".join(f'"{c}"' for c in choices)
                raise ConfigError(f"{source}{where}: [agents.{name}] {key}: {value!r} is "
                                  f"not a choice; use {allowed}")
        count = body.get("sessions_per_process", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            where = _key_line(text, name, "sessions_per_process")
            raise ConfigError(f"{source}{where}: [agents.{name}] sessions_per_process: "
                              f"{count!r} must be a whole number of at least 1")


def _key_line(text: str, agent: str, key: str) -> str:
    """`:LINE` of `key` in the agent's table (`[agents.NAME]` or a dotted key), or ""."""
    header = re.compile(r"^\s*\[\s*agents\s*\.\s*[\"']?" + re.escape(agent)
                        + r"[\"']?\s*\]\s*(#.*)?$")
    assignment = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
    dotted = re.compile(r"^\s*agents\s*\.\s*[\"']?" + re.escape(agent) + r"[\"']?\s*\.\s*"
                        + re.escape(key) + r"\s*=")
    inside = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("["):
            inside = header.match(line) is not None
            continue
        if (inside and assignment.match(line)) or dotted.match(line):
            return f":{number}"
    return ""


def parse(data: bytes | str, *, source: str = "<config>") -> Config:
    """Decode TOML text into a `Config`, raising `ConfigError` naming the problem."""
    if isinstance(data, str):
        data = data.encode()
    try:
        raw = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a TOML document")
    _check_names(raw, source)
    _split_commands(raw, source)
    _check_process_keys(raw, data.decode("utf-8", "replace"), source)
    # Decode agents and computers one by one so an error names the table, which msgspec's
    # path (`$.agents[...]`) cannot.
    for section in ("agents", "computers"):
        table = raw.get(section)
        if not isinstance(table, dict):
            continue  # not a table (`agents = 5`): the whole decode below names it
        item_type = AgentConfig if section == "agents" else ComputerConfig
        for name, body in table.items():
            try:
                msgspec.convert(body, type=item_type, dec_hook=_dec_hook)
            except msgspec.ValidationError as exc:
                raise ConfigError(
                    f"{source}: [{section}.{name}]: {_relative(str(exc), item_type)}"
                ) from None
    try:
        return msgspec.convert(raw, type=Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_friendly(str(exc), Config)}") from None


_ENUM = re.compile(r"Invalid enum value .* - at `\$((?:\.[\w-]+)*)\.([\w-]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`(?: - at `\$((?:\.\w+)*)`)?$")


def _friendly(message: str, root: type[msgspec.Struct]) -> str:
    """msgspec's message in the file's words, with the closest known key for a typo."""
    enum = _ENUM.match(message)
    if enum is not None:
        return message + _choices(_section_at(root, enum.group(1)), enum.group(2))
    found = _UNKNOWN.match(message)
    if found is None:
        return message
    key, path = found.group(1), found.group(2) or ""
    hint = _did_you_mean(key, _section_at(root, path))
    return message.replace("Object contains unknown field", "unknown key") + hint


def _section_at(root: type[msgspec.Struct], path: str) -> type[msgspec.Struct] | None:
    """The section struct at a msgspec path such as `.lifecycle` (None past a table of
    names, such as `.agents`, whose keys are the user's own)."""
    section: type[msgspec.Struct] | None = root
    for part in filter(None, path.split(".")):
        if section is None:
            return None
        info = msgspec.inspect.type_info(section)
        assert isinstance(info, msgspec.inspect.StructType)
        field = next((f for f in info.fields if f.encode_name == part), None)
        kind = field.type if field is not None else None
        section = kind.cls if isinstance(kind, msgspec.inspect.StructType) else None
    return section


def _choices(section: type[msgspec.Struct] | None, key: str) -> str:
    """`; one of ...` for a key whose values are a fixed set."""
    info = msgspec.inspect.type_info(section) if section is not None else None
    fields = info.fields if isinstance(info, msgspec.inspect.StructType) else ()
    kind = next((f.type for f in fields if f.encode_name == key), None)
    if not isinstance(kind, msgspec.inspect.LiteralType):
        return ""
    return "; one of " + ", ".join(f"`{v}`" for v in kind.values)


def _did_you_mean(key: str, section: type[msgspec.Struct] | None) -> str:
    if section is None:
        return ""
    info = msgspec.inspect.type_info(section)
    assert isinstance(info, msgspec.inspect.StructType)
    close = difflib.get_close_matches(key, [f.encode_name for f in info.fields], n=1)
    return f"; did you mean `{close[0]}`?" if close else ""


def _relative(message: str, root: type[msgspec.Struct]) -> str:
    return _friendly(message, root).replace(" - at `$`", "").replace("`$.", "`")


def load(path: Path, *, must_exist: bool = False) -> Config:
    """Read the config file; a missing file is the defaults unless `must_exist`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(f"config file {path} does not exist") from None
        return Config()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return parse(data, source=str(path))


def dump(config: Config) -> dict[str, Any]:
    """The effective config as plain data (durations formatted back to strings)."""
    result: dict[str, Any] = msgspec.to_builtins(config, enc_hook=_enc_hook)
    return result

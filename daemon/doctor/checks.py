"""`stoker doctor`: is this host set up to run Stoker, and is the daemon healthy?

The checks are what an operator would otherwise do by hand after "it doesn't work": is the
config valid, can the daemon bind its socket (and is it private), can it keep state, is git
there, does every configured agent start and answer ``initialize``, is node there for the
agents that are node programs.

Shape, as elsewhere in the daemon: *facts* are gathered by small I/O functions
(:func:`path_facts`, :func:`ask_daemon`, :func:`database_check`, ...), and each *verdict* is
a pure function from facts to a :class:`Check` (``ok``/``warn``/``fail`` plus one line of
detail). The verdicts carry the policy (what is merely odd, what will break) and are unit
tested without touching the machine; :func:`run_checks` wires facts to verdicts.

``warn`` is for what works but deserves a look (the daemon is not running, a directory a
bit too open); ``fail`` is for what will not work. The CLI exits 1 on any ``fail``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trio

from daemon.config.agents import AgentSpec, registry
from daemon.config.file import Config, load
from daemon.config.paths import Paths
from daemon.errors import ConfigError, StokerError

__all__ = [
    "Check",
    "DaemonAnswer",
    "PathFacts",
    "agent_verdict",
    "config_verdict",
    "daemon_verdict",
    "database_verdict",
    "node_agents",
    "run_checks",
    "socket_dir_verdict",
    "socket_verdict",
    "state_dir_verdict",
    "tool_verdict",
]

Status = Literal["ok", "warn", "fail"]
STATUSES: tuple[Status, ...] = ("ok", "warn", "fail")

#: Built-in agents known to be node programs (npm packages), whatever their launcher looks
#: like on this host (a shebang script, a symlink into node_modules, a shim).
NODE_AGENTS = frozenset({"qwen", "gemini", "opencode", "claude-agent-acp"})
_NODE_LAUNCHERS = frozenset({"node", "nodejs", "npx", "bun", "bunx"})


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the report."""

    name: str
    status: Status
    detail: str


@dataclass(frozen=True, slots=True)
class PathFacts:
    """What ``stat`` says about a path, reduced to what the verdicts need."""

    kind: Literal["missing", "dir", "socket", "file", "other"]
    mode: int = 0
    """Permission bits only (``0o700``)."""
    uid: int = -1
    writable: bool = False
    """``os.access(W_OK)`` for us (for a missing path: whether it can be created)."""


@dataclass(frozen=True, slots=True)
class DaemonAnswer:
    """What happened when we knocked on the socket."""

    state: Literal["answering", "absent", "refused", "denied", "error"]
    detail: str = ""


# ------------------------------------------------------------------------------- verdicts


def _mode(mode: int) -> str:
    return f"{mode:04o}"


def config_verdict(path: Path, *, explicit: bool, exists: bool, error: str | None,
                   config: Config | None) -> Check:
    """A bad file is a failure: the daemon would refuse to start (or a reload would be
    rejected and the running daemon would keep an older config)."""
    if error is not None:
        return Check("config", "fail", error)
    if not exists:
        if explicit:  # load() already raised for this; kept total for direct callers
            return Check("config", "fail", f"config file {path} does not exist")
        return Check("config", "ok", f"no file at {path}; using the defaults")
    agents = len(config.agents) if config is not None else 0
    return Check("config", "ok", f"{path} is valid ({agents} agent(s) defined)")


def socket_dir_verdict(path: Path, facts: PathFacts, uid: int) -> Check:
    """The socket's directory is what protects the socket on systems that ignore socket
    file modes; the daemon creates it 0700 and refuses one owned by someone else."""
    name = "socket dir"
    if facts.kind == "missing":
        if facts.writable:
            return Check(name, "ok", f"{path} does not exist yet; the daemon creates it (0700)")
        return Check(name, "fail", f"{path} does not exist and cannot be created here")
    if facts.kind != "dir":
        return Check(name, "fail", f"{path} is not a directory")
    if facts.uid != uid:
        return Check(name, "warn", f"{path} is owned by uid {facts.uid}, not by us ({uid}): "
                     "fine for a system socket, but a daemon of ours would refuse it")
    if facts.mode & 0o077:
        return Check(name, "warn", f"{path} is mode {_mode(facts.mode)}, expected 0700 "
                     f"(chmod 700 {path})")
    return Check(name, "ok", f"{path} (0700)")


def socket_verdict(path: Path, facts: PathFacts, uid: int) -> Check:
    """Whoever can connect can run code as the daemon's user (agents have terminals), so a
    socket others can reach is a failure, one a group can reach a warning (the system unit
    does that on purpose, for the group "stoker")."""
    name = "socket"
    if facts.kind == "missing":
        return Check(name, "ok", f"{path} absent (no daemon yet, or socket unit not started)")
    if facts.kind != "socket":
        return Check(name, "fail", f"{path} exists but is not a socket; remove it")
    if facts.mode & 0o007:
        return Check(name, "fail", f"{path} is mode {_mode(facts.mode)}: other users can "
                     f"drive the daemon (expected 0600)")
    if facts.mode & 0o070:
        return Check(name, "warn", f"{path} is mode {_mode(facts.mode)}: its group can drive "
                     "the daemon (expected 0600 for a user daemon)")
    if facts.uid != uid:
        return Check(name, "warn", f"{path} is owned by uid {facts.uid}, not by us ({uid})")
    return Check(name, "ok", f"{path} ({_mode(facts.mode)})")


def daemon_verdict(path: Path, answer: DaemonAnswer) -> Check:
    """A daemon that is not running is normal (socket activation starts it on demand), so
    it is a warning, never a failure. A socket nobody answers on is stale."""
    name = "daemon"
    if answer.state == "answering":
        return Check(name, "ok", answer.detail)
    if answer.state == "absent":
        return Check(name, "warn", "not running (systemctl --user start stoker, or "
                     "`stoker daemon` in a terminal)")
    if answer.state == "refused":
        return Check(name, "warn", f"stale socket: nothing answers on {path}; the next "
                     "daemon replaces it")
    if answer.state == "denied":
        return Check(name, "fail", f"cannot connect to {path}: {answer.detail}")
    return Check(name, "fail", f"the daemon did not answer on {path}: {answer.detail}")


def state_dir_verdict(path: Path, facts: PathFacts, uid: int) -> Check:
    """The state dir holds the database and the daemon's lock; it must be ours and
    writable. A too open mode is only a warning: the daemon tightens it when it starts."""
    name = "state dir"
    if facts.kind == "missing":
        if facts.writable:
            return Check(name, "ok", f"{path} does not exist yet; the daemon creates it (0700)")
        return Check(name, "fail", f"{path} does not exist and its parent is not writable")
    if facts.kind != "dir":
        return Check(name, "fail", f"{path} is not a directory")
    if facts.uid != uid:
        return Check(name, "fail", f"{path} is owned by uid {facts.uid}, not by us ({uid}); "
                     "the daemon refuses it")
    if not facts.writable:
        return Check(name, "fail", f"{path} is not writable")
    if facts.mode & 0o077:
        return Check(name, "warn", f"{path} is mode {_mode(facts.mode)}, expected 0700 "
                     "(the daemon fixes this when it starts)")
    return Check(name, "ok", f"{path} (0700, writable)")


def database_verdict(path: Path, *, exists: bool, result: str | None, size: int = 0) -> Check:
    """``result``: what ``PRAGMA quick_check`` said (``"ok"`` when healthy), or why it
    could not run."""
    name = "database"
    if not exists:
        return Check(name, "ok", f"{path} not created yet")
    if result == "ok":
        return Check(name, "ok", f"{path} passes quick_check ({size / 1e6:.1f} MB)")
    return Check(name, "fail", f"{path}: {result}")


def tool_verdict(name: str, version: str | None, *, needed_by: str,
                 required: bool = True) -> Check:
    """A tool on PATH: missing is a failure when something needs it to run, a warning when
    it only matters for installing or updating (npm)."""
    if version is not None:
        return Check(name, "ok", f"{version} (for {needed_by})")
    return Check(name, "fail" if required else "warn",
                 f"{name} not found on PATH (needed for {needed_by})")


def agent_verdict(spec: AgentSpec, *, available: tuple[bool, str],
                  probe: dict[str, object] | str | None, elapsed: float = 0.0) -> Check:
    """``probe``: the agent's ``initialize`` result, the reason it failed, or ``None`` when
    it was not probed (remote agent, or ``--no-probe``)."""
    name = f"agent {spec.name}"
    if spec.computer is not None:
        return Check(name, "ok", f"runs on computer {spec.computer!r}; not probed from here")
    ok, why = available
    if not ok:
        return Check(name, "fail", why)
    if probe is None:
        return Check(name, "ok", f"{spec.command[0]} found (not started: --no-probe)")
    if isinstance(probe, str):
        return Check(name, "fail", probe)
    info = probe.get("agentInfo")
    who = ""
    if isinstance(info, dict) and info.get("name"):
        who = f"{info.get('name')} {info.get('version') or ''}".strip() + ", "
    detail = (f"answers initialize in {elapsed:.1f}s ({who}protocol "
              f"{probe.get('protocolVersion', '?')})")
    methods = probe.get("authMethods")
    if isinstance(methods, list) and methods:
        ids = ", ".join(str(m.get("id")) for m in methods if isinstance(m, dict))
        detail += f"; may need `stoker auth CHAT METHOD` (methods: {ids})"
    return Check(name, "ok", detail)


def node_agents(specs: Iterable[AgentSpec],
                resolve: Callable[[str], str | None] = shutil.which,
                read_head: Callable[[str], bytes] | None = None) -> list[str]:
    """Names of the agents that need node: launched by node/npx, a known npm agent, or a
    binary whose ``#!`` line names node (what ``npm install -g`` puts on PATH)."""
    read = read_head or _read_head
    found: list[str] = []
    for spec in specs:
        if spec.computer is not None:
            continue
        binary = spec.command[0]
        base = os.path.basename(binary)
        if base in _NODE_LAUNCHERS or base in NODE_AGENTS:
            found.append(spec.name)
            continue
        resolved = resolve(binary)
        if resolved is None:
            continue
        head = read(resolved)
        if head.startswith(b"#!") and b"node" in head.split(b"\n", 1)[0]:
            found.append(spec.name)
    return found


def _read_head(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(256)
    except OSError:
        return b""


# ---------------------------------------------------------------------------------- facts


def path_facts(path: Path) -> PathFacts:
    """``stat`` (following symlinks, as the daemon's own open/connect does)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        # Creatable when the nearest existing ancestor is a writable directory.
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        return PathFacts("missing", writable=parent.is_dir() and os.access(parent, os.W_OK))
    except OSError:
        return PathFacts("other")
    if stat.S_ISDIR(st.st_mode):
        kind: Literal["dir", "socket", "file", "other"] = "dir"
    elif stat.S_ISSOCK(st.st_mode):
        kind = "socket"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    else:
        kind = "other"
    return PathFacts(kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                     writable=os.access(path, os.W_OK))


async def ask_daemon(path: Path, timeout: float = 5.0) -> DaemonAnswer:
    """Connect, say hello, ask for the status."""
    from daemon.client import Client, ClientError, DaemonNotRunning, RequestFailed
    from protocol import messages as m

    if not path.exists():
        return DaemonAnswer("absent")
    try:
        with trio.fail_after(timeout):
            async with Client.connect(path, client="doctor") as client:
                status: m.StatusResult = await client.request(m.GetStatus(id=0))
    except trio.TooSlowError:
        return DaemonAnswer("error", f"no answer within {timeout:g}s")
    except DaemonNotRunning as exc:
        return DaemonAnswer("absent" if not path.exists() else "refused", str(exc))
    except RequestFailed as exc:
        return DaemonAnswer("error", exc.message)
    except ClientError as exc:
        # Connecting to a Unix socket takes write permission on it.
        denied = not os.access(path, os.W_OK)
        return DaemonAnswer("denied" if denied else "error", str(exc))
    counts = status.actors
    return DaemonAnswer("answering", f"pid {status.pid}, version {status.version}, up "
                        f"{status.uptime:.0f}s, {status.chats} chats, {counts.warm} warm, "
                        f"{counts.busy} busy")


def database_check(path: Path) -> tuple[bool, str | None, int]:
    """(exists, quick_check result or error, size). Read-only: safe with the daemon running
    (WAL readers do not block its writer)."""
    if not path.exists():
        return False, None, 0
    size = path.stat().st_size
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return True, f"cannot be checked: {exc}", size
    result = "; ".join(str(r[0]) for r in rows[:5])
    return True, result, size


def tool_version(name: str, args: Sequence[str] = ("--version",)) -> str | None:
    """First line of ``NAME --version``, or ``None`` when it is not on PATH or fails."""
    binary = shutil.which(name)
    if binary is None:
        return None
    try:
        done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else name


async def probe(spec: AgentSpec, *, timeout: float, cwd: str
                ) -> tuple[dict[str, object] | str, float]:
    """Start the agent, ask ``initialize`` (the daemon's own probe), stop it."""
    from daemon.actors.backend.probe import probe_agent
    from daemon.execution.local import LocalExecutor

    instance = f"doctor-{os.getpid()}"
    started = time.monotonic()
    try:
        info = await probe_agent(LocalExecutor(instance), spec, cwd=cwd, timeout=timeout,
                                 grace=2.0, instance=instance)
    except StokerError as exc:
        return exc.message, time.monotonic() - started
    return dict(info), time.monotonic() - started


# ------------------------------------------------------------------------------ the report


def _agents_to_check(config: Config, agents: Mapping[str, AgentSpec]) -> list[AgentSpec]:
    """Config agents, the default agent, and built-ins that are installed: a built-in that
    is not installed is not a problem unless something asks for it."""
    default = config.daemon.default_agent
    chosen = []
    for spec in agents.values():
        if spec.source == "config" or spec.name == default or spec.available()[0]:
            chosen.append(spec)
    return chosen


async def run_checks(paths: Paths, *, timeout: float = 15.0, probe_agents: bool = True,
                     uid: int | None = None) -> list[Check]:
    """Every check, in report order."""
    uid = os.getuid() if uid is None else uid
    checks: list[Check] = []

    exists = paths.config.exists()
    config: Config | None = None
    error: str | None = None
    try:
        config = load(paths.config, must_exist=paths.config_explicit)
    except ConfigError as exc:
        error = exc.message
    checks.append(config_verdict(paths.config, explicit=paths.config_explicit, exists=exists,
                                 error=error, config=config))

    checks.append(socket_dir_verdict(paths.socket.parent, path_facts(paths.socket.parent), uid))
    checks.append(socket_verdict(paths.socket, path_facts(paths.socket), uid))
    checks.append(daemon_verdict(paths.socket, await ask_daemon(paths.socket)))

    checks.append(state_dir_verdict(paths.state_dir, path_facts(paths.state_dir), uid))
    db_exists, db_result, db_size = await trio.to_thread.run_sync(database_check,
                                                                  paths.database)
    checks.append(database_verdict(paths.database, exists=db_exists, result=db_result,
                                   size=db_size))

    git = await trio.to_thread.run_sync(tool_version, "git")
    checks.append(tool_verdict("git", git, needed_by="worktrees"))

    if config is None:
        checks.append(Check("agents", "warn", "not checked: the config is invalid"))
        return checks
    agents = registry(config)
    if config.daemon.default_agent not in agents:
        checks.append(Check("default agent", "fail",
                            f"[daemon] default_agent = {config.daemon.default_agent!r} is not "
                            f"an agent (known: {', '.join(sorted(agents))})"))
    chosen = _agents_to_check(config, agents)
    checks.extend(await _agent_checks(chosen, timeout=timeout, probe_agents=probe_agents))
    chosen_names = {s.name for s in chosen}
    missing = sorted(name for name in agents if name not in chosen_names)
    if missing:
        checks.append(Check("other agents", "ok",
                            f"built-in, not installed (optional): {', '.join(missing)}"))

    if config.computers:
        from daemon.doctor.ssh import computer_checks

        checks.extend(await computer_checks(config, timeout=timeout))

    needing_node = node_agents(chosen)
    if needing_node:
        who = ", ".join(needing_node)
        node = await trio.to_thread.run_sync(tool_version, "node")
        checks.append(tool_verdict("node", node, needed_by=who))
        npm = await trio.to_thread.run_sync(tool_version, "npm")
        checks.append(tool_verdict("npm", npm, needed_by=f"installing/updating {who}",
                                   required=False))
    return checks


async def _agent_checks(specs: list[AgentSpec], *, timeout: float,
                        probe_agents: bool) -> list[Check]:
    """Probe the agents concurrently (each may take seconds to start), report in order."""
    results: list[Check | None] = [None] * len(specs)

    async def one(i: int, spec: AgentSpec, cwd: str) -> None:
        available = spec.available()
        outcome: dict[str, object] | str | None = None
        elapsed = 0.0
        if probe_agents and available[0] and spec.computer is None:
            outcome, elapsed = await probe(spec, timeout=timeout, cwd=cwd)
        results[i] = agent_verdict(spec, available=available, probe=outcome, elapsed=elapsed)

    with tempfile.TemporaryDirectory(prefix="stoker-doctor-") as cwd:
        async with trio.open_nursery() as nursery:
            for i, spec in enumerate(specs):
                nursery.start_soon(one, i, spec, cwd)
    return [r for r in results if r is not None]


def exit_status(checks: Iterable[Check]) -> int:
    """1 when any check failed; warnings alone are not a failure."""
    return 1 if any(c.status == "fail" for c in checks) else 0


def summary(checks: Sequence[Check]) -> str:
    counts = {s: sum(1 for c in checks if c.status == s) for s in STATUSES}
    return f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failure(s)"

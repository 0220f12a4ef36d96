"""The doctor's verdicts: pure functions from facts to a :class:`Check`.

The policy lives here (what is merely odd, what will break), so it is unit tested without
touching the machine. The facts come from :mod:`daemon.doctor.facts`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.config.agents import AgentSpec
from daemon.config.file import Config
from daemon.doctor.report import Check

#: Built-in agents known to be node programs (npm packages), whatever their launcher looks
#: like on this host (a shebang script, a symlink into node_modules, a shim).
NODE_AGENTS = frozenset({"qwen", "gemini", "opencode", "claude-agent-acp"})
_NODE_LAUNCHERS = frozenset({"node", "nodejs", "npx", "bun", "bunx"})


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
    config: str = ""
    """The config file the answering daemon reads."""


def daemon_config_verdict(ours: Path, answer: DaemonAnswer) -> Check | None:
    """These checks read `ours`; a daemon that reads another file runs with another config
    (another PATH lookup, other agents), which no line of the report would show."""
    if answer.state != "answering" or not answer.config or answer.config == str(ours):
        return None
    return Check("daemon config", "warn", f"the daemon reads {answer.config}, these checks "
                 f"read {ours}: give --config {answer.config} (or STOKER_CONFIG) to check "
                 "the daemon's")


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


def tool_verdict(name: str, version: str | None, *, needed_by: str,
                 required: bool = True) -> Check:
    """A tool on PATH: missing is a failure when something needs it to run, a warning when
    it only matters for installing or updating (npm)."""
    if version is not None:
        return Check(name, "ok", f"{version} (for {needed_by})")
    return Check(name, "fail" if required else "warn",
                 f"{name} not found on PATH (needed for {needed_by})")


TYPICAL_AGENT_RSS = 512 << 20
"""What one warm real agent (qwen, opencode, ...) takes, process tree included: ~0.5 GiB."""


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def memory_verdict(*, max_warm: int, budget: int | None, share: float | None,
                   machine: int, typical: int = TYPICAL_AGENT_RSS) -> Check:
    """Whether `max_warm` warm agents of a typical size fit `memory_budget` and the
    machine: when they do not, agents are hibernated for memory before the cap is reached
    (or the machine swaps), which is worth knowing, not a failure."""
    need = max_warm * typical
    need_text = f"max_warm {max_warm} x ~{_gib(typical)} per warm agent = {_gib(need)}"
    if budget is None:
        if need > machine:
            return Check("memory", "warn", f"{need_text}, more than this machine's "
                         f"{_gib(machine)}, and no memory_budget: set one ([lifecycle])")
        return Check("memory", "ok", f"{need_text}; no memory_budget")
    written = f" ({share:g}% of {_gib(machine)})" if share is not None else ""
    budget_text = f"memory_budget {_gib(budget)}{written}"
    if budget > machine:
        return Check("memory", "warn", f"{budget_text} is more than this machine's "
                     f"{_gib(machine)}: lower it ([lifecycle] memory_budget)")
    if need > budget:
        return Check("memory", "warn", f"{need_text} exceeds {budget_text}: idle agents will "
                     "be hibernated for memory before max_warm is reached; lower "
                     "[lifecycle] max_warm or raise memory_budget")
    return Check("memory", "ok", f"{budget_text} holds {need_text}")


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

"""`stoker doctor`: is this host set up to run Stoker, and is the daemon healthy?

The checks are what an operator would otherwise do by hand after "it doesn't work": is the
config valid, can the daemon bind its socket (and is it private), can it keep state, is git
there, does every configured agent start and answer ``initialize``, is node there for the
agents that are node programs.

Shape, as elsewhere in the daemon: *facts* are gathered by small I/O functions
(:func:`path_facts`, :func:`ask_daemon`, ``database.database_facts``, ...), and each *verdict* is
a pure function from facts to a :class:`Check` (``ok``/``warn``/``fail`` plus one line of
detail). The verdicts carry the policy (what is merely odd, what will break) and are unit
tested without touching the machine; :func:`run_checks` wires facts to verdicts.

Modules: ``report`` (the :class:`Check` row and the totals), ``verdicts`` (pure),
``facts`` (I/O), ``ssh`` (remote computers), and this one, which assembles the report
and re-exports what the CLI and the tests use.

``warn`` is for what works but deserves a look (the daemon is not running, a directory a
bit too open); ``fail`` is for what will not work. The CLI exits 1 on any ``fail``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

import trio

from daemon.config.agents import AgentSpec, registry
from daemon.config.file import Config, load, machine_memory
from daemon.config.paths import Paths
from daemon.doctor.database import database_checkup
from daemon.doctor.facts import ask_daemon, path_facts, probe, tool_version
from daemon.doctor.report import STATUSES, Check, Status, exit_status, summary
from daemon.doctor.ssh import computer_checks
from daemon.doctor.verdicts import (
    NODE_AGENTS,
    DaemonAnswer,
    PathFacts,
    agent_verdict,
    config_verdict,
    daemon_config_verdict,
    daemon_verdict,
    memory_verdict,
    node_agents,
    socket_dir_verdict,
    socket_verdict,
    state_dir_verdict,
    tool_verdict,
)
from daemon.errors import ConfigError

__all__ = [
    "NODE_AGENTS",
    "STATUSES",
    "Check",
    "DaemonAnswer",
    "PathFacts",
    "Status",
    "agent_verdict",
    "ask_daemon",
    "config_verdict",
    "daemon_config_verdict",
    "daemon_verdict",
    "exit_status",
    "memory_verdict",
    "node_agents",
    "path_facts",
    "probe",
    "run_checks",
    "socket_dir_verdict",
    "socket_verdict",
    "state_dir_verdict",
    "summary",
    "tool_verdict",
    "tool_version",
]


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
    answer = await ask_daemon(paths.socket)
    checks.append(daemon_verdict(paths.socket, answer))
    other_config = daemon_config_verdict(paths.config, answer)
    if other_config is not None:
        checks.append(other_config)

    checks.append(state_dir_verdict(paths.state_dir, path_facts(paths.state_dir), uid))
    checks.append(await database_checkup(paths.database))

    git = await trio.to_thread.run_sync(tool_version, "git")
    checks.append(tool_verdict("git", git, needed_by="worktrees"))

    if config is None:
        checks.append(Check("agents", "warn", "not checked: the config is invalid"))
        return checks
    budget = config.lifecycle.memory_budget
    checks.append(memory_verdict(max_warm=config.lifecycle.max_warm, budget=budget,
                                 share=budget.share if budget is not None else None,
                                 machine=machine_memory()))
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

"""Agent definitions: the built-in ones and those from the config file.

A built-in agent is enabled when its binary is on PATH (checked when asked, so installing
one needs no restart). `echo` is always there: it is the package's own reference agent, run
with this interpreter, and what the tests drive. A `[agents.NAME]` table in the config adds
an agent or replaces a built-in of the same name.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from daemon.config.file import AgentConfig, Config

ECHO = "echo"


@dataclass(frozen=True, slots=True)
class AgentSpec:
    name: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    computer: str | None = None
    source: str = "builtin"
    description: str = ""
    process: str = "per-chat"
    """`per-chat` (one process per chat) or `shared` (docs/SHARED_PROCESSES.md)."""
    shared_by: str = "computer"
    """Shared processes per computer, or per working directory (`cwd`)."""
    sessions_per_process: int = 16

    @property
    def shared(self) -> bool:
        return self.process == "shared"

    def available(self) -> tuple[bool, str]:
        """Whether the command can be run here, and why not."""
        if self.computer is not None:
            return True, ""
        binary = self.command[0]
        if "/" in binary:
            ok = shutil.which(binary) is not None
            return ok, "" if ok else f"{binary} is not an executable file"
        if shutil.which(binary) is None:
            return False, f"{binary} not found on PATH"
        return True, ""

    def fingerprint(self) -> tuple[object, ...]:
        """Equal fingerprints mean a warm agent can keep running across a config reload."""
        return (self.command, tuple(sorted(self.env.items())), self.computer, self.process,
                self.shared_by, self.sessions_per_process)


BUILTINS: tuple[AgentSpec, ...] = (
    AgentSpec(ECHO, (sys.executable, "-m", "daemon.echo_agent"),
              description="Stoker's reference ACP agent (echoes; test peer)"),
    AgentSpec("qwen", ("qwen", "--acp"), description="Qwen Code"),
    AgentSpec("opencode", ("opencode", "acp"), description="opencode"),
    AgentSpec("goose", ("goose", "acp"), description="Goose"),
    AgentSpec("gemini", ("gemini", "--acp"), description="Gemini CLI"),
    AgentSpec("claude", ("claude-agent-acp",), description="Claude Code via claude-agent-acp"),
    AgentSpec("codex", ("codex-acp",), description="Codex via codex-acp"),
)


def from_config(name: str, agent: AgentConfig) -> AgentSpec:
    return AgentSpec(
        name=name,
        command=tuple(agent.command),
        env=dict(agent.env),
        computer=agent.computer,
        source="config",
        description=agent.description,
        process=agent.process,
        shared_by=agent.shared_by,
        sessions_per_process=agent.sessions_per_process,
    )


def registry(config: Config) -> dict[str, AgentSpec]:
    """Every agent by name: built-ins, then config entries (which win). Disabled config
    entries remove a built-in of the same name."""
    agents = {spec.name: spec for spec in BUILTINS}
    for name, agent in config.agents.items():
        if not agent.enabled:
            agents.pop(name, None)
            continue
        agents[name] = from_config(name, agent)
    return agents

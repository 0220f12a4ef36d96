"""The live configuration the pool and its actors share."""

from __future__ import annotations

from collections.abc import Mapping

from daemon.config.agents import AgentSpec
from daemon.config.file import Config


class Settings:
    """The live config, shared read-only by the pool and its actors. A reload swaps
    `config`; actors read the section they need at the moment they need it."""

    def __init__(self, config: Config, agents: Mapping[str, AgentSpec]) -> None:
        self.config = config
        self.agents = dict(agents)

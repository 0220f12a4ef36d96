"""What each agent says about itself (`describe_agent`): its `initialize` answer, probed
once per agent and config (start it, `initialize`, stop it), shared by every request that
asks while the probe runs, cached until a reload."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from daemon.actors.backend.probe import description_of, probe_agent, probe_directory
from daemon.actors.settings import Settings
from daemon.errors import ShuttingDown, UnknownAgent
from daemon.execution.local import Executor
from protocol import messages as m


@dataclass(slots=True, eq=False)
class _Probe:
    """One `initialize` probe of an agent, shared by every request that asks meanwhile."""

    done: trio.Event = field(default_factory=trio.Event)
    result: m.AgentDescription | None = None
    error: Exception | None = None


class Descriptions:
    """Probed descriptions per agent, for the current config."""

    def __init__(self, *, settings: Settings, executors: Callable[[str | None], Executor],
                 instance: str) -> None:
        self._settings = settings
        self._executors = executors
        self._instance = instance
        self._cached: dict[str, m.AgentDescription] = {}
        self._probes: dict[str, _Probe] = {}
        """Probes running for the current config: concurrent requests wait for the same."""
        self._config_epoch = 0

    def clear(self) -> None:
        """After a reload: probes already running answer those waiting, uncached."""
        self._cached.clear()
        self._probes.clear()
        self._config_epoch += 1

    async def describe(self, agent: str, nursery: trio.Nursery | None) -> m.AgentDescription:
        """From the cache, else from a probe run in `nursery` (the pool's, not the first
        asker's task: a client that goes away does not cancel it for the others)."""
        if agent not in self._settings.agents:
            raise UnknownAgent(agent, list(self._settings.agents))
        cached = self._cached.get(agent)
        if cached is not None:
            return cached
        probe = self._probes.get(agent)
        if probe is None:
            if nursery is None:
                raise ShuttingDown("the daemon is not running")
            probe = self._probes[agent] = _Probe()
            nursery.start_soon(self._probe, agent, probe, self._config_epoch)
        await probe.done.wait()
        if probe.error is not None:
            raise probe.error
        if probe.result is None:  # the pool's nursery was cancelled: a shutdown
            raise ShuttingDown("the daemon is shutting down")
        return probe.result

    async def _probe(self, agent: str, probe: _Probe, epoch: int) -> None:
        spec = self._settings.agents[agent]
        daemon = self._settings.config.daemon
        try:
            probe.result = description_of(agent, await probe_agent(
                self._executors(spec.computer), spec, cwd=probe_directory(spec),
                timeout=float(daemon.request_timeout), grace=float(daemon.stop_grace),
                instance=self._instance))
            if epoch == self._config_epoch:  # not for a config reloaded meanwhile
                self._cached[agent] = probe.result
        except Exception as exc:
            probe.error = exc
        finally:
            if self._probes.get(agent) is probe:
                del self._probes[agent]
            probe.done.set()

"""The registry and supervisor of the shared agent processes (`shared.SharedHost`): a
child of the pool. Hosts are keyed by (agent, computer[, cwd]); a chat attaches to a host of
its key with room (fewer than `sessions_per_process` sessions), else to a new one. Per key,
the restart policy of a chat's generations applies to the process: after a crash the next
start waits for the backoff (counted from the crash, so the chats' own backoff usually
covers it), and after `restart_max` restarts within `restart_window` it gives up.
"""

from __future__ import annotations

import itertools
from typing import Any

import trio

from daemon.actors.backend.shared import HostKey, HostUnavailable, SharedHost
from daemon.actors.backend.view import SessionView
from daemon.actors.lifecycle import GiveUp, recent_restarts, restart_decision
from daemon.actors.settings import Settings
from daemon.channels.hub import Hub
from daemon.config.agents import AgentSpec
from daemon.execution.local import Executor
from daemon.log import Log


class SharedHosts:
    """The registry and supervisor of the shared processes (a child of the pool)."""

    def __init__(self, *, settings: Settings, hub: Hub, instance: str) -> None:
        self.settings = settings
        self.hub = hub
        self.instance = instance
        self._hosts: dict[HostKey, list[SharedHost]] = {}
        self._restarts: dict[HostKey, list[float]] = {}
        self._crashed: dict[HostKey, float] = {}
        """Keys whose last process crashed, and when: the next start comes no sooner than
        the backoff after it (the chats' own backoff usually covers it already)."""
        self._numbers = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._log = Log("shared")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def hosts(self) -> list[SharedHost]:
        return [host for hosts in self._hosts.values() for host in hosts]

    def key_for(self, spec: AgentSpec, computer: str | None, cwd: str) -> HostKey:
        return HostKey(spec.name, computer, cwd if spec.shared_by == "cwd" else None)

    async def attach(self, spec: AgentSpec, *, executor: Executor, computer: str | None,
                     cwd: str, **view_args: Any) -> SessionView:
        """A view on a started shared process for one chat's session: an existing process
        of the key with room, else a new one. Raises `HostUnavailable` (or the executor's
        `SpawnError`) when none can be started."""
        key = self.key_for(spec, computer, cwd)
        hosts = self._hosts.setdefault(key, [])
        host = next((h for h in hosts if h.accepting and h.spec == spec), None)
        if host is None:
            host = self._start(key, spec, executor)
        view = host.attach(view_args)
        try:
            await host.started.wait()
        except BaseException:
            host.detach(view)
            raise
        if host.failure is not None:
            host.detach(view)
            raise host.failure
        if host.ending is not None or view.closed:
            host.detach(view)
            raise HostUnavailable(f"shared agent process {host.id} ended: "
                                  f"{host.ending[0] if host.ending else 'process gone'}")
        return view

    def _start(self, key: HostKey, spec: AgentSpec, executor: Executor) -> SharedHost:
        lc = self.settings.config.lifecycle
        delay = 0.0
        crashed_at = self._crashed.pop(key, None)
        if crashed_at is not None:
            now = trio.current_time()
            history = recent_restarts(self._restarts.get(key, []), now=now,
                                      window=float(lc.restart_window))
            decision = restart_decision(
                history, now=now, max_restarts=lc.restart_max, window=float(lc.restart_window),
                backoff=float(lc.restart_backoff), backoff_max=float(lc.restart_backoff_max))
            if isinstance(decision, GiveUp):
                self._restarts.pop(key, None)
                raise HostUnavailable(f"the shared {key.agent} process {decision.reason}")
            delay = max(0.0, crashed_at + decision.delay - now)
            self._restarts[key] = [*history, now]
        host = SharedHost(key, spec, executor, settings=self.settings, hub=self.hub,
                          instance=self.instance, number=next(self._numbers), delay=delay,
                          on_end=self.forget)
        self._hosts.setdefault(key, []).append(host)
        if self._nursery is None:
            raise HostUnavailable("the daemon is not running")
        self._nursery.start_soon(host.run)
        return host

    def forget(self, host: SharedHost) -> None:
        """The host's process is ending: later attaches start another one."""
        hosts = self._hosts.get(host.key, [])
        if host in hosts:
            hosts.remove(host)
        if not hosts:
            self._hosts.pop(host.key, None)
        if host.crashed or host.failure is not None:
            self._crashed[host.key] = trio.current_time()

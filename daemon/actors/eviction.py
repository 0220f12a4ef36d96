"""Eviction: the pool's sweeper (`Evictor`: when to look, what to hibernate) and its I/O
half (`choose_victims`: gather the warm actors' facts, measuring RSS in a thread only when a
memory budget needs it, one process-table scan for all of them, and ask the pure
`lifecycle.plan_evictions`).

Only warm actors are ever looked at: the pool keeps them apart from the hibernated records
(updated on every state change), so a decision costs the same beside ten hibernated chats or
ten thousand. The evictor sleeps until the earliest idle deadline (`trio.sleep_until`,
through `move_on_at`), or until an actor becomes warm over the cap; with a memory budget it
also measures every `sweep_interval`, since memory grows without any event to tell."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import trio

from daemon.actors import mailbox as mb
from daemon.actors.lifecycle import EvictionPlan, State, plan_evictions
from daemon.actors.ref import ActorRef
from daemon.actors.settings import Settings
from daemon.config.file import LifecycleConfig
from daemon.log import Log


@dataclass(frozen=True, slots=True)
class Victims:
    chosen: list[tuple[ActorRef, str]]
    """The actors to hibernate now, each with the reason."""
    next_check: float | None
    """When to look again for the idle TTL (see `EvictionPlan.next_check`)."""
    memory_used: int | None
    """Summed RSS of the warm actors, when a memory budget asked for it."""


async def choose_victims(warm: list[ActorRef], lc: LifecycleConfig) -> Victims:
    """Which of the `warm` actors to hibernate now, why, and when to look again."""
    budget = int(lc.memory_budget) if lc.memory_budget is not None else None
    rss: list[int | None] = [None] * len(warm)
    if budget is not None and warm:
        rss = await trio.to_thread.run_sync(lambda: [r.rss() for r in warm])
    facts = [r.facts(m) for r, m in zip(warm, rss, strict=True)]
    plan: EvictionPlan = plan_evictions(
        facts, now=trio.current_time(), idle_ttl=float(lc.idle_ttl), max_warm=lc.max_warm,
        memory_budget=budget)
    by_key = {r.key: r for r in warm}
    return Victims(chosen=[(by_key[e.key], e.reason) for e in plan.evictions],
                   next_check=plan.next_check,
                   memory_used=None if budget is None else sum(m or 0 for m in rss))


class _Held(Protocol):
    """What the evictor reads of the pool's record of a warm actor."""

    @property
    def ref(self) -> ActorRef: ...


class Evictor:
    """The pool's eviction sweeper. It reads the pool's map of warm actors (never changes
    it) and hibernates through each `ActorRef`; the pool tells it of every warm state
    (`on_warm`) and when it stops (`stop`)."""

    def __init__(self, *, warm: Mapping[tuple[str, str], _Held], settings: Settings,
                 log: Log) -> None:
        self._warm = warm
        self._settings = settings
        self._log = log
        self._needed = trio.Event()
        self._stopped = False
        self._idle_check: float | None = None
        """When the idle TTL may next evict a warm actor (None: no warm actor to watch)."""
        self._memory_checked = -math.inf
        self._over_budget = False
        """The last measurement found the warm actors over the memory budget."""
        self.evictions = 0

    async def warm_rss(self) -> list[tuple[ActorRef, int]]:
        """Each warm actor's RSS (0 when unknown), measured in a thread."""
        warm = [child.ref for child in self._warm.values()]
        sizes = await trio.to_thread.run_sync(lambda: [ref.rss() or 0 for ref in warm])
        return list(zip(warm, sizes, strict=True))

    def on_warm(self, state: State) -> None:
        """An actor entered the warm `state` (the pool's map already holds it): O(1)."""
        lc = self._settings.config.lifecycle
        if len(self._warm) > lc.max_warm:
            self._needed.set()
        elif state is State.READY and (self._idle_check is None or self._over_budget):
            # A turn's end moves this actor's idle deadline later than any already planned,
            # so it needs a plan only when none is (or the budget waits for an idle actor).
            self._needed.set()

    def request(self) -> None:
        self._needed.set()

    def stop(self) -> None:
        """Nothing is evicted any more; the sweeper sleeps until cancelled."""
        self._stopped = True
        self._needed.set()

    def _next_wake(self) -> float:
        """The next deadline: the earliest idle deadline, and with a memory budget the next
        measurement while anything is warm."""
        if self._stopped:
            return math.inf  # nothing is evicted any more: wait for the cancel
        at = self._idle_check if self._idle_check is not None else math.inf
        lc = self._settings.config.lifecycle
        if lc.memory_budget is not None and self._warm:
            at = min(at, self._memory_checked + float(lc.sweep_interval))
        return at

    async def run(self) -> None:
        while True:
            with trio.move_on_at(self._next_wake()):
                await self._needed.wait()
            self._needed = trio.Event()
            try:
                await self.sweep()
            except Exception:
                self._log.exception("eviction sweep failed")
                # Do not spin on a deadline that failed: try again after the interval.
                now = trio.current_time()
                self._idle_check = now + float(self._settings.config.lifecycle.sweep_interval)
                self._memory_checked = now

    async def sweep(self) -> list[str]:
        """Hibernate what the policy says should go among the warm actors, and plan the
        next look. Returns the evicted keys."""
        if self._stopped:
            return []
        lc = self._settings.config.lifecycle
        victims = await choose_victims([child.ref for child in self._warm.values()], lc)
        self._idle_check = victims.next_check
        if victims.memory_used is not None:
            self._memory_checked = trio.current_time()
            self._over_budget = (lc.memory_budget is not None
                                 and victims.memory_used > int(lc.memory_budget))
        else:
            self._over_budget = False
        for ref, reason in victims.chosen:
            self._log.info("hibernating", chat=ref.chat, agent=ref.agent, reason=reason)
            self.evictions += 1
            ref.send(mb.Hibernate(reason=reason))
        return [ref.key for ref, _ in victims.chosen]

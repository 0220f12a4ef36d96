"""The I/O half of eviction: gather the warm actors' facts (measuring RSS in a thread only
when a memory budget needs it, one process-table scan for all of them) and ask the pure
`lifecycle.plan_evictions`.

Only warm actors are ever looked at: the pool keeps them apart from the hibernated records,
so a decision costs the same beside ten hibernated chats or ten thousand."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from daemon.actors.lifecycle import EvictionPlan, plan_evictions
from daemon.actors.ref import ActorRef
from daemon.config.file import LifecycleConfig


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

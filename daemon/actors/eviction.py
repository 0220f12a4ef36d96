"""The I/O half of the eviction sweep: gather each actor's facts (measuring RSS in a thread
only when a memory budget needs it) and ask the pure `lifecycle.choose_evictions`."""

from __future__ import annotations

import trio

from daemon.actors.lifecycle import WARM_STATES, Eviction, choose_evictions
from daemon.actors.ref import ActorRef
from daemon.config.file import LifecycleConfig


async def choose_victims(refs: list[ActorRef], lc: LifecycleConfig
                         ) -> list[tuple[ActorRef, Eviction]]:
    """Which of `refs` to hibernate now, and why."""
    budget = int(lc.memory_budget) if lc.memory_budget is not None else None
    rss: list[int | None] = [None] * len(refs)
    if budget is not None:
        rss = await trio.to_thread.run_sync(
            lambda: [r.rss() if r.state in WARM_STATES else None for r in refs])
    facts = [r.facts(m) for r, m in zip(refs, rss, strict=True)]
    by_key = {r.key: r for r in refs}
    evictions = choose_evictions(facts, now=trio.current_time(), idle_ttl=float(lc.idle_ttl),
                                 max_warm=lc.max_warm, memory_budget=budget)
    return [(by_key[e.key], e) for e in evictions]

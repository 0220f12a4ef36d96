"""Which runs and cache entries retention drops, and when to look again. Pure.

A `done` run is deleted `run_retention` after it ended; a `failed` or `cancelled` one can be
resumed, so it is kept until resumed, or `resumable_retention` after it ended when that is
set; a running run never is. A cache entry is dropped once neither written nor used for
`cache_retention`. The pruner sleeps until the earliest of these deadlines (at most
`MAX_SLEEP`, so a reloaded config or a jump of the wall clock is seen within that)."""

from __future__ import annotations

from collections.abc import Iterable

from daemon.config.file import WorkflowsConfig
from daemon.workflows.records import Run, RunState

MAX_SLEEP = 3600.0
MIN_SLEEP = 1.0
"""Never look again sooner than this (a deadline already past would otherwise spin)."""


def due(run: Run, config: WorkflowsConfig) -> float | None:
    """The wall-clock time `run` may be deleted at (None: never, as things stand)."""
    if run.state is RunState.RUNNING or run.ended is None:
        return None
    if run.state is RunState.DONE:
        return run.ended + float(config.run_retention)
    if config.resumable_retention is None:
        return None
    return run.ended + float(config.resumable_retention)


def expired(runs: Iterable[Run], now: float, config: WorkflowsConfig) -> list[Run]:
    """The runs to delete at `now`."""
    out = []
    for run in runs:
        when = due(run, config)
        if when is not None and when <= now:
            out.append(run)
    return out


def cache_cutoff(now: float, config: WorkflowsConfig) -> float:
    """Cache entries last written or used before this are dropped at `now`."""
    return now - float(config.cache_retention)


def next_wake(runs: Iterable[Run], oldest_cache: float | None, now: float,
              config: WorkflowsConfig) -> float:
    """Seconds from `now` until something may be due (`runs` and `oldest_cache` as left
    after pruning at `now`). A run that ends or an entry written after `now` is due no
    sooner than `now` plus its retention, so those bound the sleep too: no event needed."""
    deadlines = [now + MAX_SLEEP, now + float(config.run_retention),
                 now + float(config.cache_retention)]
    if config.resumable_retention is not None:
        deadlines.append(now + float(config.resumable_retention))
    deadlines += [w for w in (due(r, config) for r in runs) if w is not None]
    if oldest_cache is not None:
        deadlines.append(oldest_cache + float(config.cache_retention))
    return max(MIN_SLEEP, min(deadlines) - now)

"""The workflow tables: every SQL statement on them, and the run and its units as the service
keeps them.

A run has one unit per step; a `for_each` step also has one unit per item (`NAME[i]`),
created when the step's needs are done and its items known, while the step's own unit
stands for the whole fan-out. Writes are enqueued on the store's one writer; the service
flushes before it answers a request, and after recording a step's task ("delivered means
durable").
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from daemon.store.sqlite import Store


class RunState(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class UnitState(enum.StrEnum):
    WAITING = "waiting"
    """For the steps it needs."""
    PENDING = "pending"
    """Ready: waits for a free slot (the run's concurrency, the daemon's)."""
    RUNNING = "running"
    DONE = "done"
    CACHED = "cached"
    """Done by an earlier run with the same spec: its result was reused, nothing ran."""
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    """A step it needs failed or was cancelled."""


FINISHED = frozenset({UnitState.DONE, UnitState.CACHED})
ENDED = frozenset({UnitState.DONE, UnitState.CACHED, UnitState.FAILED, UnitState.CANCELLED,
                   UnitState.SKIPPED})


@dataclass(slots=True, eq=False)
class Unit:
    run: str
    unit: str
    step: str
    state: UnitState = UnitState.WAITING
    index: int | None = None
    item: str | None = None
    key: str = ""
    """SHA-256 of the resolved spec (plan.cache_key); empty until the unit is ready."""
    prompt: str = ""
    """The rendered prompt."""
    task: str | None = None
    attempts: int = 0
    result: str = ""
    tokens: int = 0
    """Tokens its ended attempts used."""
    live_tokens: int = 0
    """Tokens of the running attempt so far (not stored)."""
    error: str | None = None
    started: float | None = None
    ended: float | None = None

    @property
    def ended_(self) -> bool:
        return self.state in ENDED


@dataclass(slots=True, eq=False)
class Run:
    id: str
    name: str
    path: str
    source: str
    inputs: dict[str, Any]
    cwd: str
    base: str
    created: float
    state: RunState = RunState.RUNNING
    reason: str | None = None
    chat: str | None = None
    ended: float | None = None
    origin: str | None = None
    """The chat whose agent started the run (MCP `run_workflow`), if one did."""
    units: dict[str, Unit] = field(default_factory=dict)
    version: int = 0
    changed: trio.Event = field(default_factory=trio.Event)
    """Set at each change (the run's actor and `workflow --wait` waiters watch it)."""
    stopping: str | None = None
    """Why the run is stopping (budget, cancel): nothing starts, running units are
    cancelled, and the run ends with this reason once none runs."""

    def touch(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = trio.Event()

    def tokens(self) -> int:
        return sum(u.tokens + u.live_tokens for u in self.units.values())


_RUN_COLUMNS = ("id, name, path, source, inputs, cwd, base, chat, state, reason, created,"
                " ended, origin")
_UNIT_COLUMNS = ("run, unit, step, idx, item, state, key, prompt, task, attempts, result,"
                 " tokens, error, started, ended")


def save_run(store: Store, run: Run) -> None:
    store.execute(
        f"INSERT OR REPLACE INTO workflow_runs({_RUN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (run.id, run.name, run.path, run.source, json.dumps(run.inputs), run.cwd, run.base,
         run.chat, run.state.value, run.reason, run.created, run.ended, run.origin))


def save_unit(store: Store, unit: Unit) -> None:
    store.execute(
        f"INSERT OR REPLACE INTO workflow_units({_UNIT_COLUMNS}) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (unit.run, unit.unit, unit.step, unit.index, unit.item, unit.state.value, unit.key,
         unit.prompt, unit.task, unit.attempts, unit.result, unit.tokens, unit.error,
         unit.started, unit.ended))


def delete_unit(store: Store, unit: Unit) -> None:
    store.execute("DELETE FROM workflow_units WHERE run = ? AND unit = ?", (unit.run, unit.unit))


def cache_put(store: Store, key: str, result: str, tokens: int) -> None:
    store.execute("INSERT OR REPLACE INTO workflow_cache(key, result, tokens, created) "
                  "VALUES (?,?,?,?)", (key, result, tokens, time.time()))


async def cache_get(store: Store, key: str) -> str | None:
    """The cached result of `key`; a hit marks the entry used now (the column `created`
    holds when it was last written or used: retention drops entries unused for long)."""
    rows = await store.query("SELECT result FROM workflow_cache WHERE key = ?", (key,))
    if not rows:
        return None
    store.execute("UPDATE workflow_cache SET created = ? WHERE key = ?", (time.time(), key))
    return str(rows[0][0])


async def cache_oldest(store: Store) -> float | None:
    """When the least recently written or used cache entry was (None: the cache is empty)."""
    rows = await store.query("SELECT MIN(created) FROM workflow_cache")
    return float(rows[0][0]) if rows and rows[0][0] is not None else None


def cache_prune(store: Store, before: float) -> None:
    """Drop the cache entries neither written nor used since `before`."""
    store.execute("DELETE FROM workflow_cache WHERE created < ?", (before,), bulk=True)


def delete_run(store: Store, run: str) -> None:
    """Delete a run and its units (its steps' tasks are the tasks subsystem's)."""
    store.execute("DELETE FROM workflow_units WHERE run = ?", (run,), bulk=True)
    store.execute("DELETE FROM workflow_runs WHERE id = ?", (run,))


_E = TypeVar("_E", bound=enum.StrEnum)


def _enum(kind: type[_E], value: str, fallback: _E) -> _E:
    try:
        return kind(value)
    except ValueError:
        return fallback


async def load(store: Store) -> list[Run]:
    runs: dict[str, Run] = {}
    for (id_, name, path, source, inputs, cwd, base, chat, state, reason, created,
         ended, origin) in await store.query(f"SELECT {_RUN_COLUMNS} FROM workflow_runs "
                                     "ORDER BY created"):
        runs[id_] = Run(id=id_, name=name, path=path, source=source,
                        inputs=json.loads(inputs), cwd=cwd, base=base, chat=chat,
                        state=_enum(RunState, state, RunState.FAILED), reason=reason,
                        created=float(created), ended=ended, origin=origin)
    for (run, unit, step, idx, item, state, key, prompt, task, attempts, result, tokens,
         error, started, ended) in await store.query(
            f"SELECT {_UNIT_COLUMNS} FROM workflow_units ORDER BY rowid"):
        owner = runs.get(run)
        if owner is None:
            continue
        owner.units[unit] = Unit(
            run=run, unit=unit, step=step, state=_enum(UnitState, state, UnitState.PENDING),
            index=idx, item=item, key=key, prompt=prompt, task=task, attempts=int(attempts),
            result=result, tokens=int(tokens), error=error, started=started, ended=ended)
    return list(runs.values())

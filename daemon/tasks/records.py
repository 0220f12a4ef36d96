"""The `tasks` table: every SQL statement on it, and the task as the service keeps it.

Writes are enqueued on the store's one writer; the service flushes before it answers a
request that created or changed a task ("delivered means durable").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import trio

from daemon.store.sqlite import Store


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    """Waiting for a slot under its parent's `max_running`."""
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    """The daemon stopped while its turn ran."""


UNFINISHED = frozenset({TaskState.QUEUED, TaskState.RUNNING})


@dataclass(slots=True, eq=False)
class Task:
    id: str
    """The task's chat id."""
    parent: str
    agent: str
    title: str
    origin: str
    depth: int
    state: TaskState
    prompt: str
    """The prompt that runs (or ran, or waits to run)."""
    created: float
    turn: int | None = None
    since: int = 0
    """The task chat's head seq before its prompt was sent: its follower replays from it."""
    result: str = ""
    stop_reason: str | None = None
    error: str | None = None
    notified: bool = True
    """False while the parent still has to be prompted with the result (notify=prompt)."""
    tokens: int = 0
    """Tokens its finished turns used (from usage deltas), for `tasks.token_budget`."""
    turn_tokens: int = 0
    """Tokens of the running turn so far (not stored: a follower replays them)."""
    started: float | None = None
    ended: float | None = None
    text: list[str] = field(default_factory=list)
    """The running turn's text so far (not stored: a follower replays it)."""
    text_size: int = 0
    settled: trio.Event = field(default_factory=trio.Event)
    """Set when the task leaves queued/running; a new one each time it runs again."""

    @property
    def unfinished(self) -> bool:
        return self.state in UNFINISHED


_COLUMNS = ("id, parent, agent, title, origin, depth, state, prompt, turn, since, result,"
            " stop_reason, error, notified, tokens, created, started, ended")


def save(store: Store, task: Task) -> None:
    store.execute(
        f"INSERT OR REPLACE INTO tasks({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (task.id, task.parent, task.agent, task.title, task.origin, task.depth,
         task.state.value, task.prompt, task.turn, task.since, task.result,
         task.stop_reason, task.error, int(task.notified), task.tokens, task.created,
         task.started, task.ended))


def _state(value: str) -> TaskState:
    try:
        return TaskState(value)
    except ValueError:
        return TaskState.INTERRUPTED


async def load(store: Store) -> list[Task]:
    rows = await store.query(f"SELECT {_COLUMNS} FROM tasks ORDER BY created")
    tasks = []
    for (id_, parent, agent, title, origin, depth, state, prompt, turn, since, result,
         stop_reason, error, notified, tokens, created, started, ended) in rows:
        task = Task(id=id_, parent=parent, agent=agent, title=title, origin=origin,
                    depth=int(depth), state=_state(state), prompt=prompt,
                    created=float(created), turn=None if turn is None else int(turn),
                    since=int(since or 0), result=result, stop_reason=stop_reason,
                    error=error, notified=bool(notified), tokens=int(tokens or 0),
                    started=started, ended=ended)
        if not task.unfinished:
            task.settled.set()
        tasks.append(task)
    return tasks

"""The tasks' pure decisions: whether a new task may be created (each refusal a sentence a
model can act on), which queued tasks start now, what a task's turn ending means, and the
text that brings a result back to the parent. No I/O."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from daemon.config.file import TasksConfig
from daemon.tasks.records import Task, TaskState
from protocol import deltas as d

SUMMARY_CHARS = 200
RESULT_CHARS = 256 * 1024
"""A task's result keeps at most this much of its final text (the start and the end)."""


def refusal(config: TasksConfig, *, depth: int, agent: str, known_agents: Iterable[str],
            unfinished: int, tree_tokens: int = 0) -> str | None:
    """Why a task at `depth` on `agent` may not be created now (None: it may). `unfinished`
    counts the daemon's queued and running tasks; `tree_tokens` the tokens the task tree it
    would join used so far."""
    known = sorted(known_agents)
    if agent not in known:
        return f"unknown agent {agent!r}; use one of: {', '.join(allowed(config, known))}"
    if config.agents and agent not in config.agents:
        return (f"agent {agent!r} may not be used for tasks; allowed: "
                f"{', '.join(allowed(config, known))}")
    if depth > config.max_depth:
        return (f"task depth limit reached: a task at depth {depth} is beyond tasks.max_depth"
                f" = {config.max_depth}; do this work yourself instead of delegating it")
    why = over_budget(config, tree_tokens)
    if why is not None:
        return why
    if unfinished >= config.max_tasks:
        return (f"too many unfinished tasks in the daemon ({unfinished}, tasks.max_tasks = "
                f"{config.max_tasks}); wait for some to finish (task_result) and try again")
    return None


def over_budget(config: TasksConfig, tree_tokens: int) -> str | None:
    """Why the task tree that used `tree_tokens` may not grow (None: it may)."""
    if config.token_budget is not None and tree_tokens >= config.token_budget:
        return (f"the token budget of this task tree is used up ({tree_tokens} of "
                f"tasks.token_budget = {config.token_budget}); finish the work without "
                "delegating more")
    return None


def tokens_of(usage: d.Usage) -> int:
    """The tokens a `usage` delta reports (0 for a context-size update)."""
    if usage.total_tokens is not None:
        return usage.total_tokens
    return (usage.input_tokens or 0) + (usage.output_tokens or 0)


def allowed(config: TasksConfig, known: Iterable[str]) -> list[str]:
    """The agents tasks may use."""
    names = sorted(known)
    return [a for a in names if a in config.agents] if config.agents else names


def to_start(siblings: Sequence[Task], max_running: int) -> list[Task]:
    """The queued tasks of one parent that start now, oldest first, filling the free
    running slots."""
    running = sum(1 for t in siblings if t.state is TaskState.RUNNING)
    free = max(0, max_running - running)
    queued = [t for t in siblings if t.state is TaskState.QUEUED]
    return queued[:free]


def outcome(stop_reason: str | None, error: str | None) -> TaskState:
    """A task's state after its turn ended this way."""
    if error is not None:
        if error.startswith(("interrupted", "daemon shutting down")):
            return TaskState.INTERRUPTED
        return TaskState.FAILED
    if stop_reason == "cancelled":
        return TaskState.CANCELLED
    return TaskState.DONE


def clip(text: str, limit: int = RESULT_CHARS) -> str:
    """`text` cut to `limit` characters, keeping its start and its end."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def summary(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SUMMARY_CHARS else flat[:SUMMARY_CHARS - 1] + "…"


def inside(path: str, root: str) -> bool:
    """Whether real path `path` is `root` or below it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def report(tasks: Sequence[Task]) -> str:
    """The prompt that brings finished tasks' results back to their parent (notify =
    "prompt")."""
    parts = []
    for task in tasks:
        head = f"Task {task.id} ({task.title}) on {task.agent} ended: {task.state.value}"
        if task.error:
            head += f" ({task.error})"
        parts.append(f"{head}.\nResult:\n{task.result}" if task.result else head + ".")
    return "\n\n".join(parts)

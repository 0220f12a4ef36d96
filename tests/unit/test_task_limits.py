"""The tasks' pure decisions (daemon/tasks/limits.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from daemon.config.file import TasksConfig
from daemon.tasks import limits
from daemon.tasks.records import Task, TaskState

AGENTS = ("echo", "qwen")


def task(i: int, state: TaskState) -> Task:
    return Task(id=f"t{i}", parent="p", agent="echo", title="", origin="client", depth=1,
                state=state, prompt="x", created=float(i))


@given(st.lists(st.sampled_from(list(TaskState)), max_size=12), st.integers(1, 5))
def test_to_start_fills_free_slots_oldest_first(states: list[TaskState], limit: int) -> None:
    siblings = [task(i, s) for i, s in enumerate(states)]
    chosen = limits.to_start(siblings, limit)
    running = states.count(TaskState.RUNNING)
    queued = [t for t in siblings if t.state is TaskState.QUEUED]
    assert chosen == queued[:max(0, limit - running)]
    assert running + len(chosen) <= max(limit, running)


def test_refusals_say_what_to_do() -> None:
    config = TasksConfig(max_depth=2, max_tasks=3, agents=["echo"])
    assert limits.refusal(config, depth=1, agent="echo", known_agents=AGENTS,
                          unfinished=0) is None
    assert "unknown agent 'x'; use one of: echo" in str(
        limits.refusal(config, depth=1, agent="x", known_agents=AGENTS, unfinished=0))
    assert "may not be used for tasks; allowed: echo" in str(
        limits.refusal(config, depth=1, agent="qwen", known_agents=AGENTS, unfinished=0))
    assert "depth 3 is beyond tasks.max_depth = 2" in str(
        limits.refusal(config, depth=3, agent="echo", known_agents=AGENTS, unfinished=0))
    assert "tasks.max_tasks = 3" in str(
        limits.refusal(config, depth=1, agent="echo", known_agents=AGENTS, unfinished=3))


def test_outcome_of_a_turn() -> None:
    assert limits.outcome("end_turn", None) is TaskState.DONE
    assert limits.outcome("max_tokens", None) is TaskState.DONE
    assert limits.outcome("cancelled", None) is TaskState.CANCELLED
    assert limits.outcome(None, "agent crashed") is TaskState.FAILED
    assert limits.outcome(None, "interrupted: the daemon stopped while this turn ran"
                          ) is TaskState.INTERRUPTED
    assert limits.outcome(None, "daemon shutting down") is TaskState.INTERRUPTED


@given(st.text(max_size=300), st.integers(10, 100))
def test_clip_keeps_short_text_and_both_ends_of_long_text(text: str, limit: int) -> None:
    clipped = limits.clip(text, limit)
    if len(text) <= limit:
        assert clipped == text
    else:
        assert clipped.startswith(text[:limit // 2])
        assert clipped.endswith(text[len(text) - limit // 2:])


def test_inside() -> None:
    assert limits.inside("/a/b", "/a")
    assert limits.inside("/a", "/a")
    assert not limits.inside("/ab", "/a")
    assert limits.inside("/x", "/")

"""Which workflow runs and cache entries retention drops, and when the pruner looks again."""

from __future__ import annotations

import pytest

from daemon.config.file import Duration, WorkflowsConfig
from daemon.workflows import retention
from daemon.workflows.records import Run, RunState

DAY = 86400.0


def run(state: RunState, ended: float | None) -> Run:
    return Run(id=f"{state.value}-{ended}", name="w", path="/w.toml", source="", inputs={},
               cwd="/", base="", created=0.0, state=state, ended=ended)


def test_only_done_runs_expire_by_default() -> None:
    config = WorkflowsConfig(run_retention=Duration(DAY))
    runs = [run(RunState.DONE, 0.0), run(RunState.DONE, 5.0), run(RunState.FAILED, 0.0),
            run(RunState.CANCELLED, 0.0), run(RunState.RUNNING, None)]
    assert retention.expired(runs, DAY + 1, config) == [runs[0]]
    assert retention.expired(runs, 100 * DAY, config) == runs[:2]


def test_resumable_runs_expire_only_with_their_own_retention() -> None:
    config = WorkflowsConfig(run_retention=Duration(DAY), resumable_retention=Duration(DAY))
    runs = [run(RunState.FAILED, 0.0), run(RunState.CANCELLED, 0.0),
            run(RunState.RUNNING, None), run(RunState.RUNNING, 0.0)]
    assert retention.expired(runs, DAY, config) == runs[:2]


def test_the_next_wake_is_the_earliest_deadline_bounded_by_the_retentions() -> None:
    config = WorkflowsConfig(run_retention=Duration(DAY), cache_retention=Duration(2 * DAY))
    now = 10 * DAY
    done = run(RunState.DONE, now - DAY + 60)
    assert retention.next_wake([done], None, now, config) == 60
    assert retention.next_wake([], now - 2 * DAY + 30, now, config) == 30
    # Nothing stored: what ends or is cached from now on is due a retention later at
    # the earliest, and never sleep longer than MAX_SLEEP.
    assert retention.next_wake([], None, now, config) == retention.MAX_SLEEP
    short = WorkflowsConfig(run_retention=Duration(5), cache_retention=Duration(7))
    assert retention.next_wake([], None, now, short) == 5
    # A deadline already past never makes the pruner spin.
    assert retention.next_wake([run(RunState.DONE, 0.0)], None, now, short) == \
        retention.MIN_SLEEP


def test_the_retentions_must_be_positive() -> None:
    with pytest.raises(ValueError, match="more than 0"):
        WorkflowsConfig(cache_retention=Duration(0))

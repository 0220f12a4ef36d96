"""The actor state table (daemon/actors/lifecycle.py): the designed paths are legal, an
illegal change raises, and every state can still reach `closed`."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.actors.lifecycle import (
    TRANSITIONS,
    IllegalTransition,
    State,
    check_transition,
)

DESIGNED_PATHS = [
    [State.HIBERNATED, State.STARTING, State.READY, State.BUSY, State.READY, State.HIBERNATED],
    [State.READY, State.BUSY, State.CRASHED, State.RESTARTING, State.STARTING, State.READY],
    [State.STARTING, State.CRASHED, State.FAILED, State.STARTING, State.FAILED],
    [State.RESTARTING, State.CLOSED],
    [State.BUSY, State.HIBERNATED],
]


@pytest.mark.parametrize("path", DESIGNED_PATHS)
def test_designed_paths_are_legal(path: list[State]) -> None:
    for old, new in itertools.pairwise(path):
        check_transition(old, new)


def test_illegal_transition_raises() -> None:
    with pytest.raises(IllegalTransition, match="hibernated -> busy"):
        check_transition(State.HIBERNATED, State.BUSY)
    with pytest.raises(IllegalTransition, match="closed -> starting"):
        check_transition(State.CLOSED, State.STARTING)


@given(st.sampled_from(list(State)), st.sampled_from(list(State)))
def test_check_agrees_with_table(old: State, new: State) -> None:
    if new in TRANSITIONS[old]:
        check_transition(old, new)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(old, new)


@given(st.sampled_from([s for s in State if s is not State.CLOSED]))
def test_every_live_state_can_close_and_hibernate(state: State) -> None:
    assert State.CLOSED in TRANSITIONS[state]
    assert State.HIBERNATED in TRANSITIONS[state]


def test_closed_is_final_and_table_is_total() -> None:
    assert set(TRANSITIONS) == set(State)
    assert TRANSITIONS[State.CLOSED] == frozenset()

"""A run's pure decisions (daemon/workflows/plan.py) and the CLI's drawing of a run
(daemon/cli/workflow.py dag_lines)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from daemon.cli.workflow import dag_lines
from daemon.workflows import plan, spec
from daemon.workflows.records import Unit, UnitState
from protocol import messages as m

WF = spec.parse('agent = "echo"\n[steps.a]\nprompt = "x"\n[steps.b]\nneeds = ["a"]\n'
                'for_each = "steps.a.lines"\nprompt = "{{ item }}"\n', "f.toml")


def key(**changes: object) -> str:
    base: dict[str, object] = {"agent": "echo", "prompt": "p", "workspace": "inherit",
                               "base": "abc", "cwd": "/w", "inputs": {"x": 1},
                               "needs": {"a": ["k1"]}}
    base.update(changes)
    return plan.cache_key(**base)  # type: ignore[arg-type]


def test_the_cache_key_changes_with_every_part_of_the_spec() -> None:
    keys = {key(), key(agent="claude"), key(prompt="q"), key(workspace="worktree"),
            key(base="def"), key(cwd="/v"), key(inputs={"x": 2}), key(needs={"a": ["k2"]}),
            key(item="a.py")}
    assert len(keys) == 9
    assert key() == key(inputs={"x": 1})
    assert len(key()) == 64


def test_fan_out_items_from_an_earlier_result_are_its_non_empty_lines() -> None:
    assert plan.items(WF.steps["b"], {}, {"a": "one\n\n  two \n"}) == ["one", "two"]


@given(st.integers(min_value=0, max_value=100))
def test_backoff_grows_and_is_capped(attempt: int) -> None:
    assert 1.0 <= plan.backoff(attempt) <= plan.MAX_BACKOFF
    assert plan.backoff(attempt + 1) >= plan.backoff(attempt)


def test_a_fan_out_is_done_when_its_items_are_and_failed_when_one_failed() -> None:
    units = {"a": Unit(run="r", unit="a", step="a", state=UnitState.DONE),
             "b": Unit(run="r", unit="b", step="b", state=UnitState.RUNNING)}
    for i, state in enumerate((UnitState.CACHED, UnitState.CACHED)):
        units[f"b[{i}]"] = Unit(run="r", unit=f"b[{i}]", step="b", index=i, state=state)
    assert plan.step_state(WF, "b", units) is UnitState.CACHED
    units["b[1]"].state = UnitState.DONE
    assert plan.step_state(WF, "b", units) is UnitState.DONE
    units["b[2]"] = Unit(run="r", unit="b[2]", step="b", index=2, state=UnitState.RUNNING)
    assert plan.step_state(WF, "b", units) is UnitState.RUNNING
    units["b[2]"].state = UnitState.FAILED
    assert plan.step_state(WF, "b", units) is UnitState.FAILED


def test_the_dag_is_drawn_by_depth_with_states_and_durations() -> None:
    info = m.WorkflowInfo(
        run="r1", name="d", path="/d.toml", state="running", cwd="/w", created_at=0.0,
        tokens=12, budget=100, steps=[
            m.WorkflowStepInfo(unit="top", step="top", state="done", agent="echo",
                               started_at=10.0, ended_at=11.5),
            m.WorkflowStepInfo(unit="left", step="left", state="running", agent="echo",
                               needs=["top"], started_at=11.5, task="t1"),
            m.WorkflowStepInfo(unit="fan", step="fan", state="cached", agent="echo",
                               needs=["top"]),
            m.WorkflowStepInfo(unit="fan[0]", step="fan", state="cached", agent="echo",
                               index=0, item="a.py"),
            m.WorkflowStepInfo(unit="end", step="end", state="waiting", agent="echo",
                               needs=["left", "fan"])])
    assert dag_lines(info, now=14.0) == [
        "d r1: running, 2/4 steps, 12 tokens of 100",
        "✓ top                done     1.5s",
        "  ▶ left             running  2.5s  <- top        task t1",
        "  ≡ fan              cached         <- top",
        "      ≡ fan[0] a.py  cached",
        "    ○ end            waiting        <- left, fan",
    ]


def test_a_step_s_spec_holds_only_the_inputs_it_reads() -> None:
    wf = spec.parse('agent = "e"\n[inputs]\na = "1"\nb = "2"\nl = ["x"]\n[steps.s]\n'
                    'for_each = "inputs.l"\nprompt = "{{ inputs.a }} {{ item }}"\n', "f")
    assert plan.used_inputs(wf.steps["s"], {"a": "1", "b": "2", "l": ["x"]}) == {"a": "1"}

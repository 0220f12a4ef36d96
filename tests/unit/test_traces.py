"""The turn timelines and statistics folded from deltas (daemon/traces/model.py)."""

from __future__ import annotations

import statistics

from hypothesis import given
from hypothesis import strategies as st

from daemon.traces import model
from protocol import deltas as d
from protocol import messages as m


class Log:
    """Deltas of one chat as the hub numbers them."""

    def __init__(self) -> None:
        self.deltas: list[d.Delta] = []

    def add(self, ts: float, turn: int, body: d.DeltaBody) -> None:
        self.deltas.append(d.Delta(chat="c", seq=len(self.deltas) + 1, ts=ts, turn=turn,
                                   body=body))


def test_a_turn_with_tools_tokens_and_cost() -> None:
    log = Log()
    log.add(100.0, 1, d.TurnStarted(agent="qwen", prompt="fix it"))
    log.add(100.0, 0, d.Status(agent="qwen", state="busy"))
    log.add(101.5, 1, d.Reasoning(text="hmm"))
    log.add(102.0, 1, d.ToolCall(tool_call_id="t1", title="read_file", status="pending",
                                 acp={"kind": "read"}))
    log.add(102.5, 1, d.ToolUpdate(tool_call_id="t1", status="in_progress"))
    log.add(103.0, 1, d.ToolUpdate(tool_call_id="t1", status="completed"))
    log.add(103.5, 1, d.ToolCall(tool_call_id="t2", title="shell", status="pending"))
    log.add(104.0, 1, d.Usage(cost={"amount": 0.25, "currency": "USD"}))
    log.add(104.0, 1, d.Usage(input_tokens=1000, output_tokens=200, cached_tokens=50))
    log.add(105.0, 1, d.TurnEnded(stop_reason="end_turn"))
    [trace] = model.turn_traces(log.deltas)
    assert (trace.turn, trace.agent, trace.prompt) == (1, "qwen", "fix it")
    assert trace.duration == 5.0
    assert trace.ttft == 1.5
    assert trace.outcome == "end_turn"
    read, shell = trace.tool_calls
    assert (read.title, read.kind, read.start, read.end, read.status) == (
        "read_file", "read", 102.0, 103.0, "completed")
    # Never closed: the turn ended with it pending.
    assert (shell.end, shell.status) == (None, "pending")
    assert (trace.input_tokens, trace.output_tokens, trace.cached_tokens) == (1000, 200, 50)
    assert (trace.cost, trace.cost_currency) == (0.25, "USD")


def test_queued_time_is_not_duration_and_cost_is_per_turn() -> None:
    log = Log()
    log.add(10.0, 1, d.TurnStarted(agent="a", prompt="one"))
    log.add(11.0, 2, d.TurnStarted(agent="a", prompt="two", queued=1))
    log.add(12.0, 1, d.Text(text="x"))
    log.add(12.0, 1, d.Usage(cost={"amount": 1.0, "currency": "USD"}))
    log.add(14.0, 1, d.TurnEnded(stop_reason="end_turn"))
    log.add(14.5, 2, d.Text(text="y"))
    log.add(14.5, 2, d.Usage(cost={"amount": 1.5, "currency": "USD"}))
    log.add(15.0, 2, d.TurnEnded(error="agent crashed"))
    first, second = model.turn_traces(log.deltas)
    assert first.duration == 4.0
    assert (second.accepted, second.started) == (11.0, 14.0)
    assert second.duration == 1.0
    assert second.ttft == 0.5
    assert (second.outcome, second.error) == ("error", "agent crashed")
    # The session's cost is cumulative: each turn gets its own share.
    assert (first.cost, second.cost) == (1.0, 0.5)


def test_restarts_during_a_turn_count_for_it() -> None:
    log = Log()
    log.add(1.0, 1, d.TurnStarted(agent="a", prompt="p"))
    log.add(1.1, 1, d.Text(text="x"))
    log.add(1.2, 0, d.Status(agent="a", state="crashed"))
    log.add(1.3, 0, d.Status(agent="a", state="restarting"))
    log.add(1.4, 1, d.TurnEnded(error="agent crashed"))
    log.add(2.0, 0, d.Status(agent="a", state="crashed"))  # between turns: nobody's
    [trace] = model.turn_traces(log.deltas)
    assert trace.restarts == 2


def test_a_turn_still_running_has_no_end() -> None:
    log = Log()
    log.add(1.0, 1, d.TurnStarted(agent="a", prompt="p"))
    [trace] = model.turn_traces(log.deltas)
    assert (trace.ended, trace.duration, trace.ttft, trace.outcome) == (None, None, None, "")


@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=50),
       st.sampled_from([0.5, 0.95]))
def test_percentile_matches_the_inclusive_method(values: list[float], q: float) -> None:
    got = model.percentile(values, q)
    assert got is not None
    if len(values) == 1:
        assert got == values[0]
    else:
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        expected = cuts[round(q * 100) - 1]
        assert abs(got - expected) < 1e-6 * max(1.0, abs(expected))


@given(st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 5.0), st.booleans()),
                min_size=1, max_size=20))
def test_turns_in_sequence_never_overlap_and_never_go_negative(
        gaps: list[tuple[float, float, bool]]) -> None:
    """Whatever the arrival and run times, each turn has one trace, it starts no earlier
    than its acceptance nor than the previous turn's end, and no figure is negative."""
    log = Log()
    now = 0.0
    accepted: list[float] = []
    for turn, (arrive, _, _) in enumerate(gaps, start=1):
        now += arrive
        accepted.append(now)
        log.add(now, turn, d.TurnStarted(agent="a", prompt=str(turn), queued=turn - 1))
    clock = accepted[0]
    for turn, (_, run, says) in enumerate(gaps, start=1):
        clock = max(clock, accepted[turn - 1])
        if says:
            log.add(clock + run / 2, turn, d.Text(text="x"))
        clock += run
        log.add(clock, turn, d.TurnEnded(stop_reason="end_turn"))
    log.deltas.sort(key=lambda x: x.ts)  # as published: in time order
    traces = model.turn_traces(log.deltas)
    assert [t.turn for t in traces] == list(range(1, len(gaps) + 1))
    previous_end = 0.0
    for trace in traces:
        assert trace.started >= trace.accepted
        assert trace.started >= previous_end - 1e-9
        assert trace.duration is not None
        assert trace.duration >= -1e-9
        assert trace.ttft is None or trace.ttft >= -1e-9
        assert trace.ended is not None
        previous_end = trace.ended


def test_stats_group_and_count() -> None:
    def trace(turn: int, agent: str, dur: float, outcome: str = "end_turn") -> m.TurnTrace:
        return m.TurnTrace(turn=turn, agent=agent, accepted=100.0 + turn, started=100.0 + turn,
                           first_output=100.5 + turn, ended=100.0 + turn + dur,
                           outcome=outcome, input_tokens=10, output_tokens=5,
                           tool_calls=[m.ToolSpan(tool_call_id="t", title="x")])
    traces = [("c1", trace(1, "qwen", 2.0)), ("c1", trace(2, "qwen", 4.0, "cancelled")),
              ("c2", trace(1, "echo", 1.0, "error")), ("c2", m.TurnTrace(turn=0, agent="old",
                                                                         accepted=1.0))]
    rows = model.stats(traces, lambda chat, t: t.agent, since=50.0)
    assert [r.key for r in rows] == ["qwen", "echo"]
    qwen, echo = rows
    assert (qwen.turns, qwen.cancelled, qwen.failed, qwen.tool_calls) == (2, 1, 0, 2)
    assert (qwen.duration_p50, qwen.ttft_p50) == (3.0, 0.5)
    assert (qwen.input_tokens, qwen.output_tokens) == (20, 10)
    assert (echo.turns, echo.failed) == (1, 1)

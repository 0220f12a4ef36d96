"""The Prometheus figures derived from published deltas (daemon/traces/metrics.py)."""

from __future__ import annotations

import trio
from prometheus_client.parser import text_string_to_metric_families

from daemon.traces.metrics import Gauges, Metrics
from protocol import deltas as d


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_turns_first_output_tools_tokens_and_transitions() -> None:
    mx = Metrics()
    mx.observe("c", 10.0, 1, d.TurnStarted(agent="qwen", prompt="p"))
    mx.observe("c", 10.5, 2, d.TurnStarted(agent="qwen", prompt="q", queued=1))
    mx.observe("c", 11.0, 1, d.Text(text="hi"))
    mx.observe("c", 11.5, 1, d.Text(text="more"))  # only the first counts
    mx.observe("c", 12.0, 1, d.ToolCall(tool_call_id="t", title="x", acp={"kind": "read"}))
    mx.observe("c", 13.0, 1, d.ToolUpdate(tool_call_id="t", status="completed"))
    mx.observe("c", 13.0, 1, d.ToolCall(tool_call_id="u", title="y", acp={"kind": "weird"}))
    mx.observe("c", 13.5, 1, d.Usage(input_tokens=100, output_tokens=7))
    mx.observe("c", 14.0, 0, d.Status(agent="qwen", state="crashed"))
    mx.observe("c", 15.0, 1, d.TurnEnded(error="agent crashed"))
    # The queued turn runs from the first one's end.
    mx.observe("c", 16.0, 2, d.Text(text="x"))
    mx.observe("c", 17.0, 2, d.TurnEnded(stop_reason="end_turn"))
    assert value(mx, "stoker_turns_total", agent="qwen", outcome="error") == 1
    assert value(mx, "stoker_turns_total", agent="qwen", outcome="end_turn") == 1
    assert value(mx, "stoker_turn_duration_seconds_sum", agent="qwen") == 5.0 + 2.0
    assert value(mx, "stoker_turn_first_output_seconds_sum", agent="qwen") == 1.0 + 1.0
    assert value(mx, "stoker_turn_first_output_seconds_count", agent="qwen") == 2
    assert value(mx, "stoker_tool_call_duration_seconds_sum", kind="read",
                 status="completed") == 1.0
    assert value(mx, "stoker_tool_calls_unclosed_total", agent="qwen") == 1
    assert value(mx, "stoker_tokens_total", agent="qwen", direction="input") == 100
    assert value(mx, "stoker_agent_transitions_total", agent="qwen", state="crashed") == 1


def test_a_queued_turn_cancelled_before_it_ran() -> None:
    mx = Metrics()
    mx.observe("c", 1.0, 1, d.TurnStarted(agent="a", prompt="p"))
    mx.observe("c", 1.1, 2, d.TurnStarted(agent="a", prompt="q", queued=1))
    mx.observe("c", 1.2, 2, d.TurnEnded(stop_reason="cancelled"))
    mx.observe("c", 2.0, 1, d.TurnEnded(stop_reason="end_turn"))
    assert value(mx, "stoker_turns_total", agent="a", outcome="cancelled") == 1
    assert value(mx, "stoker_turn_duration_seconds_count", agent="a") == 1
    assert value(mx, "stoker_turn_duration_seconds_sum", agent="a") == 1.0


def test_the_exposition_parses_with_the_scrape_time_figures() -> None:
    mx = Metrics()

    async def rss() -> dict[str, int]:
        return {"qwen": 466 << 20}

    mx.attach(Gauges(actors_by_state=lambda: {"ready": 2, "hibernated": 5},
                     agent_rss_by_agent=rss,
                     hub=lambda: {"published": 42, "lag_events": 1, "live_subscribers": 3},
                     store=lambda: {"pending": 0, "write_errors": 0}))
    mx.observe("c", 1.0, 1, d.TurnStarted(agent="a", prompt="p"))
    mx.observe("c", 2.0, 1, d.TurnEnded(stop_reason="end_turn"))
    text = trio.run(mx.render).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {s.labels["state"]: s.value for s in families["stoker_actors"].samples} == {
        "ready": 2, "hibernated": 5}
    assert families["stoker_agent_rss_bytes"].samples[0].value == 466 << 20
    assert families["stoker_deltas_published"].samples[0].value == 42
    assert families["stoker_turns"].samples[0].labels == {"agent": "a",
                                                           "outcome": "end_turn"}


def test_restarts_counted_by_a_bounded_reason_class() -> None:
    mx = Metrics()
    script = [
        ("crashed", "agent exited with status 3; stderr: boom"),
        ("restarting", "restarting in 0.1s"),
        ("crashed", "agent unresponsive: no answer to a liveness probe for 1.0s"),
        ("restarting", "restarting in 0.2s"),
        ("crashed", "agent protocol error: line exceeds the 65536 byte cap"),
        ("restarting", "restarting in 0.4s"),
        ("crashed", "agent killed by SIGKILL"),
        ("failed", "3 restarts in 1h (limit 3); last failure: agent killed by SIGKILL"),
        ("crashed", "something new and strange /home/me/secret"),
        ("restarting", "restarting in 0.8s"),
    ]
    for state, reason in script:
        mx.observe("c", 1.0, 0, d.Status(agent="a", state=state, reason=reason))
    by_reason = {s.labels["reason"]: s.value
                 for f in text_string_to_metric_families(trio.run(mx.render).decode())
                 if f.name == "stoker_agent_restarts" for s in f.samples
                 if s.name.endswith("_total")}
    # The give-up is not a restart; an unknown text is `other`, never the text itself.
    assert by_reason == {"exit": 1, "unresponsive": 1, "protocol_error": 1, "other": 1}


def test_ttft_comes_from_the_turns_timing_marks() -> None:
    """Queued 2 s, reached the agent at 12, first output at 12.25: the time to first output
    is 0.25 s (what `stoker trace` shows), not the 2.25 s since its `turn_started`."""
    mx = Metrics()
    mx.observe("c", 10.0, 1, d.TurnStarted(agent="a", prompt="p"))
    mx.observe("c", 12.3, 1, d.Text(text="hi"))
    timing = d.TurnTiming(accepted=10.0, started=12.0, first_output=12.25, ended=13.0)
    mx.observe("c", 13.0, 1, d.TurnEnded(stop_reason="end_turn", timing=timing))
    assert value(mx, "stoker_turn_first_output_seconds_sum", agent="a") == 0.25
    assert value(mx, "stoker_turn_first_output_seconds_count", agent="a") == 1
    # A turn with no output observes no TTFT.
    mx.observe("c", 14.0, 2, d.TurnStarted(agent="a", prompt="q"))
    mx.observe("c", 15.0, 2, d.TurnEnded(stop_reason="end_turn",
                                         timing=d.TurnTiming(accepted=14.0, started=14.0)))
    assert value(mx, "stoker_turn_first_output_seconds_count", agent="a") == 1


def test_running_and_queued_turns_and_commit_latency_in_the_scrape() -> None:
    mx = Metrics()

    async def rss() -> dict[str, int]:
        return {}

    mx.attach(Gauges(actors_by_state=lambda: {}, agent_rss_by_agent=rss,
                     hub=lambda: {}, store=lambda: {}))
    mx.observe("c", 1.0, 1, d.TurnStarted(agent="a", prompt="p"))
    mx.observe("c", 1.1, 2, d.TurnStarted(agent="a", prompt="q", queued=1))
    mx.observe("c", 1.2, 3, d.TurnStarted(agent="a", prompt="r", queued=2))
    mx.observe("e", 1.3, 1, d.TurnStarted(agent="a", prompt="s"))
    mx.store_commit_seconds.observe(0.002)
    mx.store_commit_seconds.observe(0.2)
    families = {f.name: f for f in
                text_string_to_metric_families(trio.run(mx.render).decode())}
    assert families["stoker_turns_running"].samples[0].value == 2
    assert families["stoker_turns_queued"].samples[0].value == 2
    commits = {s.name: s.value for s in families["stoker_store_commit_seconds"].samples
               if s.name != "stoker_store_commit_seconds_bucket"}
    assert commits["stoker_store_commit_seconds_count"] == 2
    assert abs(commits["stoker_store_commit_seconds_sum"] - 0.202) < 1e-9

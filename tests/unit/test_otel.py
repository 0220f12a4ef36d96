"""OpenTelemetry turn spans (daemon/traces/otel.py), read with the SDK's in-memory exporter:
a turn span with its tool calls as children, their times from the deltas, their attributes;
and the tap without an endpoint is the metrics' alone."""

from __future__ import annotations

import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from daemon.log import Log
from daemon.traces import otel
from protocol import deltas as d


def spans_of(script: list[tuple[str, float, int, d.DeltaBody]]) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans = otel.TurnSpans(provider)
    for chat, ts, turn, body in script:
        spans.observe(chat, ts, turn, body)
    return exporter


def test_a_turn_span_with_its_tool_calls_as_children() -> None:
    timing = d.TurnTiming(accepted=10.0, started=10.5, first_output=11.0, ended=14.0,
                          tool_calls=2, input_tokens=100, output_tokens=7)
    exporter = spans_of([
        ("c", 10.0, 1, d.TurnStarted(agent="qwen", prompt="p")),
        ("c", 11.0, 1, d.ToolCall(tool_call_id="t1", title="read a", acp={"kind": "read"})),
        ("c", 11.0, 1, d.Text(text="hi")),
        ("c", 12.0, 1, d.ToolUpdate(tool_call_id="t1", status="completed")),
        ("c", 12.5, 1, d.ToolCall(tool_call_id="t2", title="run b", acp={"kind": "execute"})),
        ("c", 13.5, 1, d.ToolUpdate(tool_call_id="t2", status="failed")),
        ("c", 14.0, 1, d.TurnEnded(stop_reason="end_turn", timing=timing)),
    ])
    spans = exporter.get_finished_spans()
    by_name = {s.name: [x for x in spans if x.name == s.name] for s in spans}
    [turn] = by_name["turn"]
    tools = sorted(by_name["tool_call"], key=lambda s: s.start_time or 0)
    assert len(tools) == 2
    assert (turn.start_time, turn.end_time) == (10 * otel.NS, 14 * otel.NS)
    assert turn.attributes is not None
    assert turn.attributes["stoker.chat"] == "c"
    assert turn.attributes["stoker.turn"] == 1
    assert turn.attributes["stoker.agent"] == "qwen"
    assert turn.attributes["stoker.outcome"] == "end_turn"
    assert turn.attributes["stoker.tool_calls"] == 2
    assert turn.attributes["stoker.first_output_seconds"] == 0.5
    assert turn.attributes["stoker.input_tokens"] == 100
    assert turn.status.status_code is StatusCode.UNSET
    assert turn.context is not None
    for tool in tools:
        assert tool.parent is not None
        assert tool.parent.span_id == turn.context.span_id
        assert tool.context is not None
        assert tool.context.trace_id == turn.context.trace_id
    read, run = tools
    assert (read.start_time, read.end_time) == (11 * otel.NS, 12 * otel.NS)
    assert read.attributes is not None
    assert run.attributes is not None
    assert read.attributes["stoker.tool.kind"] == "read"
    assert read.attributes["stoker.tool.title"] == "read a"
    assert read.attributes["stoker.tool.status"] == "completed"
    assert run.attributes["stoker.tool.status"] == "failed"
    assert run.status.status_code is StatusCode.ERROR


def test_a_failed_turn_and_a_tool_left_open() -> None:
    exporter = spans_of([
        ("c", 1.0, 1, d.TurnStarted(agent="a", prompt="p")),
        ("c", 2.0, 1, d.ToolCall(tool_call_id="t", title="x")),
        ("e", 2.5, 1, d.TurnStarted(agent="a", prompt="other chat")),  # not ended: no span
        ("c", 3.0, 1, d.TurnEnded(error="agent crashed: agent exited with status 3")),
    ])
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["tool_call", "turn"]
    turn = next(s for s in spans if s.name == "turn")
    tool = next(s for s in spans if s.name == "tool_call")
    assert turn.status.status_code is StatusCode.ERROR
    assert turn.attributes is not None
    assert turn.attributes["stoker.outcome"] == "error"
    assert tool.attributes is not None
    assert tool.attributes["stoker.tool.status"] == "unclosed"
    assert tool.end_time == 3 * otel.NS


def test_no_endpoint_no_spans() -> None:
    seen: list[int] = []

    def metrics_tap(chat: str, ts: float, turn: int, body: d.DeltaBody) -> None:
        seen.append(turn)

    hub_tap, spans = otel.tap(metrics_tap, "", Log("test"))
    assert hub_tap is metrics_tap
    assert spans is None


def test_an_endpoint_without_the_extra_installed_is_a_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The daemon runs without the `otel` extra: an endpoint configured then only warns."""
    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules,
                        "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)

    def metrics_tap(chat: str, ts: float, turn: int, body: d.DeltaBody) -> None:
        pass

    hub_tap, spans = otel.tap(metrics_tap, "http://127.0.0.1:4318/v1/traces", Log("test"))
    assert hub_tap is metrics_tap
    assert spans is None
    assert "OpenTelemetry is not installed" in caplog.text

"""OpenTelemetry spans, an optional extra (``pip install stoker[otel]``): one span per turn
with a child span per tool call, exported over OTLP/HTTP when `[traces] otlp_endpoint` is
set (off by default).

Like the Prometheus metrics, the spans are derived from the deltas as the hub publishes
them (`TurnSpans.observe`, chained after the metrics' tap only when OTLP is on): a turn's
start and its tool calls are noted, and its spans are made at its end with their recorded
start and end times, so the hot path never touches the SDK. The SDK's batch processor
exports from its own thread; the daemon's stop path flushes and shuts it down (`shutdown`,
after every turn has ended), so the spans of the turns a shutdown ends are exported too.

The daemon runs without the packages installed: `tap` then logs a warning (when an
endpoint is configured) and returns the metrics' tap alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from daemon.log import Log
from protocol import deltas as d

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

Tap = Callable[[str, float, int, d.DeltaBody], None]
FINAL_TOOL_STATES = frozenset({"completed", "failed", "cancelled"})
NS = 1_000_000_000


@dataclass(slots=True)
class _Tool:
    start: float
    kind: str
    title: str
    end: float | None = None
    status: str = ""


@dataclass(slots=True)
class _Turn:
    turn: int
    agent: str
    accepted: float
    tools: dict[str, _Tool] = field(default_factory=dict)


class TurnSpans:
    """Builds the spans of each chat's turns from the published deltas."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("stoker")
        self._turns: dict[tuple[str, int], _Turn] = {}

    def observe(self, chat: str, ts: float, turn: int, body: d.DeltaBody) -> None:
        """One published delta (synchronous; work only at a turn's and a tool's edges)."""
        if isinstance(body, d.Text):
            return  # the most frequent: nothing to note
        if isinstance(body, d.TurnStarted):
            self._turns[(chat, turn)] = _Turn(turn=turn, agent=body.agent, accepted=ts)
            return
        current = self._turns.get((chat, turn))
        if current is None:
            return
        if isinstance(body, d.ToolCall):
            current.tools[body.tool_call_id] = _Tool(
                start=ts, kind=str(body.acp.get("kind") or "other"), title=body.title)
            if body.status in FINAL_TOOL_STATES:
                self._tool_ended(current, body.tool_call_id, body.status, ts)
        elif isinstance(body, d.ToolUpdate):
            if body.status in FINAL_TOOL_STATES:
                self._tool_ended(current, body.tool_call_id, body.status, ts)
        elif isinstance(body, d.TurnEnded):
            del self._turns[(chat, turn)]
            self._emit(chat, current, body, ts)

    @staticmethod
    def _tool_ended(current: _Turn, tool_id: str, status: str, ts: float) -> None:
        tool = current.tools.get(tool_id)
        if tool is not None and tool.end is None:
            tool.end, tool.status = ts, status

    def _emit(self, chat: str, current: _Turn, ended: d.TurnEnded, ts: float) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        timing = ended.timing
        attributes: dict[str, Any] = {
            "stoker.chat": chat, "stoker.turn": current.turn, "stoker.agent": current.agent,
            "stoker.outcome": ended.stop_reason or "error",
            "stoker.tool_calls": len(current.tools)}
        if timing is not None:
            attributes["stoker.restarts"] = timing.restarts
            if timing.started is not None:
                attributes["stoker.started"] = timing.started
            if timing.first_output is not None:
                start = max(timing.accepted, timing.started or timing.accepted)
                attributes["stoker.first_output_seconds"] = timing.first_output - start
            for name in ("input_tokens", "output_tokens", "cached_tokens"):
                value = getattr(timing, name)
                if value is not None:
                    attributes[f"stoker.{name}"] = value
        span = self._tracer.start_span("turn", start_time=int(current.accepted * NS),
                                       attributes=attributes)
        if ended.error is not None:
            span.set_status(Status(StatusCode.ERROR, ended.error))
        context = trace.set_span_in_context(span)
        for tool_id, tool in current.tools.items():
            child = self._tracer.start_span(
                "tool_call", context=context, start_time=int(tool.start * NS),
                attributes={"stoker.tool_call_id": tool_id, "stoker.tool.kind": tool.kind,
                            "stoker.tool.title": tool.title,
                            "stoker.tool.status": tool.status or "unclosed"})
            if tool.status == "failed":
                child.set_status(Status(StatusCode.ERROR, "tool call failed"))
            child.end(end_time=int((tool.end if tool.end is not None else ts) * NS))
        span.end(end_time=int(ts * NS))


def otlp_provider(endpoint: str) -> TracerProvider:
    """A provider exporting in batches to an OTLP/HTTP collector at `endpoint` (the full
    URL, e.g. ``http://127.0.0.1:4318/v1/traces``). Raises ImportError without the extra."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Shut down by the daemon's stop path (`shutdown`, bounded), not by an exit hook.
    provider = TracerProvider(resource=Resource.create({"service.name": "stoker"}),
                              shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def tap(metrics_tap: Tap | None, endpoint: str, log: Log
        ) -> tuple[Tap | None, TurnSpans | None]:
    """The hub's tap: the metrics' alone (None when `[traces] metrics = false`), or followed
    by the turn spans when `endpoint` is set and the OpenTelemetry packages are installed."""
    if not endpoint:
        return metrics_tap, None
    try:
        spans = TurnSpans(otlp_provider(endpoint))
    except ImportError as exc:
        log.warning("traces.otlp_endpoint is set but OpenTelemetry is not installed "
                    "(install the `otel` extra); no spans are exported", error=str(exc))
        return metrics_tap, None
    log.info("exporting turn spans over OTLP", endpoint=endpoint)
    observe = spans.observe

    def spans_only(chat: str, ts: float, turn: int, body: d.DeltaBody) -> None:
        try:
            observe(chat, ts, turn, body)
        except Exception as exc:  # a span problem must never break publishing
            log.error("turn span failed", error=repr(exc))

    if metrics_tap is None:
        return spans_only, spans
    first = metrics_tap

    def both(chat: str, ts: float, turn: int, body: d.DeltaBody) -> None:
        first(chat, ts, turn, body)
        spans_only(chat, ts, turn, body)

    return both, spans


async def shutdown(spans: TurnSpans | None, log: Log, timeout: float = 5.0) -> None:
    """At the daemon's stop: export what the batch processor still holds and stop it (in a
    thread: the exporter's HTTP post blocks), at most `timeout` seconds. The spans of the
    turns the shutdown ended were made when their `turn_ended` was published, before this."""
    if spans is None:
        return
    provider = spans.provider

    def flush_and_stop() -> bool:
        flushed = provider.force_flush(int(timeout * 1000))
        provider.shutdown()
        return bool(flushed)

    try:
        with trio.move_on_after(timeout):
            flushed = await trio.to_thread.run_sync(flush_and_stop, abandon_on_cancel=True)
            if not flushed:
                log.warning("some turn spans were not exported before the daemon stopped")
    except Exception as exc:
        log.error("stopping the span exporter failed", error=repr(exc))

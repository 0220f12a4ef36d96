"""Turn timelines and statistics, derived from a chat's deltas. Pure: no I/O, no clock.

Every delta carries the time the daemon published it, and a turn's deltas tell its whole
story: `turn_started` (accepted, `queued` behind others), the first text, reasoning,
content or tool call (the first output), `tool_call` / `tool_update` (each tool's span),
`usage` (tokens and cost), `status` (crashes and restarts during the turn) and exactly one
`turn_ended`. `turn_traces` folds a chat's deltas, oldest first, into one `TurnTrace` per
turn; `stats` groups traces into percentiles and totals.

A turn runs when the one before it ended: `started` is the later of its acceptance and
the previous turn's end, so the time a turn spent queued is not counted as its duration or
its time to first output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from protocol import deltas as d
from protocol import messages as m

OUTPUT = (d.Text, d.Reasoning, d.Content, d.ToolCall)
"""Bodies that count as the reply's first output (time to first token)."""
FINAL_TOOL_STATES = frozenset({"completed", "failed", "cancelled"})
RESTART_STATES = frozenset({"crashed", "restarting"})


@dataclass(slots=True)
class _Open:
    """A turn being folded."""

    trace: m.TurnTrace
    tools: dict[str, m.ToolSpan] = field(default_factory=dict)


def turn_traces(deltas: Iterable[d.Delta]) -> list[m.TurnTrace]:
    """One trace per turn whose `turn_started` is among `deltas` (oldest first)."""
    traces: dict[int, _Open] = {}
    order: list[int] = []
    previous_end: float | None = None
    current: _Open | None = None
    session_cost = 0.0
    """The session's cumulative cost as last reported (`usage_update` is cumulative)."""
    cost_before: dict[int, float] = {}
    for delta in deltas:
        body = delta.body
        if isinstance(body, d.TurnStarted):
            trace = m.TurnTrace(turn=delta.turn, agent=body.agent, prompt=body.prompt,
                                accepted=delta.ts, queued=body.queued, started=delta.ts)
            traces[delta.turn] = _Open(trace)
            order.append(delta.turn)
            continue
        if isinstance(body, d.Status):
            # Status deltas may carry no turn: they belong to the turn that is running.
            if body.state in RESTART_STATES and current is not None:
                current.trace.restarts += 1
            continue
        record = traces.get(delta.turn)
        if record is None:
            continue
        trace = record.trace
        if current is not record and trace.ended is None:
            # The turn's first delta after its acceptance: it is running now, and it
            # could not have started before the previous turn ended.
            current = record
            cost_before[delta.turn] = session_cost
            if previous_end is not None and previous_end > trace.started:
                trace.started = previous_end
        if isinstance(body, OUTPUT) and trace.first_output is None:
            trace.first_output = delta.ts
        if isinstance(body, d.ToolCall):
            span = m.ToolSpan(tool_call_id=body.tool_call_id, title=body.title,
                              kind=str(body.acp.get("kind", "") or ""), start=delta.ts,
                              status=body.status)
            record.tools[body.tool_call_id] = span
            trace.tool_calls.append(span)
            if body.status in FINAL_TOOL_STATES:
                span.end = delta.ts
        elif isinstance(body, d.ToolUpdate):
            updated = record.tools.get(body.tool_call_id)
            if updated is not None and body.status:
                updated.status = body.status
                if body.status in FINAL_TOOL_STATES:
                    updated.end = delta.ts
            if updated is not None and body.acp.get("title"):
                updated.title = str(body.acp["title"])
        elif isinstance(body, d.Usage):
            _add_tokens(trace, body)
            amount = _cost(body)
            if amount is not None:
                if amount < cost_before[delta.turn]:  # a new session: its count restarted
                    cost_before[delta.turn] = 0.0
                trace.cost = amount - cost_before[delta.turn]
                currency = (body.cost or {}).get("currency")
                trace.cost_currency = str(currency) if currency else trace.cost_currency
                session_cost = amount
        elif isinstance(body, d.TurnEnded):
            trace.ended = delta.ts
            trace.outcome = body.stop_reason or "error"
            trace.error = body.error
            timing = body.timing
            if timing is not None:
                # The actor's own marks: when the prompt reached the agent (not only when
                # its first delta came), and what it counted.
                if timing.started is not None:
                    trace.started = max(trace.accepted, timing.started)
                if timing.first_output is not None:
                    trace.first_output = timing.first_output
                trace.restarts = max(trace.restarts, timing.restarts)
                for name in ("input_tokens", "output_tokens", "cached_tokens"):
                    if getattr(trace, name) is None:
                        setattr(trace, name, getattr(timing, name))
            previous_end = delta.ts
            if current is record:
                current = None
    return [traces[t].trace for t in order]


def _add_tokens(trace: m.TurnTrace, usage: d.Usage) -> None:
    """Token counts come from the prompt's reply (once per turn); several reports add."""
    for name in ("input_tokens", "output_tokens", "cached_tokens"):
        value = getattr(usage, name)
        if value is not None:
            setattr(trace, name, (getattr(trace, name) or 0) + value)


def _cost(usage: d.Usage) -> float | None:
    amount = (usage.cost or {}).get("amount")
    if isinstance(amount, (int, float)) and not isinstance(amount, bool):
        return float(amount)
    return None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q` quantile (0..1) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = math.ceil(pos)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(slots=True)
class _Group:
    row: m.StatsRow
    durations: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)


def stats(traces: Iterable[tuple[str, m.TurnTrace]], key: Callable[[str, m.TurnTrace], str],
          since: float) -> list[m.StatsRow]:
    """Rows per `key(chat, trace)` over the turns accepted at or after `since`, busiest
    first. (Hibernations come from the actors' transitions: see `add_hibernations`.)"""
    groups: dict[str, _Group] = {}
    for chat, trace in traces:
        if trace.accepted < since:
            continue
        name = key(chat, trace)
        group = groups.get(name)
        if group is None:
            group = groups[name] = _Group(m.StatsRow(key=name))
        row = group.row
        row.turns += 1
        if trace.ended is not None:
            if trace.outcome == "error":
                row.failed += 1
            elif trace.outcome == "cancelled":
                row.cancelled += 1
            if trace.duration is not None:
                group.durations.append(trace.duration)
        if trace.ttft is not None:
            group.ttfts.append(trace.ttft)
        row.tool_calls += len(trace.tool_calls)
        row.input_tokens += trace.input_tokens or 0
        row.output_tokens += trace.output_tokens or 0
        row.cost += trace.cost or 0.0
        row.restarts += trace.restarts
    rows = []
    for group in groups.values():
        row = group.row
        row.duration_p50 = percentile(group.durations, 0.5)
        row.duration_p95 = percentile(group.durations, 0.95)
        row.ttft_p50 = percentile(group.ttfts, 0.5)
        row.ttft_p95 = percentile(group.ttfts, 0.95)
        rows.append(row)
    rows.sort(key=lambda r: (-r.turns, r.key))
    return rows

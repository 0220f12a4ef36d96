"""`stoker trace CHAT` and `stoker stats`: where turns spent their time, tokens and failures.

`trace` draws each turn as a waterfall: the turn's bar on a time axis from when it could
run (its acceptance, or the end of the turn before it), the first output marked `^`, and
one bar per tool call with its final status and duration. `stats` prints one row per agent,
project or day: turns, failures, cancels, p50/p95 duration and time to first output,
tool calls, tokens, cost, restarts and hibernations.
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import UTC, datetime

from daemon.cli.common import UsageError, add_common, chat_argument, print_table, show
from protocol import messages as m

WIDTH = 48
"""Columns of a waterfall's time axis."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "show where a chat's turns spent their time (tool calls on a time axis)"
    p = sub.add_parser("trace", help=text, description=text)
    add_common(p)
    chat_argument(p)
    p.add_argument("--turn", type=int, help="one turn (default: the last few)")
    p.add_argument("--last", type=int, default=5, help="how many recent turns (default 5)")
    p.set_defaults(handler=cmd_trace)

    text = "turn counts, durations, time to first output, tokens and failures"
    p = sub.add_parser("stats", help=text, description=text)
    add_common(p)
    p.add_argument("--by", choices=["agent", "project", "day"], default="agent",
                   help="how to group (default: agent)")
    p.add_argument("--since", default="7d",
                   help="a duration back from now (30m, 24h, 7d) or a date (2026-12-01); "
                        "default 7d")
    p.set_defaults(handler=cmd_stats)


def parse_since(text: str, now: float) -> float:
    """`30m`, `24h`, `7d`, `2w` back from `now`, or an ISO date/time (UTC unless it says)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[match[2]]
        return max(0.0, now - float(match[1]) * unit)  # at most: since the epoch
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since {text!r}: give a duration (30m, 24h, 7d) or a date "
                         "(2026-12-01)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m"


def _bar(start: float, end: float, origin: float, span: float) -> str:
    left = int((start - origin) / span * WIDTH)
    right = max(left + 1, round((end - origin) / span * WIDTH))
    left = min(max(left, 0), WIDTH - 1)
    right = min(right, WIDTH)
    return " " * left + "#" * (right - left) + " " * (WIDTH - right)


def waterfall(trace: m.TurnTrace, now: float) -> list[str]:
    """A turn as lines of text (no trailing blanks)."""
    end = trace.ended if trace.ended is not None else now
    origin = trace.started
    span = max(end - origin, 1e-6)
    outcome = trace.outcome or "running"
    if trace.error:
        outcome = f"error: {trace.error.splitlines()[0][:80]}"
    prompt = trace.prompt.replace("\n", " ")
    if len(prompt) > 60:
        prompt = prompt[:57] + "..."
    took = _s(end - origin)
    head = f"turn {trace.turn}  {trace.agent}  {took}  {outcome}  \"{prompt}\""
    waited = trace.started - trace.accepted
    facts = [f"first output {_s(trace.ttft)}"]
    if waited > 0.0005:
        facts.append(f"queued {_s(waited)}")
    if trace.input_tokens is not None or trace.output_tokens is not None:
        facts.append(f"tokens {trace.input_tokens or 0} in / {trace.output_tokens or 0} out"
                     + (f" ({trace.cached_tokens} cached)" if trace.cached_tokens else ""))
    if trace.cost is not None:
        facts.append(f"cost {trace.cost:.4g} {trace.cost_currency or ''}".rstrip())
    if trace.restarts:
        facts.append(f"{trace.restarts} restart(s)")
    lines = [head, "  " + ", ".join(facts)]
    axis = f"0{_s(span).rjust(WIDTH - 1)}"
    lines.append(f"  {'':24}  {axis}")
    lines.append(f"  {'turn':24} |{_bar(origin, end, origin, span)}|")
    if trace.first_output is not None:
        pos = min(int((trace.first_output - origin) / span * WIDTH), WIDTH - 1)
        lines.append(f"  {'first output':24} |{' ' * pos}^{' ' * (WIDTH - pos - 1)}|")
    for tool in trace.tool_calls:
        tool_end = tool.end if tool.end is not None else end
        title = tool.title.replace("\n", " ")
        title = title if len(title) <= 24 else title[:21] + "..."
        status = tool.status if tool.end is not None else f"{tool.status}, never closed"
        lines.append(f"  {title:24} |{_bar(tool.start, tool_end, origin, span)}| "
                     f"{_s(tool_end - tool.start)} {status}")
    return [line.rstrip() for line in lines]


def cmd_trace(args: argparse.Namespace) -> int:
    if args.last < 1:
        raise UsageError("--last must be at least 1")

    def render(result: m.TraceResult) -> None:
        if not result.turns:
            print(f"chat {result.chat} has no turns in its log")
            return
        if result.truncated:
            print("(older turns are no longer in the log: see channels.retain_deltas)")
        now = time.time()
        for i, trace in enumerate(result.turns):
            if i:
                print()
            print("\n".join(waterfall(trace, now)))

    return show(args, m.Trace(id=0, chat=args.chat, turn=args.turn, last=args.last), render)


def stats_rows(result: m.StatsResult) -> list[list[str]]:
    rows = [[result.by.upper(), "TURNS", "FAILED", "CANCELLED", "P50", "P95", "TTFT P50",
             "TTFT P95", "TOOLS", "TOKENS IN", "TOKENS OUT", "COST", "RESTARTS",
             "HIBERNATED"]]
    for r in result.rows:
        rows.append([r.key or "-", str(r.turns), str(r.failed), str(r.cancelled),
                     _s(r.duration_p50), _s(r.duration_p95), _s(r.ttft_p50), _s(r.ttft_p95),
                     str(r.tool_calls), str(r.input_tokens), str(r.output_tokens),
                     f"{r.cost:.4g}" if r.cost else "-", str(r.restarts),
                     str(r.hibernations)])
    return rows


def cmd_stats(args: argparse.Namespace) -> int:
    since = parse_since(args.since, time.time())

    def render(result: m.StatsResult) -> None:
        start = datetime.fromtimestamp(result.since, UTC).strftime("%Y-%m-%d %H:%M UTC")
        if not result.rows:
            print(f"no turns since {start}")
            return
        print(f"since {start}, {result.chats} chat(s)")
        print_table(stats_rows(result))

    return show(args, m.Stats(id=0, by=args.by, since=since), render)

"""Agent stderr into the daemon's log at a bounded rate (daemon/actors/backend/stderr.py):
the limiter's accounting as a property, and the drain over a memory stream."""

from __future__ import annotations

import collections
import math
from typing import Any

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from daemon.actors.backend.stderr import REPORT_EVERY, StderrLimiter, drain_stderr


@given(st.floats(0.5, 100), st.integers(1, 500),
       st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.integers(0, 10_000)),
                max_size=40))
def test_every_line_is_logged_or_counted_and_the_rate_holds(
        rate: float, burst: int, reads: list[tuple[float, int]]) -> None:
    limiter = StderrLimiter(rate=rate, burst=burst)
    now = 0.0
    logged = reported = offered = 0
    for gap, count in reads:
        now += gap
        offered += count
        logged += limiter.admit(now, count)
        due = limiter.report_due()
        if due is not None and now >= due:
            reported += limiter.report(now)
    reported += limiter.report(now)
    assert logged + reported == offered
    assert limiter.dropped_total == reported
    # A token bucket: never more than the burst plus what the rate refilled.
    assert logged <= burst + math.floor(rate * now) + 1


def test_no_limit_at_rate_zero() -> None:
    limiter = StderrLimiter(rate=0, burst=1)
    assert limiter.admit(0.0, 1_000_000) == 1_000_000
    assert limiter.report_due() is None


def test_drops_are_reported_at_most_once_an_interval() -> None:
    limiter = StderrLimiter(rate=10, burst=5)
    assert limiter.admit(0.0, 8) == 5
    assert limiter.report_due() == REPORT_EVERY
    assert limiter.admit(0.5, 10) == 5
    assert limiter.report(1.0) == 8
    assert limiter.report_due() is None


class _Records:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))


async def test_drain_keeps_the_tail_and_accounts_for_a_flood(
        autojump_clock: trio.abc.Clock) -> None:
    send, receive = trio.testing.memory_stream_pair()
    records = _Records()
    tail: collections.deque[str] = collections.deque(maxlen=3)
    limiter = StderrLimiter(rate=10, burst=50)
    total = 100_000
    flood = b"".join(b"line %d\n" % i for i in range(total)) + b"last words"

    async def agent() -> None:
        for start in range(0, len(flood), 100_000):
            await send.send_all(flood[start:start + 100_000])
            await trio.sleep(0.3)
        await send.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent)
        await drain_stderr(receive, records, tail, limiter)
    lines = [f["line"] for e, f in records.events if e == "agent stderr"]
    dropped = [f["dropped"] for e, f in records.events if e == "agent stderr rate-limited"]
    assert len(lines) + sum(int(str(x)) for x in dropped) == total + 1
    assert len(lines) < 200
    assert lines[:2] == ["line 0", "line 1"]
    assert list(tail) == ["line 99998", "line 99999", "last words"]


"""Another client's turns, timed before and during an attack.

Issue 16 asks that while a hostile agent or client does its worst, *another* client's turns
keep working within twice their normal latency. `Bystander` owns its own connection and
echo chat; `sample()` times a few of its turns (prompt sent -> `turn_ended` received) and
returns the median. A test takes a baseline on the same daemon just before the attack and
a second sample during it, then `assert_within_twice(baseline, during)`.

The bound allows `NOISE` on top of twice the baseline: an echo turn takes a few
milliseconds, and on a loaded 2-core machine (the CI's) one scheduler hiccup is tens of
them; the defects this guards against cost seconds (a stalled store, a starved thread
pool) or fail outright.
"""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from daemon.client import Client
from tests.support.harness import DaemonProcess, open_chat, turn

NOISE = 0.1
"""Seconds of scheduling noise allowed on top of twice the baseline."""


class Bystander:
    def __init__(self, client: Client, chat: str) -> None:
        self.client = client
        self.chat = chat
        self.turns = 0

    async def sample(self, count: int = 5, timeout: float = 60.0) -> float:
        """Median seconds of `count` turns (each must answer correctly)."""
        times = []
        for _ in range(count):
            self.turns += 1
            text = f"bystander {self.turns}"
            started = trio.current_time()
            result = await turn(self.client, self.chat, text, timeout=timeout)
            times.append(trio.current_time() - started)
            assert result.text == text, result.text
            assert result.ended.stop_reason == "end_turn", result.ended
        return statistics.median(times)


@asynccontextmanager
async def bystander(daemon: DaemonProcess, name: str = "bystander"
                    ) -> AsyncIterator[Bystander]:
    """A client of its own with a warm echo chat (its first turn is not timed)."""
    async with daemon.client(name) as client:
        info = await open_chat(client, name, cwd=daemon.work)
        by = Bystander(client, info.chat)
        await by.sample(1)
        yield by


def assert_within_twice(baseline: float, during: float) -> None:
    limit = 2 * baseline + NOISE
    assert during <= limit, (f"another client's turns slowed from {baseline * 1000:.1f} ms "
                             f"to {during * 1000:.1f} ms (limit {limit * 1000:.1f} ms)")

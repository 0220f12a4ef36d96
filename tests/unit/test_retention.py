"""Retention of what grows with use: state transitions are pruned by age (issue 22: two rows
per turn, never pruned). Real hub over a real SQLite store."""

from __future__ import annotations

from pathlib import Path

from daemon.channels.hub import Hub, new_epoch
from daemon.store.sqlite import Store

NOW = 1_000_000.0


async def test_prune_deletes_transitions_older_than_the_retention(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        hub = Hub(store, ring_size=16, clock=lambda: NOW)
        hub.open_channel("c", new_epoch())
        store.executemany(
            "INSERT INTO transitions(chat, agent, ts, state, reason, generation) "
            "VALUES ('c', 'echo', ?, 'ready', '', 1)",
            [(NOW - age,) for age in (10.0, 3599.0, 3601.0, 86400.0)])
        await hub.prune(retain_deltas=100, retain_age=1e9, retain_transitions=3600.0)
        rows = await store.query("SELECT ts FROM transitions ORDER BY ts")
        assert [NOW - ts for (ts,) in rows] == [3599.0, 10.0]
        # Without a transitions retention, the pass leaves them alone.
        await hub.prune(retain_deltas=100, retain_age=1e9)
        assert len(await store.query("SELECT ts FROM transitions")) == 2

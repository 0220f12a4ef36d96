"""Issue 15 (supervision correctness) and issue 16's stderr flood, against the real daemon
with real echo-agent processes: slow is not hung, an agent's over-long line is its own
protocol error, mode and model survive a fresh session, turn timeouts, transient-error
retries, and an agent flooding stderr."""

from __future__ import annotations

import json
from typing import Any

import trio

from protocol import deltas as d
from tests.support.harness import (
    DaemonFactory,
    agent_pid,
    open_chat,
    replay,
    turn,
)

FAST = {"sweep_interval": "100ms", "restart_backoff": "100ms", "restart_backoff_max": "1s"}


def lifecycle(**keys: Any) -> str:
    """A config with a fast `[lifecycle]` (overridable) for tests."""
    merged = {**FAST, **keys}
    return "[lifecycle]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in merged.items())


async def every_turn_ended_once(daemon_client: Any, chat: str) -> list[d.Delta]:
    deltas = await replay(daemon_client, chat)
    started = [x.turn for x in deltas if isinstance(x.body, d.TurnStarted)]
    ended = [x.turn for x in deltas if isinstance(x.body, d.TurnEnded)]
    assert sorted(started) == sorted(ended), (started, ended)
    assert len(ended) == len(set(ended)), f"a turn ended twice: {ended}"
    return deltas


def restarts(deltas: list[d.Delta]) -> list[str]:
    return [x.body.state for x in deltas if isinstance(x.body, d.Status)
            and x.body.state in ("crashed", "restarting")]


async def test_a_slow_turn_after_an_idle_gap_is_not_killed_as_hung(
        daemon_factory: DaemonFactory) -> None:
    """The issue's reproduction: silence measured from the agent's last message (before the
    idle gap) killed the next turn at its first check, without a single probe."""
    daemon = daemon_factory(config=lifecycle(probe_interval="1s", stale_grace="6s",
                                             idle_ttl="1h"))
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "gap", cwd=daemon.work)
        assert (await turn(client, info.chat, "hello")).text == "hello"
        pid = await agent_pid(client, info.chat)
        await trio.sleep(7)  # the idle gap is the scenario: longer than the stale grace
        slow = await turn(client, info.chat, "/slow 3000", timeout=30)
        assert slow.ended.error is None, slow.ended.error
        assert slow.ended.stop_reason == "end_turn"
        assert slow.text == "slow 3000"
        assert await agent_pid(client, info.chat) == pid
        assert restarts(await every_turn_ended_once(client, info.chat)) == []
        assert "unresponsive" not in daemon.log_text()


async def test_an_over_long_agent_line_is_that_agents_protocol_error(
        daemon_factory: DaemonFactory) -> None:
    """`/bigline` past `max_line`: the turn ends once naming the agent's protocol error, the
    agent is restarted and the chat goes on; the daemon reports no internal error."""
    daemon = daemon_factory(config='[daemon]\nmax_line = "64KiB"\n' + lifecycle())
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "big", cwd=daemon.work)
        pid = await agent_pid(client, info.chat)
        fits = await turn(client, info.chat, "/bigline 32")
        assert len(fits.text) == 32 * 1024
        big = await turn(client, info.chat, "/bigline 100", timeout=30)
        error = big.ended.error
        assert error is not None
        assert "agent protocol error" in error
        assert "exceeds the 65536 byte cap" in error
        assert "internal error" not in error
        after = await turn(client, info.chat, "/pid")
        assert after.ended.stop_reason == "end_turn"
        assert int(after.text) != pid
        deltas = await every_turn_ended_once(client, info.chat)
        assert restarts(deltas) == ["crashed", "restarting"]
        log = daemon.log_text()
        assert "backend actor failed" not in log
        assert "internal error" not in log

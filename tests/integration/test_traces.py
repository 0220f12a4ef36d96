"""Issue 19: `trace` and `stats` against the real daemon and echo agents: turns with a tool
call, usage and a queued turn, folded from the real delta log, through the protocol and
through the real `stoker trace` / `stoker stats` commands."""

from __future__ import annotations

import json

import pytest

from daemon.client import RequestFailed
from protocol import messages as m
from tests.support.harness import (
    DaemonFactory,
    collect_turn,
    open_chat,
    subscribe,
    turn,
    wait_state,
)


async def test_trace_and_stats_of_real_turns(daemon_factory: DaemonFactory) -> None:
    # One warm agent at a time: opening the second chat hibernates the first.
    daemon = daemon_factory(config="[lifecycle]\nmax_warm = 1\n")
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "traced", cwd=daemon.work)
        tool = await turn(client, info.chat, "/tool")
        assert tool.text.endswith("tool done")
        await turn(client, info.chat, "/usage")
        # Two prompts at once: the second waits for the first.
        await subscribe(client, info.chat)
        slow = await client.request(m.Prompt(id=0, chat=info.chat, text="/sleep 300"))
        quick = await client.request(m.Prompt(id=0, chat=info.chat, text="after"))
        await collect_turn(client, info.chat, slow.turn)
        await collect_turn(client, info.chat, quick.turn)

        result: m.TraceResult = await client.request(m.Trace(id=0, chat=info.chat))
        assert [t.turn for t in result.turns] == [1, 2, 3, 4]
        first, usage, sleeper, queued = result.turns
        assert all(t.outcome == "end_turn" and t.ended is not None for t in result.turns)
        [span] = first.tool_calls
        assert (span.title, span.status) == ("echo tool", "completed")
        assert span.end is not None
        assert first.started <= span.start <= span.end
        assert first.ttft is not None
        assert first.duration is not None
        assert 0 <= first.ttft <= first.duration
        assert usage.cost is not None
        assert usage.cost_currency == "USD"
        # The queued turn ran after the sleeper: its wait is not its duration.
        assert queued.queued == 1
        assert sleeper.ended is not None
        assert queued.started >= sleeper.ended
        assert queued.accepted < sleeper.ended
        assert sleeper.duration is not None
        assert sleeper.duration >= 0.3
        assert queued.duration is not None
        assert queued.duration < sleeper.duration

        one: m.TraceResult = await client.request(m.Trace(id=0, chat=info.chat, turn=1))
        assert [t.turn for t in one.turns] == [1]
        with pytest.raises(RequestFailed) as missing_turn:
            await client.request(m.Trace(id=0, chat=info.chat, turn=99))
        assert missing_turn.value.code == "bad_request"
        assert "holds turns 1..4" in str(missing_turn.value)
        with pytest.raises(RequestFailed) as unknown:
            await client.request(m.Trace(id=0, chat="nosuchchat"))
        assert unknown.value.code == "unknown_chat"

        # Another chat takes the only warm slot: the first one hibernates.
        other = await open_chat(client, "other", cwd=daemon.work)
        await turn(client, other.chat, "hello")
        await wait_state(client, info.chat, "hibernated")

    # The commands, as a user runs them.
    missing = daemon.cli("trace", info.chat, "--turn", "99")
    assert missing.returncode == 1
    assert "has no turn 99" in missing.stderr
    text = daemon.cli("trace", info.chat, "--turn", "1")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("turn 1  echo  "), text.stdout
    assert "end_turn" in lines[0], text.stdout
    assert any(line.strip().startswith("echo tool") and "completed" in line
               for line in lines), text.stdout
    assert any(line.strip().startswith("first output") and "^" in line
               for line in lines), text.stdout

    as_json = daemon.cli("trace", info.chat, "--json")
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert [t["turn"] for t in doc["turns"]] == [1, 2, 3, 4]
    assert doc["turns"][0]["tool_calls"][0]["status"] == "completed"

    stats = daemon.cli("stats", "--json")
    assert stats.returncode == 0, stats.stderr
    rows = {r["key"]: r for r in json.loads(stats.stdout)["rows"]}
    echo = rows["echo"]
    assert echo["turns"] == 5
    assert echo["tool_calls"] == 1
    assert echo["hibernations"] >= 1
    assert echo["ttft_p50"] is not None
    assert echo["duration_p95"] >= echo["duration_p50"]

    by_day = daemon.cli("stats", "--by", "day", "--since", "1h")
    assert by_day.returncode == 0, by_day.stderr
    assert "TTFT P50" in by_day.stdout
    bad = daemon.cli("stats", "--since", "yesterday-ish")
    assert bad.returncode == 2
    assert "--since" in bad.stderr

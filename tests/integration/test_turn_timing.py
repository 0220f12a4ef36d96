"""Issue 19: every `turn_ended` carries its timing (accepted, started, first output, ended,
tool calls, tokens, restarts), and a turn that ends with a tool call still open closes it
with a final `tool_update`, so no client shows a tool that never finishes. Against the real
daemon and the echo agent."""

from __future__ import annotations

from protocol import deltas as d
from protocol import messages as m
from tests.support.harness import (
    DaemonFactory,
    DaemonProcess,
    collect_turn,
    open_chat,
    replay,
    subscribe,
    turn,
    wait_for_body,
)


async def test_turn_ended_carries_its_timing(daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        info = await open_chat(client, "timed", cwd=daemon.work)
        result = await turn(client, info.chat, "/tool")
        timing = result.ended.timing
        assert timing is not None
        assert timing.tool_calls == 1
        assert timing.started is not None
        assert timing.first_output is not None
        # Each mark no earlier than the one before.
        assert timing.accepted <= timing.started <= timing.first_output <= timing.ended
        # The first output is the tool call, the turn's first delta from the agent: its
        # mark is taken as it is published, just before the hub stamps it.
        tool = next(x for x in result.deltas if isinstance(x.body, d.ToolCall))
        assert timing.first_output <= tool.ts
        assert timing.restarts == 0
        # The echo agent's prompt reply counts the prompt's words and its chunks.
        assert timing.input_tokens == 1
        assert timing.output_tokens == 1


async def test_a_cancelled_turn_closes_its_open_tool_calls(daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        info = await open_chat(client, "open-tool", cwd=daemon.work)
        await subscribe(client, info.chat)
        accepted = await client.request(m.Prompt(id=0, chat=info.chat, text="/permission"))
        asked = await wait_for_body(client, d.PermissionRequest)
        assert isinstance(asked, d.PermissionRequest)
        await client.request(m.Cancel(id=0, chat=info.chat))
        await collect_turn(client, info.chat, accepted.turn)
        # The whole turn, from the log (the live events before the request were read).
        deltas = [x for x in await replay(client, info.chat) if x.turn == accepted.turn]
        bodies = [x.body for x in deltas]
        assert isinstance(bodies[-1], d.TurnEnded)
        assert bodies[-1].stop_reason == "cancelled"
        [call] = [b for b in bodies if isinstance(b, d.ToolCall)]
        updates = [b for b in bodies
                   if isinstance(b, d.ToolUpdate) and b.tool_call_id == call.tool_call_id]
        # Closed once, by the daemon, just before the turn ended.
        assert [u.status for u in updates] == ["cancelled"]
        assert bodies[-2] == updates[-1]
        timing = bodies[-1].timing
        assert timing is not None
        assert timing.tool_calls == 1


def closed_tool_calls(deltas: list[d.Delta], turn_no: int) -> list[str]:
    """The turn's tool calls' update statuses (one list per call, flattened), after checking
    the turn ended once, last, with the daemon's closing updates just before its end."""
    bodies = [x.body for x in deltas if x.turn == turn_no]
    ended = [b for b in bodies if isinstance(b, d.TurnEnded)]
    assert len(ended) == 1
    assert bodies[-1] == ended[0]
    calls = [b for b in bodies if isinstance(b, d.ToolCall)]
    assert calls
    statuses: list[str] = []
    for call in calls:
        updates = [b for b in bodies
                   if isinstance(b, d.ToolUpdate) and b.tool_call_id == call.tool_call_id]
        assert len(updates) == 1, updates
        assert bodies.index(updates[0]) >= len(bodies) - 1 - len(calls)
        statuses.append(str(updates[0].status))
    timing = ended[0].timing
    assert timing is not None
    assert timing.tool_calls == len(calls)
    return statuses


FAST_LIFECYCLE = ('[lifecycle]\nsweep_interval = "100ms"\nrestart_backoff = "100ms"\n'
                  'restart_backoff_max = "1s"\n')


async def test_a_crashed_turn_closes_its_open_tool_calls(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=FAST_LIFECYCLE)
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "crash-tool", cwd=daemon.work)
        crashed = await turn(client, info.chat, "/tool-open /crash", timeout=20)
        assert crashed.ended.error is not None
        # The chat goes on with a fresh agent.
        assert (await turn(client, info.chat, "after", timeout=20)).text == "after"
        deltas = await replay(client, info.chat)
        assert closed_tool_calls(deltas, crashed.turn) == ["failed"]


async def test_a_stale_killed_turn_closes_its_open_tool_calls(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=FAST_LIFECYCLE
                            + 'probe_interval = "300ms"\nstale_grace = "1s"\n')
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "hang-tool", cwd=daemon.work)
        hung = await turn(client, info.chat, "/tool-open /hang", timeout=20)
        assert hung.ended.error is not None
        assert "unresponsive" in hung.ended.error
        assert (await turn(client, info.chat, "after", timeout=20)).text == "after"
        deltas = await replay(client, info.chat)
        assert closed_tool_calls(deltas, hung.turn) == ["failed"]


async def test_a_timed_out_turn_closes_its_open_tool_calls(
        daemon_factory: DaemonFactory) -> None:
    """`lifecycle.turn_timeout` cancels the turn, which ends with an error naming the
    timeout: its open tool call ends `failed` (only a turn ending `cancelled` closes its
    tools as `cancelled`)."""
    daemon = daemon_factory(config=FAST_LIFECYCLE + 'turn_timeout = "1s"\n')
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "timeout-tool", cwd=daemon.work)
        timed_out = await turn(client, info.chat, "/tool-open /sleep 60000", timeout=20)
        assert timed_out.ended.error is not None
        assert "turn timed out" in timed_out.ended.error
        deltas = await replay(client, info.chat)
        assert closed_tool_calls(deltas, timed_out.turn) == ["failed"]


async def test_a_turn_ended_by_a_shutdown_closes_its_open_tool_calls(
        daemon_factory: DaemonFactory) -> None:
    """The daemon stops mid-turn: the log it leaves ends the turn with the tool closed."""
    daemon = daemon_factory(config=FAST_LIFECYCLE)
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "shutdown-tool", cwd=daemon.work)
        await subscribe(client, info.chat)
        accepted = await client.request(m.Prompt(id=0, chat=info.chat,
                                                 text="/tool-open /sleep 60000"))
        await wait_for_body(client, d.ToolCall)
    assert daemon.stop() == 0
    daemon.start()
    async with daemon.client() as client:
        deltas = await replay(client, info.chat)
    # The shutdown ends the turn with an error (not a cancel): the tool call failed.
    assert closed_tool_calls(deltas, accepted.turn) == ["failed"]

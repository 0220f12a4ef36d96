"""The backend actor driven in-process: a fake agent over memory streams, the clock virtual
(`autojump_clock`), so backoffs, probes and grace periods are exact and take no real time."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import trio
import trio.testing

from daemon.actors import mailbox as mb
from daemon.actors.lifecycle import State
from protocol import deltas as d
from tests.support.fake_executor import Knobs, prompt, rig

CHAT = "c1"


def assert_each_turn_ended_once(ends: dict[int, list[d.TurnEnded]], turns: int) -> None:
    assert sorted(ends) == list(range(1, turns + 1))
    assert all(len(found) == 1 for found in ends.values()), ends


async def test_prompt_starts_the_agent_and_the_turn_ends_once(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with rig(tmp_path) as r:
        ref = r.actor(CHAT)
        ref.send(prompt(1))
        ended = await r.hub.wait_turn_end(CHAT, 1)
        assert ended.stop_reason == "end_turn"
        assert r.hub.text(CHAT, 1) == "ok"
        await r.hub.wait_state(CHAT, State.READY, count=2)
        assert r.hub.states(CHAT) == ["starting", "ready", "busy", "ready"]
        facts = ref.facts()
        assert (facts.state, facts.busy, facts.queued) == (State.READY, False, 0)
        assert ref.snapshot().turns == 1
        assert_each_turn_ended_once(r.hub.turn_ends(CHAT), 1)


async def test_a_prompt_to_a_warm_idle_actor_is_taken_in_the_senders_task(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """`BackendActor.take_now`: the actor's loop waits on an empty mailbox and its agent is
    ready, so the sender does what the loop would do next, before it yields (the agent
    gets the prompt a scheduler trip sooner). A prompt to a busy actor goes through the
    mailbox as before and runs after; each turn ends once, in order."""
    async with rig(tmp_path) as r:
        ref = r.actor(CHAT)
        ref.send(prompt(1))
        await r.hub.wait_turn_end(CHAT, 1)
        await r.hub.wait_state(CHAT, State.READY, count=2)
        await trio.testing.wait_all_tasks_blocked()  # the loop waits on its mailbox
        ref.send(prompt(2))
        facts = ref.facts()
        assert (facts.state, facts.busy, facts.queued) == (State.BUSY, True, 0)
        ref.send(prompt(3))
        assert ref.facts().queued == 0  # in the mailbox: the loop takes it in its turn
        assert (await r.hub.wait_turn_end(CHAT, 2)).stop_reason == "end_turn"
        assert (await r.hub.wait_turn_end(CHAT, 3)).stop_reason == "end_turn"
        await r.hub.wait_state(CHAT, State.READY, count=4)
        assert r.hub.states(CHAT)[-4:] == ["busy", "ready", "busy", "ready"]
        assert [r.hub.text(CHAT, turn) for turn in (1, 2, 3)] == ["ok", "ok", "ok"]
        assert_each_turn_ended_once(r.hub.turn_ends(CHAT), 3)


async def _break_deciding_then_prompt(tmp_path: Path,
                                     ends: dict[int, list[d.TurnEnded]]) -> None:
    async with rig(tmp_path) as r:
        ref = r.actor(CHAT)
        ref.send(prompt(1))
        await r.hub.wait_turn_end(CHAT, 1)
        await r.hub.wait_state(CHAT, State.READY, count=2)
        await trio.testing.wait_all_tasks_blocked()
        actor = ref._actor

        def broken() -> None:
            raise RuntimeError("a bug deciding what next")

        actor._advance = broken  # type: ignore[method-assign]
        ref.send(prompt(2))  # does not raise here
        try:
            await r.hub.wait_turn_end(CHAT, 2)
        finally:
            ends.update(r.hub.turn_ends(CHAT))
        await trio.sleep_forever()  # the actor's failure ends the rig


async def test_a_failure_deciding_in_the_senders_task_fails_the_actor_as_in_its_loop(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """A bug in what `take_now` runs for the loop (deciding what next) is not the sender's:
    the prompt is accepted, and the actor's loop raises it, failing the actor as a bug in
    the loop itself does (its turns end once, with the internal error)."""
    ends: dict[int, list[d.TurnEnded]] = {}
    with pytest.raises(BaseExceptionGroup) as raised:
        await _break_deciding_then_prompt(tmp_path, ends)
    assert "a bug deciding what next" in repr(raised.value.exceptions)
    assert_each_turn_ended_once(ends, 2)
    assert "internal error" in (ends[2][0].error or "")


async def test_slow_agent_that_answers_probes_is_not_killed(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    knobs = Knobs(prompt_delay=300.0)
    async with rig(tmp_path, knobs, probe_interval=10.0, stale_grace=30.0) as r:
        ref = r.actor(CHAT)
        start = trio.current_time()
        ref.send(prompt(1))
        ended = await r.hub.wait_turn_end(CHAT, 1)
        assert ended.stop_reason == "end_turn"
        assert trio.current_time() - start == pytest.approx(300.0, abs=1.0)
        assert len(r.executor.spawned) == 1
        assert r.executor.methods.count("_stoker/ping") >= 10
        assert "crashed" not in r.hub.states(CHAT)


async def test_hung_agent_is_cancelled_and_restarted_after_the_stale_grace(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    knobs = Knobs(hang_on_prompt=True)
    async with rig(tmp_path, knobs, probe_interval=5.0, stale_grace=20.0,
                   restart_backoff=1.0) as r:
        ref = r.actor(CHAT)
        start = trio.current_time()
        ref.send(prompt(1))
        ended = await r.hub.wait_turn_end(CHAT, 1)
        assert ended.error is not None
        assert "unresponsive" in ended.error
        # One probe interval (the first probe), the grace, then at most 2 s for the cancel.
        assert 25.0 <= trio.current_time() - start <= 27.0
        assert "session/cancel" in r.executor.methods
        knobs.hang_on_prompt = False
        await r.hub.wait_state(CHAT, State.READY, count=2)
        states = r.hub.states(CHAT)
        assert states[states.index("crashed"):] == ["crashed", "restarting", "starting", "ready"]
        assert not r.executor.spawned[0].alive
        ref.send(prompt(2))
        assert (await r.hub.wait_turn_end(CHAT, 2)).stop_reason == "end_turn"
        assert ref.snapshot().generation == 2


async def test_restart_backoff_doubles_then_intensity_limit_fails_the_actor(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    knobs = Knobs(crash_on_start=True)
    async with rig(tmp_path, knobs, restart_max=3, restart_window=60.0, restart_backoff=1.0,
                   restart_backoff_max=30.0) as r:
        ref = r.actor(CHAT)
        ref.send(prompt(1))
        ended = await r.hub.wait_turn_end(CHAT, 1)
        assert ended.error is not None
        assert "failed to start" in ended.error
        await r.hub.wait_state(CHAT, State.FAILED)
        restarting = [s.reason for s in r.hub.bodies(CHAT, d.Status) if s.state == "restarting"]
        assert restarting == ["restarting in 1s", "restarting in 2s", "restarting in 4s"]
        times = r.executor.spawn_times
        assert len(times) == 4
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps == pytest.approx([1.0, 2.0, 4.0], abs=0.01)
        failed = [s.reason for s in r.hub.bodies(CHAT, d.Status) if s.state == "failed"]
        assert "restarted 3 times" in failed[0]
        # A later explicit prompt tries again, with a fresh restart budget.
        knobs.crash_on_start = False
        ref.send(prompt(2))
        assert (await r.hub.wait_turn_end(CHAT, 2)).stop_reason == "end_turn"
        assert_each_turn_ended_once(r.hub.turn_ends(CHAT), 2)


async def test_spawn_failure_fails_at_once_without_restarts(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with rig(tmp_path, Knobs(spawn_error="no such binary")) as r:
        ref = r.actor(CHAT)
        ref.send(prompt(1))
        ref.send(prompt(2))
        ends = [await r.hub.wait_turn_end(CHAT, t) for t in (1, 2)]
        assert all(e.error is not None and "cannot start" in e.error for e in ends)
        await r.hub.wait_state(CHAT, State.FAILED)
        assert "restarting" not in r.hub.states(CHAT)


@pytest.mark.parametrize("resume", [True, False])
async def test_hibernate_then_prompt_wakes_and_resumes_the_session(
        tmp_path: Path, autojump_clock: trio.abc.Clock, resume: bool) -> None:
    async with rig(tmp_path, Knobs(resume=resume)) as r:
        ref = r.actor(CHAT)
        ref.send(prompt(1))
        await r.hub.wait_turn_end(CHAT, 1)
        ref.send(mb.Hibernate(reason="idle"))
        await r.hub.wait_state(CHAT, State.HIBERNATED)
        await r.executor.spawned[0].wait()
        assert ref.facts().state is State.HIBERNATED
        ref.send(prompt(2))
        assert (await r.hub.wait_turn_end(CHAT, 2)).stop_reason == "end_turn"
        assert r.hub.text(CHAT, 2) == "ok"
        notices = [n.message for n in r.hub.bodies(CHAT, d.Notice)]
        if resume:
            assert r.executor.methods.count("session/resume") == 1
            assert r.executor.methods.count("session/new") == 1
            assert not notices
        else:
            assert r.executor.methods.count("session/new") == 2
            assert any("lost its context" in n for n in notices)
        assert ref.snapshot().generation == 2


async def test_close_during_start_ends_the_waiting_turn_and_stops_the_agent(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with rig(tmp_path, Knobs(start_delay=30.0)) as r:
        ref = r.actor(CHAT)
        ref.send(prompt(1))
        await r.hub.wait_state(CHAT, State.STARTING)
        await trio.sleep(1.0)  # spawned, waiting for its `initialize` answer
        assert r.executor.live
        ref.send(mb.Close(reason="bye"))
        ended = await r.hub.wait_turn_end(CHAT, 1)
        assert ended.error == "chat closed: bye"
        await r.hub.wait_state(CHAT, State.CLOSED)
        assert not r.executor.spawned[0].alive
        assert r.hub.states(CHAT) == ["starting", "closed"]
        assert trio.current_time() < 30.0


async def test_cancel_a_running_turn_and_a_queued_one(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with rig(tmp_path, Knobs(prompt_delay=100.0)) as r:
        ref = r.actor(CHAT)
        ref.send(prompt(1))
        ref.send(prompt(2))
        await r.hub.wait_state(CHAT, State.BUSY)
        ref.send(mb.Cancel(turn=2, by="test"))
        assert (await r.hub.wait_turn_end(CHAT, 2)).stop_reason == "cancelled"
        ref.send(mb.Cancel(by="test"))
        assert (await r.hub.wait_turn_end(CHAT, 1)).stop_reason == "cancelled"
        assert trio.current_time() < 100.0
        assert_each_turn_ended_once(r.hub.turn_ends(CHAT), 2)


async def test_agent_ignoring_cancel_is_restarted_after_the_cancel_grace(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    knobs = Knobs(prompt_delay=1000.0, ignore_cancel=True)
    async with rig(tmp_path, knobs, probe_interval=10.0, stale_grace=60.0) as r:
        ref = r.actor(CHAT)
        ref.send(prompt(1))
        await r.hub.wait_state(CHAT, State.BUSY)
        start = trio.current_time()
        ref.send(mb.Cancel(by="test"))
        assert (await r.hub.wait_turn_end(CHAT, 1)).stop_reason == "cancelled"
        assert trio.current_time() - start == pytest.approx(60.0, abs=0.5)
        await r.hub.wait_state(CHAT, State.CRASHED)
        crashed = [s.reason for s in r.hub.bodies(CHAT, d.Status) if s.state == "crashed"]
        assert crashed == ["agent ignored session/cancel for 60s"]
        await r.hub.wait_state(CHAT, State.READY, count=2)
        assert len(r.executor.spawned) == 2


async def test_turn_timeout_cancels_and_an_agent_ignoring_it_is_restarted(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    knobs = Knobs(prompt_delay=1000.0, ignore_cancel=True)
    async with rig(tmp_path, knobs, probe_interval=10.0, stale_grace=60.0,
                   turn_timeout=30.0) as r:
        ref = r.actor(CHAT)
        start = trio.current_time()
        ref.send(prompt(1))
        ended = await r.hub.wait_turn_end(CHAT, 1)
        assert ended.error == ("turn timed out: still running after 30s "
                               "(lifecycle.turn_timeout); cancelled")
        # The timeout, then the cancel grace (the stale grace) the agent ignored.
        assert trio.current_time() - start == pytest.approx(90.0, abs=1.0)
        assert "session/cancel" in r.executor.methods
        await r.hub.wait_state(CHAT, State.READY, count=2)
        assert len(r.executor.spawned) == 2
        assert_each_turn_ended_once(r.hub.turn_ends(CHAT), 1)


async def test_shutdown_during_a_turn_ends_it_and_leaves_the_actor_hibernated(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with rig(tmp_path, Knobs(prompt_delay=100.0)) as r:
        ref = r.actor(CHAT)
        ref.send(prompt(1))
        ref.send(prompt(2))
        await r.hub.wait_state(CHAT, State.BUSY)
        ref.send(mb.Shutdown(reason="daemon shutting down"))
        ends = [await r.hub.wait_turn_end(CHAT, t) for t in (1, 2)]
        assert [e.error for e in ends] == ["daemon shutting down"] * 2
        await r.hub.wait_state(CHAT, State.HIBERNATED)
        assert not r.executor.spawned[0].alive

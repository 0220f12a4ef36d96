"""The pool driven in-process over the fake executor, in virtual time: eviction never loses
a prompt nor takes a busy agent, a close during start ends what waits, and start-up takes
over the durable queue."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from daemon.actors import records
from daemon.actors.lifecycle import ActorFacts, State
from daemon.actors.pool import Pool
from daemon.actors.records import ActorRecord, Chat
from daemon.actors.ref import ActorRef
from protocol.messages import TextBlock
from tests.support.fake_executor import FAKE, Knobs, Rig, fake_settings, rig


async def open_and_prompt(pool: Pool, chat: str, cwd: Path, text: str = "hi") -> int:
    await pool.open_chat(chat_id=chat, agent=None, cwd=str(cwd))
    accepted = await pool.prompt(chat_id=chat, content=[TextBlock(text=text)], agent=None,
                                 by="test")
    return accepted.turn


async def prompt(pool: Pool, chat: str, text: str = "hi") -> int:
    accepted = await pool.prompt(chat_id=chat, content=[TextBlock(text=text)], agent=None,
                                 by="test")
    return accepted.turn


def assert_nothing_lost(r: Rig, chat: str, turns: int) -> None:
    ends = r.hub.turn_ends(chat)
    assert sorted(ends) == list(range(1, turns + 1))
    assert all(len(found) == 1 and found[0].stop_reason == "end_turn"
               for found in ends.values()), ends
    assert r.store.rows("SELECT turn FROM prompts WHERE chat=?", (chat,)) == []


async def test_prompt_arriving_while_the_agent_is_being_evicted_is_not_lost(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with rig(tmp_path, Knobs(close_delay=10.0), idle_ttl=60.0, sweep_interval=5.0) as r:
        pool = await r.start_pool()
        turn = await open_and_prompt(pool, "c1", tmp_path)
        await r.hub.wait_turn_end("c1", turn)
        # The sweep picks the idle agent; its session/close is in flight when a prompt comes.
        while "session/close" not in r.executor.methods:
            await trio.sleep(1.0)
        second = await prompt(pool, "c1")
        assert (await r.hub.wait_turn_end("c1", second)).stop_reason == "end_turn"
        states = r.hub.states("c1")
        assert states.index("hibernated") < len(states) - states[::-1].index("starting") - 1
        assert len(r.executor.spawned) == 2
        assert_nothing_lost(r, "c1", 2)


async def test_prompt_sent_with_a_hibernate_is_served_before_hibernating(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with rig(tmp_path, idle_ttl=3600.0) as r:
        pool = await r.start_pool()
        turn = await open_and_prompt(pool, "c1", tmp_path)
        await r.hub.wait_turn_end("c1", turn)
        await trio.sleep(61.0)
        # The TTL drops under the idle time; this sweep (no checkpoint before the prompt
        # below) picks the agent, and the prompt lands in its mailbox with the hibernate.
        r.settings.config = fake_settings(idle_ttl=60.0).config
        assert await pool.sweep() == [f"c1\x00{FAKE}"]
        second = await prompt(pool, "c1")
        assert (await r.hub.wait_turn_end("c1", second)).stop_reason == "end_turn"
        assert len(r.executor.spawned) == 1
        # The eviction was only postponed: once idle again, the sweep takes it.
        await trio.sleep(61.0)
        await pool.sweep()
        await r.hub.wait_state("c1", State.HIBERNATED)
        assert_nothing_lost(r, "c1", 2)


async def test_busy_agent_is_never_evicted_over_the_cap(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    knobs = Knobs(prompt_delay=100.0)
    async with rig(tmp_path, knobs, max_warm=1, idle_ttl=3600.0, sweep_interval=5.0) as r:
        pool = await r.start_pool()
        busy = await open_and_prompt(pool, "busy", tmp_path)
        await r.hub.wait_state("busy", State.BUSY)
        knobs.prompt_delay = 0.0
        quick = await open_and_prompt(pool, "quick", tmp_path)
        await r.hub.wait_turn_end("quick", quick)
        await r.hub.wait_state("quick", State.HIBERNATED)
        assert "hibernated" not in r.hub.states("busy")
        assert (await r.hub.wait_turn_end("busy", busy)).stop_reason == "end_turn"
        assert pool.counts().warm == 1


async def test_close_during_start_ends_the_turn_and_forgets_the_actor(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with rig(tmp_path, Knobs(start_delay=30.0)) as r:
        pool = await r.start_pool()
        turn = await open_and_prompt(pool, "c1", tmp_path)
        await r.hub.wait_state("c1", State.STARTING)
        await trio.sleep(1.0)
        await pool.close("c1", reason="bye")
        ended = r.hub.turn_ends("c1")[turn]
        assert [e.error for e in ended] == ["chat closed: bye"]
        assert r.hub.states("c1")[-1] == "closed"
        assert not r.executor.live
        assert pool.counts().total == 0
        assert pool.get_chat("c1").closed


async def test_start_up_ends_interrupted_turns_and_delivers_queued_prompts(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with rig(tmp_path) as r:
        chat = Chat(id="c1", agent=FAKE, cwd=str(tmp_path), epoch="e1", created=0.0,
                    updated=0.0, next_turn=3)
        records.save_chat(r.store, chat, 0)
        records.queue_prompt(r.store, "c1", 1, FAKE, [TextBlock(text="a")], "test", 0.0)
        records.mark_prompt_running(r.store, "c1", 1)
        records.queue_prompt(r.store, "c1", 2, FAKE, [TextBlock(text="b")], "test", 0.0)
        pool = await r.start_pool()
        assert (await r.hub.wait_turn_end("c1", 2)).stop_reason == "end_turn"
        interrupted = r.hub.turn_ends("c1")[1]
        assert [e.error for e in interrupted] == [
            "interrupted: the daemon stopped while this turn ran"]
        assert r.store.rows("SELECT turn FROM prompts") == []
        assert (await prompt(pool, "c1")) == 3


async def test_idle_agent_is_hibernated_at_its_deadline_without_polling(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    # sweep_interval is an hour: only the idle deadline can hibernate the agent at 60 s.
    async with rig(tmp_path, idle_ttl=60.0, sweep_interval=3600.0) as r:
        pool = await r.start_pool()
        turn = await open_and_prompt(pool, "c1", tmp_path)
        await r.hub.wait_turn_end("c1", turn)
        ended = trio.current_time()
        await trio.sleep(30.0)
        second = await prompt(pool, "c1")  # activity moves the deadline
        await r.hub.wait_turn_end("c1", second)
        ended = trio.current_time()
        await r.hub.wait_state("c1", State.HIBERNATED)
        assert 60.0 <= trio.current_time() - ended < 61.0
        assert pool.counts().warm == 0


async def test_a_turn_end_looks_at_no_hibernated_record(
        tmp_path: Path, autojump_clock: trio.abc.Clock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    looked_at: list[str] = []
    facts = ActorRef.facts

    def counting(self: ActorRef, rss: int | None = None) -> ActorFacts:
        looked_at.append(self.chat)
        return facts(self, rss)

    monkeypatch.setattr(ActorRef, "facts", counting)
    async with rig(tmp_path, idle_ttl=60.0, max_warm=2) as r:
        for i in range(300):
            chat = Chat(id=f"h{i}", agent=FAKE, cwd=str(tmp_path), epoch="e", created=0.0,
                        updated=0.0)
            records.save_chat(r.store, chat, 0)
            records.save_actor(r.store, chat.id, FAKE, ActorRecord(), None)
        pool = await r.start_pool()
        assert pool.counts().total == 300
        turns = [await open_and_prompt(pool, "c1", tmp_path)]
        turns += [await prompt(pool, "c1") for _ in range(9)]
        await r.hub.wait_turn_end("c1", turns[-1])
        await open_and_prompt(pool, "c2", tmp_path)
        await open_and_prompt(pool, "c3", tmp_path)  # over the cap of 2: c1 goes
        await r.hub.wait_state("c1", State.HIBERNATED)
        await r.hub.wait_state("c3", State.READY)
        assert not any(chat.startswith("h") for chat in looked_at)
        assert len(looked_at) <= 20
        await trio.sleep(61.0)
        assert pool.counts().warm == 0
        assert not any(chat.startswith("h") for chat in looked_at)

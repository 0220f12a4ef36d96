"""The durable rows of chats, actors and prompts (daemon/actors/records.py) read back by
name as they were written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.actors import records
from daemon.actors.lifecycle import State
from daemon.actors.records import ActorRecord, Chat
from daemon.execution.local import ProcessIdentity
from protocol.messages import TextBlock, UsageTotals
from tests.support.fake_executor import InlineStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[InlineStore]:
    made = InlineStore(tmp_path / "state.db")
    yield made
    made.close()


async def test_chat_row_round_trip(store: InlineStore) -> None:
    chat = Chat(id="c1", agent="echo", cwd="/w", epoch="e1", created=1.0, updated=2.0,
                workspace="ws", policy="allow", title="t", next_turn=7,
                mcp=[{"name": "m", "command": "x"}])
    records.save_chat(store, chat, 41)
    records.renew_epoch(store, "c1", "e2")
    [row] = await records.load_chats(store)
    assert row.head_seq == 41
    assert row.chat() == Chat(id="c1", agent="echo", cwd="/w", epoch="e2", created=1.0,
                              updated=chat.updated, workspace="ws", policy="allow", title="t",
                              next_turn=7, mcp=[{"name": "m", "command": "x"}])
    ends = await records.log_ends(store, ["c1"])
    assert ends["c1"] == records.LogEnds(head=None, floor=None)


async def test_actor_row_round_trip_and_unknown_state(store: InlineStore) -> None:
    record = ActorRecord(state=State.READY, reason="r", session_id="s1", generation=3,
                         turns=2, info={"title": "x"}, usage=UsageTotals(input_tokens=5),
                         last_activity=9.0)
    process = ProcessIdentity(pid=10, pgid=10, start_time=1.5, computer=None, actor="m")
    records.save_actor(store, "c1", "echo", record, process)
    records.save_actor(store, "c2", "echo", ActorRecord(), None)
    store.execute("UPDATE actors SET state='from-the-future' WHERE chat='c2'")
    rows = {row.chat: row for row in await records.load_actors(store)}
    assert rows["c1"].record == record
    assert rows["c1"].process == process
    assert rows["c2"].process is None
    assert rows["c2"].record.state is State.HIBERNATED


async def test_prompt_rows_and_restarts(store: InlineStore) -> None:
    records.queue_prompt(store, "c1", 2, "echo", [TextBlock(text="b")], "me", 5.0)
    records.queue_prompt(store, "c1", 1, "echo", [TextBlock(text="a")], "me", 4.0)
    records.mark_prompt_running(store, "c1", 1)
    rows = await records.load_prompts(store)
    assert [(r.turn, r.running, r.content) for r in rows] == [
        (1, True, [TextBlock(text="a")]), (2, False, [TextBlock(text="b")])]
    records.delete_prompt(store, "c1", 1)
    assert [r.turn for r in await records.load_prompts(store)] == [2]
    records.record_transition(store, "c1", "echo", State.RESTARTING, "x", 1)
    assert await records.restarts_since(store, 0.0) == 1

"""Issue 23 end to end: the real `qwen --acp` in a shared agent process (`process =
"shared"`): two chats on one qwen, each with its own ACP session, warm turns, separate
histories, interleaved turns that stay in their chats, and `kill -9` of the process with both
chats mid-turn: each turn ends once with the cause, each session resumes with its own history.

The scripted model (tests/e2e/fake_llm.py) answers with the markers it finds in the user
messages it was sent, so a chat's reply shows the history qwen keeps for that chat's
session. One daemon serves the whole module (one warm qwen, the cold start paid once); every
message the daemon sent qwen is validated against the official ACP schema when the module
ends. Only the newest pinned qwen runs here (the per-chat tests cover the older one).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon.client import Client
from tests.e2e.agents import QWEN_ARGS, QWEN_SETTINGS, QWEN_VERSION, qwen, qwen_env
from tests.e2e.fake_llm import FakeLLM
from tests.e2e.rig import (
    SHARED,
    TracedDaemon,
    TurnLog,
    agent_table,
    echo_markers,
    finish_rig,
    installed_or_skip,
    interleaved_turns,
    markers,
    module_daemon,
    open_subscribed,
    rig_dirs,
    run_turn,
    separate_histories,
    shared_process_missing,
    traced_command,
    wait_until,
)
from tests.support.harness import actor, subscribe

pytestmark = pytest.mark.e2e

AGENT = "qwen"


@dataclass(kw_only=True)
class SharedRig(TracedDaemon):
    llm: FakeLLM
    home: Path


@pytest.fixture(scope="module")
def rig() -> Iterator[SharedRig]:
    missing = shared_process_missing()
    if missing is not None:
        pytest.skip(missing)
    installed = installed_or_skip(qwen(QWEN_VERSION))
    assert installed.binary is not None
    with FakeLLM(default="(unscripted reply)") as llm, module_daemon() as daemon:
        trace_dir, home, workspace = rig_dirs(daemon)
        (home / ".qwen").mkdir()
        (home / ".qwen" / "settings.json").write_text(json.dumps(QWEN_SETTINGS, indent=2))
        argv = traced_command(trace_dir, AGENT, [str(installed.binary), *QWEN_ARGS])
        daemon.write_config(agent_table(AGENT, argv, qwen_env(llm.base_url, home), **SHARED))
        daemon.start()
        made = SharedRig(daemon, trace_dir, workspace, llm=llm, home=home)
        yield made
        finish_rig(made, llm.errors)


@pytest.fixture
async def client(rig: SharedRig) -> AsyncIterator[Client]:
    async with rig.daemon.client("e2e") as connected:
        yield connected


async def test_two_chats_share_one_qwen_with_separate_histories(
        rig: SharedRig, client: Client, record_property: Any) -> None:
    started = time.perf_counter()
    latency = await separate_histories(rig, rig.llm, client, AGENT)
    record_property("qwen_shared_warm_first_chunk_s", round(latency, 4))
    print(f"\nqwen {QWEN_VERSION} shared: warm first chunk {latency * 1000:.0f} ms; "
          f"test took {time.perf_counter() - started:.1f}s")


async def test_interleaved_turns_stay_in_their_chats(rig: SharedRig) -> None:
    await interleaved_turns(rig.daemon, rig.llm, rig.workspace, AGENT)


def _recorded(home: Path, marker: str) -> bool:
    """Whether qwen's chat records under `home` mention `marker` (it writes them
    asynchronously: a kill right after a turn may beat the write, and no resume could bring
    that turn back)."""
    return any(marker in record.read_text(errors="replace")
               for record in (home / ".qwen").rglob("*.jsonl"))


async def test_kill_9_ends_both_open_turns_and_both_sessions_resume(
        rig: SharedRig, client: Client) -> None:
    started = time.perf_counter()
    llm = rig.llm
    a = (await open_subscribed(client, None, AGENT, rig.workspace)).chat
    b = (await open_subscribed(client, None, AGENT, rig.workspace)).chat
    for chat, marker in ((a, "MARK-KA"), (b, "MARK-KB")):
        llm.script(echo_markers())
        told = await run_turn(client, chat, f"Remember {marker}.")
        assert markers(told.text) == [marker], told.text
        await wait_until(functools.partial(_recorded, rig.home, marker),
                         f"qwen to record {marker}")
    before = {chat: await actor(client, chat, AGENT) for chat in (a, b)}
    [pgid] = {x.pgid for x in before.values()}
    assert pgid is not None

    # Both chats mid-turn (the model holds each answer after its first piece), then kill -9
    # of the shared process's group: each open turn ends once, with the cause.
    gate = threading.Event()
    asked = len(llm.main_requests())
    llm.script(echo_markers(hold=gate), echo_markers(hold=gate))
    ended: dict[str, TurnLog] = {}

    async def open_turn(chat: str) -> None:
        async with rig.daemon.client(f"e2e-{chat}") as own:
            await subscribe(own, chat)
            ended[chat] = await run_turn(own, chat, "Think about it.")

    try:
        async with trio.open_nursery() as nursery:
            for chat in (a, b):
                nursery.start_soon(open_turn, chat)
            await trio.to_thread.run_sync(lambda: llm.wait_for(
                lambda rs: sum(r.main for r in rs) >= asked + 2, timeout=120))
            os.killpg(pgid, signal.SIGKILL)
    finally:
        gate.set()
    for chat in (a, b):
        end = ended[chat].ended  # exactly one turn_ended
        assert end.error, f"{chat}: the killed turn ended without its cause: {end}"

    # The next prompt of each chat works on the next process, its own session resumed.
    for chat, mine, other in ((a, "MARK-KA", "MARK-KB"), (b, "MARK-KB", "MARK-KA")):
        llm.script(echo_markers())
        turn = await run_turn(client, chat, "Which word? MARK-NEXT")
        assert turn.ended.stop_reason == "end_turn", turn.ended
        seen = markers(turn.text)
        assert seen[0] == mine, f"{chat} lost its history: {turn.text!r}"
        assert seen[-1] == "MARK-NEXT"
        assert other not in seen, f"{chat} got the other chat's history: {turn.text!r}"
    after = {chat: await actor(client, chat, AGENT) for chat in (a, b)}
    assert after[a].pid == after[b].pid
    assert after[a].pid != before[a].pid
    for chat in (a, b):
        assert after[chat].session_id == before[chat].session_id, "resumed, not renewed"
        assert after[chat].generation > before[chat].generation
    print(f"\nkill -9 of a shared qwen with two open turns, both resumed: "
          f"{time.perf_counter() - started:.1f}s")

"""Issue 23 end to end: the real `opencode acp` (npm `opencode-ai`) in a shared agent process
(`process = "shared"`): two chats on one opencode, each with its own ACP session, warm
turns, separate histories, interleaved turns that stay in their chats, and closing one chat
closes its session (opencode advertises `session/close`) while its neighbour keeps working.

opencode talks to the scripted loopback model (tests/e2e/fake_llm.py) as an
OpenAI-compatible provider configured in its `opencode.json` (the provider's SDK is bundled
in the binary; nothing is fetched). The model answers with the markers it finds in the user
messages it was sent, so a reply shows the history opencode keeps for that chat's session.
One daemon serves the whole module; every message the daemon sent opencode is validated
against the official ACP schema when the module ends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from daemon.client import Client
from protocol import messages as m
from tests.e2e.agents import OPENCODE, opencode_env, write_opencode_config
from tests.e2e.fake_llm import FakeLLM
from tests.e2e.rig import (
    SHARED,
    TracedDaemon,
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
from tests.support.harness import actor, alive, wait_gone

pytestmark = pytest.mark.e2e

AGENT = "opencode"


@dataclass(kw_only=True)
class SharedRig(TracedDaemon):
    llm: FakeLLM


@pytest.fixture(scope="module")
def rig() -> Iterator[SharedRig]:
    missing = shared_process_missing()
    if missing is not None:
        pytest.skip(missing)
    installed = installed_or_skip(OPENCODE)
    assert installed.binary is not None
    with FakeLLM(default="(unscripted reply)") as llm, module_daemon() as daemon:
        trace_dir, home, workspace = rig_dirs(daemon)
        write_opencode_config(home, llm.base_url)
        argv = traced_command(trace_dir, AGENT, [str(installed.binary), "acp"])
        daemon.write_config(agent_table(AGENT, argv, opencode_env(home), **SHARED))
        daemon.start()
        made = SharedRig(daemon, trace_dir, workspace, llm=llm)
        yield made
        finish_rig(made, llm.errors)


@pytest.fixture
async def client(rig: SharedRig) -> AsyncIterator[Client]:
    async with rig.daemon.client("e2e") as connected:
        yield connected


async def chats_on(client: Client, process: str) -> list[str]:
    """The open chats whose session is on the shared process `process`."""
    listed: m.ChatList = await client.request(m.ListChats(id=0))
    return [c.chat for c in listed.chats
            if not c.closed and c.process is not None and c.process.id == process]


async def test_two_chats_share_one_opencode_with_separate_histories(
        rig: SharedRig, client: Client, record_property: Any) -> None:
    started = time.perf_counter()
    latency = await separate_histories(rig, rig.llm, client, AGENT)
    record_property("opencode_shared_warm_first_chunk_s", round(latency, 4))
    print(f"\nopencode {OPENCODE.version} shared: warm first chunk {latency * 1000:.0f} ms; "
          f"test took {time.perf_counter() - started:.1f}s")


async def test_interleaved_turns_stay_in_their_chats(rig: SharedRig) -> None:
    await interleaved_turns(rig.daemon, rig.llm, rig.workspace, AGENT)


async def test_closing_one_chat_closes_its_session_only(rig: SharedRig,
                                                        client: Client) -> None:
    started = time.perf_counter()
    a = (await open_subscribed(client, None, AGENT, rig.workspace)).chat
    b = (await open_subscribed(client, None, AGENT, rig.workspace)).chat
    for chat in (a, b):
        await client.request(m.Warm(id=0, chat=chat))
    one, two = await actor(client, a, AGENT), await actor(client, b, AGENT)
    assert one.pid == two.pid
    assert one.process is not None
    before_close = one.process

    await client.request(m.CloseChat(id=0, chat=b))

    def closed() -> list[str]:
        return [str(ask["params"]["sessionId"]) for g in rig.generations(AGENT)
                for ask in g.sent if ask.get("method") == "session/close"]

    await wait_until(lambda: two.session_id in closed(), "session/close of the closed chat")
    assert one.session_id not in closed()

    rig.llm.script(echo_markers())
    turn = await run_turn(client, a, "Still there? MARK-C1")
    assert turn.ended.stop_reason == "end_turn", turn.ended
    assert markers(turn.text) == ["MARK-C1"], turn.text
    after = await actor(client, a, AGENT)
    assert (after.pid, after.generation) == (one.pid, one.generation), \
        "closing a neighbour's session left this chat's process alone"
    assert after.process is not None
    assert after.process.sessions == before_close.sessions - 1, after.process

    print(f"\nclosing one of two chats took {time.perf_counter() - started:.1f}s")


async def test_the_process_stops_when_its_last_chat_closes(rig: SharedRig,
                                                           client: Client) -> None:
    a = (await open_subscribed(client, None, AGENT, rig.workspace)).chat
    b = (await open_subscribed(client, None, AGENT, rig.workspace)).chat
    for chat in (a, b):
        await client.request(m.Warm(id=0, chat=chat))
    detail = await actor(client, a, AGENT)
    assert detail.process is not None
    assert detail.pid is not None
    # Earlier tests of the module may have left chats on it: close them all, `a` last.
    on_it = await chats_on(client, detail.process.id)
    assert {a, b} <= set(on_it)
    for chat in [*(c for c in on_it if c != a), a]:
        assert alive(detail.pid), f"the process stopped before its last chat ({chat}) closed"
        await client.request(m.CloseChat(id=0, chat=chat))
    await wait_gone([detail.pid], timeout=15)  # a 2 s linger, then SIGTERM

"""Issue 2 (core): the real daemon, real echo agent processes, the real socket."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from pathlib import Path

import psutil
import pytest
import trio

from daemon.client import Client, RequestFailed
from protocol import deltas as d
from protocol import messages as m
from tests.support.bystander import assert_within_twice, bystander
from tests.support.harness import (
    DaemonFactory,
    DaemonProcess,
    actor,
    agent_pid,
    assert_fs_confined,
    open_chat,
    subscribe,
    turn,
    wait_log,
    wait_state,
    wait_turn_end,
    wait_turns_ended,
)


async def test_two_turns_share_process_and_session(daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        info = await open_chat(client, "warm", cwd=daemon.work)
        first = await turn(client, info.chat, "/pid")
        second = await turn(client, info.chat, "/pid")
        assert first.ended.stop_reason == "end_turn"
        assert first.text == second.text
        a = await actor(client, info.chat)
        assert a.pid == int(first.text)
        assert a.generation == 1
        assert a.session_id
        assert a.turns == 2


async def test_plain_text_streams_one_chunk_per_word(daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        info = await open_chat(client, cwd=daemon.work)
        result = await turn(client, info.chat, "hello there warm world")
        texts = [b.text for b in result.of(d.Text)]
        assert texts == ["hello", " there", " warm", " world"]
        kinds = result.kinds()
        assert kinds[0] == "turn_started"
        assert kinds.count("turn_ended") == 1
        seqs = [x.seq for x in result.deltas]
        assert seqs == sorted(seqs)


async def test_cancel_sleep_within_a_second_then_same_process(daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        info = await open_chat(client, "cancel", cwd=daemon.work)
        pid = await agent_pid(client, info.chat)
        accepted = await client.request(m.Prompt(id=0, chat=info.chat, text="/sleep 10000"))
        await wait_state(client, info.chat, "busy", timeout=10)
        start = trio.current_time()
        await client.request(m.Cancel(id=0, chat=info.chat))
        ended = await wait_turn_end(client, info.chat, accepted.turn)
        assert trio.current_time() - start < 1.0
        assert ended.stop_reason == "cancelled"
        again = await turn(client, info.chat, "/pid")
        assert int(again.text) == pid


async def test_kill_9_mid_turn_ends_turn_and_next_prompt_is_new_generation(
        daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        info = await open_chat(client, "k9", cwd=daemon.work)
        pid = await agent_pid(client, info.chat)
        accepted = await client.request(m.Prompt(id=0, chat=info.chat, text="/sleep 20000"))
        await wait_state(client, info.chat, "busy", timeout=10)
        os.kill(pid, signal.SIGKILL)
        ended = await wait_turn_end(client, info.chat, accepted.turn)
        assert ended.error is not None
        assert "SIGKILL" in ended.error
        nxt = await turn(client, info.chat, "/pid")
        assert nxt.ended.stop_reason == "end_turn"
        assert int(nxt.text) != pid
        assert (await actor(client, info.chat)).generation >= 2


@pytest.mark.parametrize(("command", "cause"), [
    pytest.param(["/nonexistent/ghost-agent"], "ghost-agent", id="missing-binary"),
    pytest.param(["python3", "-m", "daemon.echo_agent", "--fail-initialize"], "status 4",
                 id="exits-during-initialize"),
])
async def test_broken_agent_ends_turn_with_cause(
        daemon_factory: DaemonFactory, command: list[str], cause: str) -> None:
    daemon = daemon_factory(config=f"[agents.broken]\ncommand = {json.dumps(command)}\n")
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "broken", agent="broken", cwd=daemon.work)
        result = await turn(client, info.chat, "hello")
        assert result.ended.error is not None
        assert cause in result.ended.error
        # The daemon is fine and serves another chat.
        status = await client.request(m.GetStatus(id=0))
        assert status.pid == daemon.pid
        other = await open_chat(client, "fine", cwd=daemon.work)
        assert (await turn(client, other.chat, "still here")).text == "still here"


async def test_queue_is_ordered_and_bounded(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config="[daemon]\nqueue_limit = 2\n")
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "q", cwd=daemon.work)
        await subscribe(client, info.chat)
        first = await client.request(m.Prompt(id=0, chat=info.chat, text="/sleep 500"))
        await wait_state(client, info.chat, "busy", timeout=10)
        second = await client.request(m.Prompt(id=0, chat=info.chat, text="two"))
        third = await client.request(m.Prompt(id=0, chat=info.chat, text="three"))
        assert (first.turn, second.turn, third.turn) == (1, 2, 3)
        assert third.queued == 2
        with pytest.raises(RequestFailed) as refused:
            await client.request(m.Prompt(id=0, chat=info.chat, text="four"))
        assert refused.value.code == "queue_full"
        ended, texts = await wait_turns_ended(client, 3)
        assert list(ended) == [1, 2, 3]
        assert texts[2] == "two"
        assert texts[3] == "three"


async def test_sigterm_ends_open_turns_stops_agents_exits_zero(daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        info = await open_chat(client, "shut", cwd=daemon.work)
        pid = await agent_pid(client, info.chat)
        running = await client.request(m.Prompt(id=0, chat=info.chat, text="/sleep 30000"))
        queued = await client.request(m.Prompt(id=0, chat=info.chat, text="later"))
        await wait_state(client, info.chat, "busy", timeout=10)
        daemon.signal(signal.SIGTERM)
        ends, _texts = await wait_turns_ended(client, 2)
        assert ends[running.turn].error == "daemon shutting down"
        assert ends[queued.turn].error == "daemon shutting down"
    assert daemon.wait_exit(20) == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert daemon.leftovers() == []


async def test_a_turns_rhythm_costs_one_log_line_and_no_transition_rows(
        daemon_factory: DaemonFactory) -> None:
    """Busy, then ready again, is each turn's rhythm: the chat's `status` deltas say it,
    the info log has the turn's one "turn ended" line, and the transitions table (the
    agent's life: starts, crashes, hibernations) gets no row for it (issue 22)."""
    daemon = daemon_factory()
    daemon.start(log_level="info")
    async with daemon.client() as client:
        info = await open_chat(client, "rhythm", cwd=daemon.work)
        results = [await turn(client, info.chat, f"turn {n}") for n in range(3)]
        states = [x.body.state for r in results for x in r.deltas
                  if isinstance(x.body, d.Status)]
        assert states.count("busy") == 3, states
    assert daemon.stop() == 0
    db = sqlite3.connect(f"file:{daemon.state_dir / 'stoker.db'}?mode=ro", uri=True)
    try:
        rows = [r[0] for r in db.execute(
            "SELECT state FROM transitions WHERE chat=? ORDER BY rowid", (info.chat,))]
    finally:
        db.close()
    assert "busy" not in rows
    assert rows[:2] == ["starting", "ready"], rows
    assert rows[-1] == "hibernated", rows
    lines = [line for line in daemon.log_text().splitlines() if f"chat={info.chat}" in line]
    assert sum("event=state state=busy" in line for line in lines) == 0
    assert sum('event="turn ended"' in line for line in lines) == 3


async def test_fs_is_confined_to_the_chat_directory(daemon: DaemonProcess) -> None:
    work = daemon.work / "proj"
    work.mkdir()
    outside = daemon.base / "secret.txt"
    outside.write_text("secret")
    (work / "link").symlink_to(daemon.base)
    async with daemon.client() as client:
        info = await open_chat(client, "fs", cwd=work)
        await assert_fs_confined(client, info.chat, work, outside)


async def test_agent_stderr_goes_to_the_daemon_log_tagged(daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        info = await open_chat(client, "noisy", cwd=daemon.work)
        assert (await turn(client, info.chat, "/stderr 3")).text == "stderr 3"
    await wait_log(daemon, "echo stderr line 2", timeout=10)
    lines = [line for line in daemon.log_text().splitlines() if "echo stderr line" in line]
    assert len(lines) == 3
    for line in lines:
        assert 'event="agent stderr"' in line
        assert "chat=noisy" in line
        assert "agent=echo" in line
        assert "gen=1" in line


async def test_describe_agent_runs_one_probe_for_many_requests_until_a_reload(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    # Issue 16: each describe_agent started its own probe process (30 concurrent requests
    # -> 30 agents, ~200 MB each for qwen). Now concurrent requests share one probe, and
    # its answer is kept per agent until a reload.
    starts = tmp_path / "starts"
    command = ["sh", "-c", f'echo $$ >> "{starts}"; exec "{sys.executable}" -m daemon.echo_agent']
    config = f"[agents.probed]\ncommand = {json.dumps(command)}\n"
    daemon = daemon_factory(config=config)
    daemon.start()

    async def ask_many(client: Client, count: int) -> list[m.AgentDescription]:
        answers: list[m.AgentDescription] = []

        async def ask() -> None:
            answers.append(await client.request(m.DescribeAgent(id=0, agent="probed")))

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(ask)
        return answers

    def probes() -> int:
        return len(starts.read_text().split()) if starts.exists() else 0

    async with daemon.client() as client, bystander(daemon) as other:
        baseline = await other.sample()
        answers: list[m.AgentDescription] = []

        async def flood() -> None:
            answers.extend(await ask_many(client, 30))

        # Another client's turns while the 30 requests are answered: within twice their
        # normal latency (issue 16).
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            during = await other.sample()
        assert_within_twice(baseline, during)
        assert len(answers) == 30
        assert all(a == answers[0] for a in answers)
        assert answers[0].agent == "probed"
        assert probes() == 1
        await ask_many(client, 10)
        assert probes() == 1  # cached
        await client.request(m.Reload(id=0))
        await ask_many(client, 10)
        assert probes() == 2  # a reload may change the agent: probed again, once

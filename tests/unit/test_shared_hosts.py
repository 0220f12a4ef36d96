"""Shared agent processes in-process over the fake executor, in virtual time: one process
for many chats, a crash restarts it once (after the backoff) for all of them, every turn
ends once, and the process stops exactly a linger after its last session left."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import msgspec
import pytest
import trio

from daemon.acp.rpc import INVALID_PARAMS, RpcError
from daemon.actors import mailbox as mb
from daemon.actors.backend.shared import LINGER, HostKey, SharedHost
from daemon.actors.backend.view import SessionView
from daemon.actors.lifecycle import State
from daemon.execution.local import ExitStatus
from protocol import deltas as d
from protocol.messages import TextBlock
from tests.support.fake_executor import FAKE, Knobs, Rig, rig


def share(r: Rig, sessions_per_process: int = 16) -> None:
    """The fake agent, shared."""
    r.settings.agents[FAKE] = dataclasses.replace(
        r.settings.agents[FAKE], process="shared", sessions_per_process=sessions_per_process)


async def prompt(r: Rig, chat: str, text: str = "hi") -> int:
    assert r.pool is not None
    accepted = await r.pool.prompt(chat_id=chat, content=[TextBlock(text=text)], agent=None,
                                   by="test")
    return accepted.turn


async def open_chats(r: Rig, tmp_path: Path, count: int) -> list[str]:
    assert r.pool is not None
    chats = [f"c{i}" for i in range(count)]
    for chat in chats:
        await r.pool.open_chat(chat_id=chat, agent=None, cwd=str(tmp_path))
    return chats


async def test_a_crash_restarts_one_process_for_all_its_chats_after_the_backoff(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    knobs = Knobs(prompt_delay=100.0)
    async with rig(tmp_path, knobs, restart_backoff=2.0, idle_ttl=3600.0) as r:
        share(r)
        await r.start_pool()
        chats = await open_chats(r, tmp_path, 4)
        turns = {chat: await prompt(r, chat) for chat in chats}
        for chat in chats:
            await r.hub.wait_state(chat, State.BUSY)
        assert len(r.executor.spawned) == 1
        crashed_at = trio.current_time()
        r.executor.spawned[0].die(ExitStatus(code=None, signal=signal.SIGKILL))
        for chat, turn in turns.items():
            ended = await r.hub.wait_turn_end(chat, turn)
            assert ended.error is not None
            assert "killed by SIGKILL" in ended.error
        knobs.prompt_delay = 0.0
        again = {chat: await prompt(r, chat) for chat in chats}
        for chat, turn in again.items():
            assert (await r.hub.wait_turn_end(chat, turn)).stop_reason == "end_turn"
            assert [len(e) for e in r.hub.turn_ends(chat).values()] == [1, 1]
        # One new process for the four chats, started after the process's own backoff.
        assert len(r.executor.spawned) == 2
        assert r.executor.spawn_times[1] >= crashed_at + 2.0
        assert r.executor.methods.count("initialize") == 2
        assert r.executor.methods.count("session/resume") == 4


async def test_the_process_stops_a_linger_after_its_last_session_left(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with rig(tmp_path, Knobs(close_delay=0.0), idle_ttl=3600.0) as r:
        share(r)
        pool = await r.start_pool()
        chats = await open_chats(r, tmp_path, 2)
        for chat in chats:
            await r.hub.wait_turn_end(chat, await prompt(r, chat))
        process = r.executor.spawned[0]
        for chat in chats:
            for ref in pool.actors_of(chat):
                ref.send(mb.Hibernate(reason="test"))
            await r.hub.wait_state(chat, State.HIBERNATED)
        left = trio.current_time()
        assert process.alive
        await process.exited.wait()
        assert trio.current_time() - left >= LINGER
        assert r.executor.methods.count("session/close") == 2


async def test_a_session_setup_waiting_behind_its_neighbours_does_not_time_out(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """Six chats set up their sessions at once on one process that sets them up one after
    another, each taking 0.4 of `request_timeout` (10 s): the last answers after 2.4x the
    timeout, and still counts as answered in time (its deadline does not include the time
    spent behind its neighbours' set-ups). A single slow set-up still times out."""
    async with rig(tmp_path, Knobs(setup_delay=4.0), idle_ttl=3600.0) as r:
        share(r)
        await r.start_pool()
        chats = await open_chats(r, tmp_path, 6)
        turns = {chat: await prompt(r, chat) for chat in chats}
        for chat, turn in turns.items():
            ended = await r.hub.wait_turn_end(chat, turn)
            assert ended.error is None, ended.error
        assert len(r.executor.spawned) == 1
        assert r.executor.methods.count("session/new") == 6
    async with rig(tmp_path, Knobs(setup_delay=11.0), idle_ttl=3600.0) as r:
        share(r)
        await r.start_pool()
        chat = (await open_chats(r, tmp_path, 1))[0]
        ended = await r.hub.wait_turn_end(chat, await prompt(r, chat))
        assert ended.error is not None
        assert "in time" in ended.error, ended.error


async def test_sessions_per_process_starts_another_process(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with rig(tmp_path, idle_ttl=3600.0) as r:
        share(r, sessions_per_process=2)
        await r.start_pool()
        chats = await open_chats(r, tmp_path, 5)
        for chat in chats:
            await r.hub.wait_turn_end(chat, await prompt(r, chat))
        assert len(r.executor.spawned) == 3


async def test_a_process_that_keeps_dying_at_start_fails_its_chats_within_the_limits(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with rig(tmp_path, Knobs(crash_on_start=True), restart_max=3,
                   restart_window=600.0, restart_backoff=1.0, idle_ttl=3600.0) as r:
        share(r)
        await r.start_pool()
        chats = await open_chats(r, tmp_path, 3)
        turns = {chat: await prompt(r, chat) for chat in chats}
        for chat in chats:
            await r.hub.wait_state(chat, State.FAILED)
            ended = r.hub.turn_ends(chat)[turns[chat]]
            assert len(ended) == 1
            assert ended[0].error is not None
        # The chats retried together: the process was started once per round, not once
        # per chat, and never more often than its own restart limit allows.
        assert len(r.executor.spawned) <= 3 + 1, r.executor.spawn_times


async def test_shutdown_ends_every_chats_turn_and_stops_the_shared_process(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with rig(tmp_path, Knobs(prompt_delay=1000.0), idle_ttl=3600.0) as r:
        share(r)
        pool = await r.start_pool()
        chats = await open_chats(r, tmp_path, 3)
        turns = {chat: await prompt(r, chat) for chat in chats}
        for chat in chats:
            await r.hub.wait_state(chat, State.BUSY)
        await pool.shutdown()
        for chat, turn in turns.items():
            assert [e.error for e in r.hub.turn_ends(chat)[turn]] == ["daemon shutting down"]
        await r.executor.spawned[0].exited.wait()
        assert not r.executor.live


async def test_the_agents_lines_reach_the_session_they_name_and_no_other(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with rig(tmp_path) as r:
        spec = dataclasses.replace(r.settings.agents[FAKE], process="shared")
        host = SharedHost(HostKey(FAKE, None, None), spec, r.executor, settings=r.settings,
                          hub=r.hub, instance="test", number=1, delay=0.0,
                          on_end=lambda host: None)
        got: dict[str, list[object]] = {"a": [], "b": []}
        chunks: dict[str, list[list[str]]] = {"a": [], "b": []}

        def view(name: str) -> SessionView:
            async def serve(method: str, params: msgspec.Raw | None) -> object:
                got[name].append(("request", method))
                return {"served": name}

            made = host.attach({
                "chat": name, "on_request": serve,
                "on_notification": lambda method, params: got[name].append(method),
                "on_chunks": lambda bodies: chunks[name].append(
                    [b.text for b in bodies if isinstance(b, d.Text)]),
                "on_lost": lambda reason, error: None,
                "touch": lambda: None, "engaged": lambda: False})
            host.route(made, f"s-{name}")
            return made

        view("a")
        view("b")
        update = b'{"sessionId":"s-b","update":{"sessionUpdate":"plan","entries":[]}}'
        host._on_notification("session/update", msgspec.Raw(update))
        assert got == {"a": [], "b": ["session/update"]}
        # Notifications naming no attached session (or none) are dropped.
        host._on_notification("session/update", msgspec.Raw(update.replace(b"s-b", b"s-z")))
        host._on_notification("_x/ping", msgspec.Raw(b"{}"))
        host._on_notification("_x/ping", None)
        assert got == {"a": [], "b": ["session/update"]}
        # Text chunk lines (the hot path): a session's consecutive chunks as one batch to
        # it, in order; a chunk naming no attached session is dropped; a line that is not
        # a text chunk ends the run (it goes the general way).
        def chunk(session: str, text: str) -> bytes:
            return (b'{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"%s",'
                    b'"update":{"sessionUpdate":"agent_message_chunk","content":{"type":'
                    b'"text","text":"%s"}}}}' % (session.encode(), text.encode()))
        lines = [chunk("s-a", "1"), chunk("s-a", "2"), chunk("s-b", "x"), chunk("s-z", "?"),
                 chunk("s-a", "3"), b'{"jsonrpc":"2.0","method":"_x/ping","params":{}}',
                 chunk("s-b", "y")]
        assert host._on_lines(lines, 0) == 5
        assert chunks == {"a": [["1", "2"], ["3"]], "b": [["x"]]}
        assert host._on_lines(lines, 6) == 7
        assert chunks["b"] == [["x"], ["y"]]
        assert await host._on_request("fs/read_text_file", msgspec.Raw(
            b'{"sessionId":"s-a","path":"/x"}')) == {"served": "a"}
        assert got["a"] == [("request", "fs/read_text_file")]
        for params, why in ((b'{"sessionId":"s-zzz","path":"/x"}',
                             "session 's-zzz' is not a session of a chat on this connection"),
                            (b'{"path":"/x"}', "the request names no sessionId")):
            with pytest.raises(RpcError) as refused:
                await host._on_request("fs/read_text_file", msgspec.Raw(params))
            assert refused.value.code == INVALID_PARAMS
            assert why in refused.value.message


async def test_a_silent_session_on_a_process_that_answers_is_cancelled_alone_on_time(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """Both sessions go silent (the agent keeps answering probes and ignores the cancel):
    each turn ends stale one probe interval plus the grace into its silence, each chat's
    generation is replaced after the cancel grace, and the one process lives on."""
    knobs = Knobs(prompt_delay=1000.0, ignore_cancel=True, close_delay=0.0)
    async with rig(tmp_path, knobs, probe_interval=10.0, stale_grace=20.0,
                   idle_ttl=3600.0) as r:
        share(r)
        await r.start_pool()
        chats = await open_chats(r, tmp_path, 2)
        turns = {chat: await prompt(r, chat) for chat in chats}
        started = trio.current_time()
        for chat, turn in turns.items():
            ended = await r.hub.wait_turn_end(chat, turn)
            assert ended.error is not None
            assert "session unresponsive" in ended.error
        assert 30.0 <= trio.current_time() - started < 31.0
        for chat in chats:
            await r.hub.wait_state(chat, State.READY, count=2)
        assert len(r.executor.spawned) == 1
        assert r.executor.live == r.executor.spawned
        assert r.executor.methods.count("session/close") == 2
        assert r.executor.methods.count("session/resume") == 2


async def test_a_process_that_stops_answering_is_killed_ending_every_turn(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    knobs = Knobs(hang_on_prompt=True)
    async with rig(tmp_path, knobs, probe_interval=10.0, stale_grace=20.0,
                   idle_ttl=3600.0) as r:
        share(r)
        pool = await r.start_pool()
        chats = await open_chats(r, tmp_path, 3)
        for chat in chats:  # every session set up on the one process before it hangs
            await pool.warm(chat)
        knobs.hang_on_prompt = False  # for the next process
        started = trio.current_time()
        turns = {chat: await prompt(r, chat) for chat in chats}
        for chat, turn in turns.items():
            ended = await r.hub.wait_turn_end(chat, turn)
            assert ended.error is not None
            assert "agent unresponsive" in ended.error
        # A probe interval plus the grace, then at most 2 s for the cancel (as per-chat).
        assert 30.0 <= trio.current_time() - started <= 32.0
        assert not r.executor.spawned[0].alive
        again = {chat: await prompt(r, chat) for chat in chats}
        for chat, turn in again.items():
            assert (await r.hub.wait_turn_end(chat, turn)).stop_reason == "end_turn"
        assert len(r.executor.spawned) == 2

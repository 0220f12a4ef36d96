"""Issue 23: shared agent processes. Many chats' ACP sessions on one warm echo-agent
process (`process = "shared"`), against the real daemon: routing by session, a `kill -9`
of the shared process mid-turn, cancel and a stuck session without harm to the
neighbours, eviction down to the process's stop, a second process past
`sessions_per_process`, and bad config values."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from daemon.client import Client
from daemon.config import file as config_file
from daemon.config.agents import registry
from daemon.errors import ConfigError
from protocol import deltas as d
from protocol import messages as m
from tests.support.acp_tee import ClientSchema, read_trace, tee_command, traces
from tests.support.harness import (
    DaemonFactory,
    DaemonProcess,
    actor,
    agent_pid,
    alive,
    open_chat,
    replay,
    short_tmpdir,
    subscribe,
    wait_actor,
    wait_for_delta,
    wait_gone,
    wait_log,
)
from tests.support.remote_rig import SshServer, start_remote

FAST = {"sweep_interval": "100ms", "restart_backoff": "100ms", "restart_backoff_max": "1s",
        "idle_ttl": "1h"}


def shared_config(agent: dict[str, Any] | None = None, **lifecycle: Any) -> str:
    """The built-in echo agent made shared, with a fast `[lifecycle]` for tests."""
    keys = {"command": [sys.executable, "-m", "daemon.echo_agent"], "process": "shared",
            **(agent or {})}
    merged = {**FAST, **lifecycle}
    return ("[agents.echo]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
            + "[lifecycle]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                        for k, v in merged.items()))


async def open_chats(client: Client, daemon: DaemonProcess, count: int) -> list[str]:
    chats = []
    for index in range(count):
        info = await open_chat(client, f"c{index}", cwd=daemon.work)
        await subscribe(client, info.chat)
        chats.append(info.chat)
    return chats


async def prompt(client: Client, chat: str, text: str) -> int:
    accepted: m.PromptAccepted = await client.request(m.Prompt(id=0, chat=chat, text=text))
    return accepted.turn


async def run_turns(client: Client, prompts: dict[str, str], timeout: float
                    ) -> dict[str, tuple[d.TurnEnded, str]]:
    """Send every chat its prompt at once; each chat's turn_ended and the text its deltas
    carried (a chat's deltas counted for it alone)."""
    turns = {chat: await prompt(client, chat, text) for chat, text in prompts.items()}
    ends: dict[str, d.TurnEnded] = {}
    texts: dict[str, str] = {chat: "" for chat in prompts}
    with trio.fail_after(timeout):
        while len(ends) < len(prompts):
            event = await client.next_event()
            if not isinstance(event, d.Delta) or event.chat not in turns:
                continue
            if event.turn != turns[event.chat]:
                continue
            if isinstance(event.body, d.Text):
                texts[event.chat] += event.body.text
            elif isinstance(event.body, d.TurnEnded):
                assert event.chat not in ends, f"{event.chat}: turn ended twice"
                ends[event.chat] = event.body
    return {chat: (ends[chat], texts[chat]) for chat in prompts}


async def every_turn_ended_once(client: Client, chat: str) -> list[d.Delta]:
    assert client.socket_path is not None
    async with Client.connect(client.socket_path, client="audit") as audit:
        deltas = await replay(audit, chat)
    started = [x.turn for x in deltas if isinstance(x.body, d.TurnStarted)]
    ended = [x.turn for x in deltas if isinstance(x.body, d.TurnEnded)]
    assert sorted(started) == sorted(ended), (chat, started, ended)
    assert len(ended) == len(set(ended)), f"{chat}: a turn ended twice: {ended}"
    return deltas


async def test_eight_chats_share_one_process_and_each_sees_only_its_own_deltas(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=shared_config())
    daemon.start()
    async with daemon.client() as client:
        chats = await open_chats(client, daemon, 8)
        pids = {chat: await agent_pid(client, chat) for chat in chats}
        assert len(set(pids.values())) == 1, pids
        # Interleaved: every chat streams at once, each its own words.
        words = 40
        prompts = {chat: " ".join(f"{chat}-w{i}" for i in range(words)) for chat in chats}
        results = await run_turns(client, prompts, timeout=30 + 2 * len(chats))
        for chat, (ended, text) in results.items():
            assert ended.error is None, (chat, ended.error)
            assert text == prompts[chat], (chat, text[:200])
        # Each chat has a session of its own on the one process.
        detail = {chat: await actor(client, chat) for chat in chats}
        assert len({a.session_id for a in detail.values()}) == len(chats)
        assert {a.pid for a in detail.values()} == set(pids.values())
        for a in detail.values():
            assert a.process is not None
            assert a.process.sessions == len(chats)
            assert a.process.pid == a.pid
            assert a.rss is not None  # this chat's share of the process's RSS
        agents: m.AgentsResult = await client.request(m.ListAgents(id=0))
        assert {a.name: a.process for a in agents.agents}["echo"] == "shared"
        listing = daemon.cli("ls")
        assert f"{pids[chats[0]]}*" in listing.stdout
        assert "a shared agent process" in listing.stdout
        shown = daemon.cli("inspect", chats[0]).stdout
        assert f"shared echo@local#1 (pid {pids[chats[0]]}, {len(chats)} sessions)" in shown
        for chat in chats:
            await every_turn_ended_once(client, chat)


async def test_floods_on_one_shared_process_are_batched_per_session(
        daemon_factory: DaemonFactory) -> None:
    """Chunks arrive in reads mixing sessions: each session's run is published to its own
    chat as one batch (coalesced like a process of its own), the texts never cross."""
    daemon = daemon_factory(config=shared_config())
    daemon.start()
    chunks = 5000
    async with daemon.client() as client:
        chats = await open_chats(client, daemon, 2)
        assert len({await agent_pid(client, chat) for chat in chats}) == 1
        expected = "c0" + "".join(f" c{i}" for i in range(1, chunks))
        results = await run_turns(client, {chat: f"/chunks {chunks}" for chat in chats},
                                  timeout=120)
        for chat, (ended, text) in results.items():
            assert ended.error is None, (chat, ended.error)
            assert text == expected, (chat, len(text))
            deltas = await every_turn_ended_once(client, chat)
            texts = [x for x in deltas if isinstance(x.body, d.Text)]
            # The echo agent writes 256 chunks per flush: far fewer deltas than chunks.
            assert len(texts) < chunks // 4, (chat, len(texts))


async def test_kill_9_of_the_shared_process_ends_each_open_turn_once_and_sessions_resume(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=shared_config())
    daemon.start()
    async with daemon.client() as client:
        chats = await open_chats(client, daemon, 8)
        for chat in chats:
            assert (await run_turns(client, {chat: f"/remember {chat}-memo"}, 30))[chat][
                1] == f"remembered {chat}-memo"
        details = [await actor(client, chat) for chat in chats]
        pids = {a.pid for a in details}
        assert len(pids) == 1, pids
        pid = pids.pop()
        assert pid is not None
        sessions = {a.session_id for a in details}
        turns = {chat: await prompt(client, chat, "/slow 60000") for chat in chats}
        for chat in chats:
            await wait_actor(client, chat, lambda a: a.state == "busy")
        os.kill(pid, signal.SIGKILL)
        ends: dict[str, d.TurnEnded] = {}
        with trio.fail_after(30):
            while len(ends) < len(chats):
                event = await client.next_event()
                if (isinstance(event, d.Delta) and isinstance(event.body, d.TurnEnded)
                        and event.turn == turns.get(event.chat)):
                    assert event.chat not in ends, f"{event.chat}: turn ended twice"
                    ends[event.chat] = event.body
        for chat, ended in ends.items():
            assert ended.error is not None, chat
            assert "killed by SIGKILL" in ended.error, (chat, ended.error)
            assert "shared process" in ended.error
        # Every chat's next prompt works, on its own session, resumed on a new process.
        recalled = await run_turns(client, {chat: "/recall" for chat in chats},
                                   timeout=30 + 2 * len(chats))
        for chat, (ended, text) in recalled.items():
            assert ended.error is None, (chat, ended.error)
            assert text == f"{chat}-memo", (chat, text)
        after = [await actor(client, chat) for chat in chats]
        assert {a.session_id for a in after} == sessions
        new_pids = {a.pid for a in after}
        assert len(new_pids) == 1, new_pids
        assert pid not in new_pids
        for chat in chats:
            await every_turn_ended_once(client, chat)


def test_bad_shared_process_values_are_rejected_naming_file_line_and_key() -> None:
    base = '[agents.q]\ncommand = ["qwen", "--acp"]\n'
    cases = {
        'process = "forked"': ("cfg.toml:3: [agents.q] process: 'forked' is not a choice; "
                               'use "per-chat" or "shared"'),
        'shared_by = "host"': ("cfg.toml:3: [agents.q] shared_by: 'host' is not a choice; "
                               'use "computer" or "cwd"'),
        "sessions_per_process = 0": ("cfg.toml:3: [agents.q] sessions_per_process: 0 must be "
                                     "a whole number of at least 1"),
        'sessions_per_process = "many"': ("cfg.toml:3: [agents.q] sessions_per_process: "
                                          "'many' must be a whole number of at least 1"),
    }
    for line, message in cases.items():
        with pytest.raises(ConfigError) as error:
            config_file.parse(base + line + "\n", source="cfg.toml")
        assert error.value.message == message
    good = config_file.parse(base + 'process = "shared"\nshared_by = "cwd"\n'
                             "sessions_per_process = 4\n", source="cfg.toml")
    spec = registry(good)["q"]
    assert (spec.shared, spec.shared_by, spec.sessions_per_process) == (True, "cwd", 4)
    assert not registry(config_file.parse(base))["q"].shared


def statuses(deltas: list[d.Delta]) -> list[str]:
    return [x.body.state for x in deltas if isinstance(x.body, d.Status)]


async def test_cancel_in_one_chat_leaves_the_others_turns_running(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=shared_config())
    daemon.start()
    async with daemon.client() as client:
        chats = await open_chats(client, daemon, 3)
        pid = await agent_pid(client, chats[0])
        first, others = chats[0], chats[1:]
        turns = {first: await prompt(client, first, "/slow 60000")}
        for chat in others:
            turns[chat] = await prompt(client, chat, "/slow 3000")
        for chat in chats:
            await wait_actor(client, chat, lambda a: a.state == "busy")
        await client.request(m.Cancel(id=0, chat=first, turn=turns[first]))
        order: list[str] = []
        ends: dict[str, d.TurnEnded] = {}
        texts: dict[str, str] = {chat: "" for chat in chats}
        with trio.fail_after(30):
            while len(ends) < len(chats):
                event = await client.next_event()
                if not isinstance(event, d.Delta) or event.turn != turns.get(event.chat):
                    continue
                if isinstance(event.body, d.Text):
                    texts[event.chat] += event.body.text
                elif isinstance(event.body, d.TurnEnded):
                    order.append(event.chat)
                    ends[event.chat] = event.body
        assert order[0] == first, order
        assert ends[first].stop_reason == "cancelled"
        for chat in others:
            assert ends[chat].error is None, ends[chat].error
            assert ends[chat].stop_reason == "end_turn"
            assert texts[chat] == "slow 3000"
        assert {(await actor(client, chat)).pid for chat in chats} == {pid}
        for chat in chats:
            assert "crashed" not in statuses(await every_turn_ended_once(client, chat))


async def test_a_stuck_session_is_cancelled_without_killing_its_neighbours(
        daemon_factory: DaemonFactory) -> None:
    """`/stall`: one session silent and deaf to session/cancel while the process answers
    probes. Its turn ends stale, its generation (not the process) is replaced and its
    session resumed; the neighbour's turns run on throughout on the same process."""
    daemon = daemon_factory(config=shared_config(probe_interval="300ms", stale_grace="1s"))
    daemon.start()
    async with daemon.client("a") as ca, daemon.client("b") as cb:
        stuck = (await open_chat(ca, "stuck", cwd=daemon.work)).chat
        busy = (await open_chat(cb, "busy", cwd=daemon.work)).chat
        await subscribe(ca, stuck)
        await subscribe(cb, busy)
        assert (await run_turns(ca, {stuck: "/remember mine"}, 30))[stuck][1] == (
            "remembered mine")
        pid = (await actor(ca, stuck)).pid
        session = (await actor(ca, stuck)).session_id
        stalled = await prompt(ca, stuck, "/stall")
        ended: list[d.TurnEnded] = []

        async def watch() -> None:
            delta = await wait_for_delta(
                ca, lambda e: e.chat == stuck and e.turn == stalled
                and isinstance(e.body, d.TurnEnded), timeout=30)
            assert isinstance(delta.body, d.TurnEnded)
            ended.append(delta.body)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            neighbour_turns = 0
            while not ended or neighbour_turns < 2:
                result = await run_turns(cb, {busy: "/slow 200"}, 30)
                assert result[busy][0].error is None, result[busy][0].error
                neighbour_turns += 1
        error = ended[0].error
        assert error is not None
        assert "session unresponsive" in error, error
        # The stuck chat's next prompt works on the same process, its session resumed.
        recalled = await run_turns(ca, {stuck: "/recall"}, 30)
        assert recalled[stuck][0].error is None, recalled[stuck][0].error
        assert recalled[stuck][1] == "mine"
        assert (await actor(ca, stuck)).session_id == session
        assert (await actor(cb, busy)).pid == pid
        assert (await actor(ca, stuck)).pid == pid
        assert "crashed" not in statuses(await every_turn_ended_once(cb, busy))
        await every_turn_ended_once(ca, stuck)


async def test_an_unresponsive_shared_process_is_killed_ending_every_chats_turn(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=shared_config(probe_interval="300ms", stale_grace="1s"))
    daemon.start()
    async with daemon.client() as client:
        chats = await open_chats(client, daemon, 3)
        pids = {await agent_pid(client, chat) for chat in chats}
        assert len(pids) == 1, pids
        pid = pids.pop()
        turns = {chats[0]: await prompt(client, chats[0], "/hang")}
        for chat in chats[1:]:
            turns[chat] = await prompt(client, chat, "/slow 60000")
        ends: dict[str, d.TurnEnded] = {}
        with trio.fail_after(30):
            while len(ends) < len(chats):
                event = await client.next_event()
                if (isinstance(event, d.Delta) and isinstance(event.body, d.TurnEnded)
                        and event.turn == turns.get(event.chat)):
                    assert event.chat not in ends
                    ends[event.chat] = event.body
        for chat, body in ends.items():
            assert body.error is not None, chat
            assert "unresponsive" in body.error, (chat, body.error)
        await wait_gone([pid])
        after = await run_turns(client, {chat: "again" for chat in chats}, 30)
        for chat, (body, text) in after.items():
            assert body.error is None, (chat, body.error)
            assert text == "again"
        new = {(await actor(client, chat)).pid for chat in chats}
        assert len(new) == 1, new
        assert pid not in new


async def test_idle_chats_close_their_sessions_and_the_process_stops_with_the_last(
        daemon_factory: DaemonFactory) -> None:
    """Eviction: each chat idling out closes its session (`session/close`) and leaves; the
    process stops when its last session has gone. Everything the daemon sent to the shared
    agent is valid ACP (recorded by the tee)."""
    traces_dir = short_tmpdir("shtee")
    prefix = traces_dir / "shared"
    command = tee_command(prefix, [sys.executable, "-m", "daemon.echo_agent"])
    daemon = daemon_factory(config=shared_config({"command": command}, idle_ttl="1s"))
    daemon.start()
    async with daemon.client() as client:
        chats = await open_chats(client, daemon, 3)
        # (Nothing here reads the chats while warm: they idle out after a second.)
        results = await run_turns(client, {chat: "/pid" for chat in chats}, 30)
        assert all(ended.error is None for ended, _ in results.values())
        pids = {int(text) for _, text in results.values()}
        assert len(pids) == 1, pids
        sessions = set()
        for chat in chats:
            hibernated = await wait_actor(client, chat, lambda a: a.state == "hibernated")
            assert hibernated.process is None
            sessions.add(hibernated.session_id)
        assert len(sessions) == len(chats)
        await wait_gone(pids)
        recorded = traces(traces_dir)
        assert len(recorded) == 1, recorded  # one agent process served the three chats
        sent, received = read_trace(recorded[0])
        closed = {m["params"]["sessionId"] for m in sent if m.get("method") == "session/close"}
        assert closed == sessions
        assert sum(1 for m in sent if m.get("method") == "initialize") == 1
        ClientSchema().validate(sent, received)
        # The next prompt starts a process again and resumes the chat's session.
        again = await run_turns(client, {chats[0]: "back"}, 30)
        assert again[chats[0]][0].error is None
        assert (await actor(client, chats[0])).session_id in sessions


async def test_past_sessions_per_process_another_process_starts(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=shared_config({"sessions_per_process": 2}))
    daemon.start()
    async with daemon.client() as client:
        chats = await open_chats(client, daemon, 5)
        pids = {chat: await agent_pid(client, chat) for chat in chats}
        by_pid: dict[int, list[str]] = {}
        for chat, pid in pids.items():
            by_pid.setdefault(pid, []).append(chat)
        assert sorted(len(c) for c in by_pid.values()) == [1, 2, 2], by_pid
        listing: m.ChatList = await client.request(m.ListChats(id=0))
        processes = {c.chat: c.process for c in listing.chats}
        for chat, pid in pids.items():
            process = processes[chat]
            assert process is not None
            assert process.pid == pid
            assert process.sessions == len(by_pid[pid])
        assert len({p.id for p in processes.values() if p is not None}) == 3
        # Chats on different processes still stream at once, each its own words.
        results = await run_turns(client, {chat: f"{chat} one two" for chat in chats}, 30)
        for chat, (ended, text) in results.items():
            assert ended.error is None
            assert text == f"{chat} one two"


async def test_shared_by_cwd_gives_each_working_directory_its_process(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=shared_config({"shared_by": "cwd"}))
    daemon.start()
    async with daemon.client() as client:
        other = daemon.work / "other"
        other.mkdir()
        pids: dict[str, int] = {}
        for name, cwd in (("a1", daemon.work), ("a2", daemon.work), ("b1", other)):
            await open_chat(client, name, cwd=cwd)
            pids[name] = await agent_pid(client, name)
        assert pids["a1"] == pids["a2"]
        assert pids["b1"] != pids["a1"]


async def test_each_chats_permissions_files_and_terminals_stay_its_own(
        daemon_factory: DaemonFactory) -> None:
    """The agent's requests are routed by session: a permission request reaches its chat
    only, and fs/* and terminal/* are confined to the asking chat's directory."""
    daemon = daemon_factory(config=shared_config())
    daemon.start()
    async with daemon.client() as client:
        dirs = {name: daemon.work / name for name in ("a", "b")}
        for name, path in dirs.items():
            path.mkdir()
            await open_chat(client, name, cwd=path)
            await subscribe(client, name)
        assert await agent_pid(client, "a") == await agent_pid(client, "b")
        asking = await prompt(client, "a", "/permission")
        request = await wait_for_delta(
            client, lambda e: isinstance(e.body, d.PermissionRequest), timeout=30)
        assert request.chat == "a"
        assert request.turn == asking
        # Meanwhile b works in its own directory, and only there.
        wrote = await run_turns(client, {"b": "/write notes.txt hello"}, 30)
        assert wrote["b"][1] == f"wrote {dirs['b']}/notes.txt"
        assert (dirs["b"] / "notes.txt").read_text() == "hello"
        ran = await run_turns(client, {"b": "/terminal pwd"}, 30)
        assert ran["b"][1].startswith(str(dirs["b"])), ran["b"][1]
        assert isinstance(request.body, d.PermissionRequest)
        await client.request(m.Permit(id=0, chat="a", request=request.body.request,
                                      option="allow"))
        answered = await wait_for_delta(
            client, lambda e: e.chat == "a" and e.turn == asking
            and isinstance(e.body, d.Text), timeout=30)
        assert isinstance(answered.body, d.Text)
        assert answered.body.text == "permission: allow"
        denied = await run_turns(client, {"a": f"/read {dirs['b']}/notes.txt"}, 30)
        assert denied["a"][1].startswith("error:"), denied["a"][1]


async def test_a_daemon_kill_9_reclaims_the_shared_process_and_every_chat_resumes(
        daemon_factory: DaemonFactory) -> None:
    """Every chat's record names the shared process: the next daemon kills it once (the
    agent ignores EOF, so it really is an orphan) and each chat resumes its session on a
    new one."""
    command = [sys.executable, "-m", "daemon.echo_agent", "--linger"]
    daemon = daemon_factory(config=shared_config({"command": command}))
    daemon.start()
    async with daemon.client() as client:
        chats = await open_chats(client, daemon, 3)
        for chat in chats:
            assert (await run_turns(client, {chat: f"/remember {chat}-word"}, 30))[chat][
                1] == f"remembered {chat}-word"
        pids = {(await actor(client, chat)).pid for chat in chats}
    assert len(pids) == 1, pids
    pid = pids.pop()
    assert pid is not None
    daemon.kill9()
    assert alive(pid)
    daemon.start()
    assert not alive(pid)  # reclaimed before the daemon accepts clients
    async with daemon.client() as client:
        for chat in chats:
            await subscribe(client, chat)
            assert "reclaimed" in (await actor(client, chat)).reason
        recalled = await run_turns(client, {chat: "/recall" for chat in chats}, 30)
        for chat, (ended, text) in recalled.items():
            assert ended.error is None, ended.error
            assert text == f"{chat}-word"
        assert len({(await actor(client, chat)).pid for chat in chats}) == 1


async def test_a_session_waiting_on_a_permission_or_in_a_tool_call_is_not_stuck(
        daemon_factory: DaemonFactory) -> None:
    """Silence while a permission waits for a human, or while a tool call is open, is not
    a stuck session: the process's answers to probes count for it (as per-chat)."""
    daemon = daemon_factory(config=shared_config(probe_interval="300ms", stale_grace="1s"))
    daemon.start()
    async with daemon.client() as client:
        chats = await open_chats(client, daemon, 2)
        asking, tooling = chats
        assert await agent_pid(client, asking) == await agent_pid(client, tooling)
        waiting = await prompt(client, asking, "/permission")
        request = await wait_for_delta(
            client, lambda e: isinstance(e.body, d.PermissionRequest), timeout=30)
        # Far past the stale threshold (1.3 s) in a silent, open tool call.
        tool = await run_turns(client, {tooling: "/tool-open /sleep 3000"}, 30)
        assert tool[tooling][0].error is None, tool[tooling][0].error
        assert tool[tooling][1] == "slept 3000"
        assert isinstance(request.body, d.PermissionRequest)
        await client.request(m.Permit(id=0, chat=asking, request=request.body.request,
                                      option="allow"))
        ended = await wait_for_delta(
            client, lambda e: e.chat == asking and e.turn == waiting
            and isinstance(e.body, d.TurnEnded), timeout=30)
        assert isinstance(ended.body, d.TurnEnded)
        assert ended.body.error is None, ended.body.error
        assert "session unresponsive" not in daemon.log_text()


async def test_a_reload_into_shared_mode_recycles_warm_chats_onto_one_process(
        daemon_factory: DaemonFactory) -> None:
    per_chat = shared_config({"process": "per-chat"})
    daemon = daemon_factory(config=per_chat)
    daemon.start()
    async with daemon.client() as client:
        chats = await open_chats(client, daemon, 3)
        for chat in chats:
            await run_turns(client, {chat: f"/remember {chat}-x"}, 30)
        before = {(await actor(client, chat)).pid for chat in chats}
        assert len(before) == 3
        daemon.write_config(shared_config())
        mark = len(daemon.log_text())
        reload = await trio.to_thread.run_sync(lambda: daemon.cli("reload"))
        assert reload.returncode == 0, reload.stderr
        line = await wait_log(daemon, r'event="config reloaded" .*', after=mark)
        assert "recycled=3" in line.group(0)
        for chat in chats:
            await wait_actor(client, chat, lambda a: a.state == "hibernated")
        recalled = await run_turns(client, {chat: "/recall" for chat in chats}, 30)
        for chat, (ended, text) in recalled.items():
            assert ended.error is None, ended.error
            assert text == f"{chat}-x"
        after = {(await actor(client, chat)).pid for chat in chats}
        assert len(after) == 1, after
        assert not after & before
        # A reload refusing a bad value keeps the running config (and its shared process).
        daemon.write_config(shared_config({"sessions_per_process": 0}))
        refused = await trio.to_thread.run_sync(lambda: daemon.cli("reload"))
        assert refused.returncode == 1
        assert "sessions_per_process: 0 must be a whole number of at least 1" in refused.stderr
        assert {(await actor(client, chat)).pid for chat in chats} == after


@pytest.fixture
def sshd() -> Iterator[SshServer]:
    """Request it *before* `daemon_factory` (it must outlive the daemon)."""
    server = SshServer()
    yield server
    server.stop()
    if os.environ.get("STOKER_KEEP_TEST_DIRS") != "1":
        subprocess.run(["rm", "-rf", str(server.base)], check=False)


async def test_chats_share_one_process_on_a_remote_computer(
        sshd: SshServer, daemon_factory: DaemonFactory) -> None:
    """Over SSH: one remote process (in the login directory) for three chats, each chat's
    files in its own remote directory, and a kill -9 of it resumed by every chat."""
    daemon = start_remote(sshd, daemon_factory, extra='process = "shared"\n',
                          lifecycle='idle_ttl = "1h"\n')
    async with daemon.client() as client:
        chats = []
        for name in ("r1", "r2", "r3"):
            cwd = sshd.work / name
            cwd.mkdir()
            await open_chat(client, name, agent="recho", cwd=cwd)
            await subscribe(client, name)
            chats.append(name)
        wrote = await run_turns(client, {chat: f"/write mine.txt {chat}" for chat in chats}, 60)
        for chat, (ended, text) in wrote.items():
            assert ended.error is None, ended.error
            assert text == f"wrote {sshd.work / chat}/mine.txt"
            assert (sshd.work / chat / "mine.txt").read_text() == chat
        pids = {(await actor(client, chat, "recho")).pid for chat in chats}
        assert len(pids) == 1, pids
        pid = pids.pop()
        assert pid is not None
        turns = {chat: await prompt(client, chat, "/slow 60000") for chat in chats}
        for chat in chats:
            await wait_actor(client, chat, lambda a: a.state == "busy", agent="recho")
        os.kill(pid, signal.SIGKILL)
        ends: dict[str, d.TurnEnded] = {}
        with trio.fail_after(30):
            while len(ends) < len(chats):
                event = await client.next_event()
                if (isinstance(event, d.Delta) and isinstance(event.body, d.TurnEnded)
                        and event.turn == turns.get(event.chat)):
                    ends[event.chat] = event.body
        assert all(body.error is not None for body in ends.values()), ends
        read = await run_turns(client, {chat: "/read mine.txt" for chat in chats}, 60)
        for chat, (ended, text) in read.items():
            assert ended.error is None, ended.error
            assert text == chat
        after = {(await actor(client, chat, "recho")).pid for chat in chats}
        assert len(after) == 1, after
        assert pid not in after

"""`stoker acp`: the official Python ACP SDK as the editor, in its own process, against the
real daemon and the real echo agent. Every line `stoker acp` writes is validated against the
official schema when each editor closes (see tests/support/acp_bridge_helpers.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import msgspec
import psutil
import pytest
import trio

from daemon.client import Client
from protocol import deltas as d
from protocol import messages as m
from tests.support.acp_bridge_helpers import Editor, EditorError, open_editor
from tests.support.acp_peer import RpcError, open_agent
from tests.support.harness import (
    DaemonFactory,
    DaemonProcess,
    actor,
    subscribe,
    wait_actor,
    wait_for_delta,
    wait_gone,
    wait_state,
    wait_turn_end,
)


async def _start(editor: Editor, daemon: DaemonProcess) -> str:
    await editor.call("initialize")
    new = await editor.call("new_session", cwd=str(daemon.work))
    session: str = new["sessionId"]
    return session


def _editor_name(editor: Editor) -> str:
    """The `by` of this editor's turns: `stoker acp` says hello as acp:EDITOR:PID."""
    return f"acp:sdk-editor:{editor.agent_pid}"


async def test_editor_initializes_prompts_cancels_and_lists(daemon: DaemonProcess) -> None:
    async with open_editor(daemon) as editor:
        init = await editor.call("initialize")
        assert init["protocolVersion"] == 1
        caps = init["agentCapabilities"]
        assert caps["loadSession"] is True
        assert caps["sessionCapabilities"] == {"list": {}, "resume": {}, "close": {}}
        # The backend's own capabilities, as the daemon learnt them from its initialize.
        assert caps["promptCapabilities"]["image"] is True
        assert init["agentInfo"]["title"] == "Stoker (echo)"

        new = await editor.call("new_session", cwd=str(daemon.work))
        session = new["sessionId"]
        assert new["modes"]["currentModeId"] == "default"
        assert [o["id"] for o in new["configOptions"]] == ["model", "verbose"]

        mark = len(editor.messages)
        result = await editor.call("prompt", sessionId=session, text="hello warm world")
        assert result == {"stopReason": "end_turn"}
        chunks = editor.updates(session, mark, kind="agent_message_chunk")
        assert [c["content"]["text"] for c in chunks] == ["hello", " warm", " world"]
        # The editor's own prompt is not echoed back to it as a user message.
        assert editor.updates(session, mark, kind="user_message_chunk") == []

        await editor.call("set_mode", sessionId=session, modeId="plan")
        configured = await editor.call("set_config", sessionId=session, configId="model",
                                       value="echo-2")
        model = next(o for o in configured["configOptions"] if o["id"] == "model")
        assert model["currentValue"] == "echo-2"

        async with daemon.client() as client:
            # The session is a daemon chat: same id, same directory, same agent settings.
            a = await actor(client, session)
            assert a.modes is not None
            assert a.modes["currentModeId"] == "plan"
            running = await editor.send("prompt", sessionId=session, text="/sleep 10000")
            await wait_state(client, session, "busy")
            start = trio.current_time()
            await editor.call("cancel", sessionId=session)
            assert await editor.reply(running) == {"stopReason": "cancelled"}
            assert trio.current_time() - start < 2.0
            assert (await actor(client, session)).pid == a.pid

        listed = await editor.call("list_sessions", cwd=str(daemon.work))
        assert [s["sessionId"] for s in listed["sessions"]] == [session]
        assert listed["sessions"][0]["cwd"] == str(daemon.work.resolve())
        elsewhere = await editor.call("list_sessions", cwd="/")
        assert elsewhere["sessions"] == []

        with pytest.raises(EditorError) as failure:
            await editor.call("prompt", sessionId="no-such-chat", text="hi")
        assert failure.value.code == -32002


async def test_load_replays_history_and_resume_does_not(daemon: DaemonProcess) -> None:
    async with open_editor(daemon) as first:
        session = await _start(first, daemon)
        await first.call("prompt", sessionId=session, text="remember this")
        await first.call("prompt", sessionId=session, text="/tool")
        pid = int(await _pid_of(first, session))
    async with daemon.client() as client:
        # The editor went away (EOF): the chat and its agent stay warm.
        a = await actor(client, session)
        assert a.state == "ready"
        assert a.pid == pid
        assert a.generation == 1

    async with open_editor(daemon) as second:
        await second.call("initialize")
        mark = len(second.messages)
        resumed = await second.call("resume_session", sessionId=session, cwd=str(daemon.work))
        assert resumed["modes"]["currentModeId"] == "default"
        assert second.updates(session, mark) == []

        mark = len(second.messages)
        loading = await second.send("load_session", sessionId=session, cwd=str(daemon.work))
        loaded = await second.reply(loading)
        assert "configOptions" in loaded
        replay = second.updates(session, mark, second.reply_index(loading))
        conversation = [(u["sessionUpdate"], u["content"].get("text")) for u in replay
                        if u["sessionUpdate"].endswith("_chunk")]
        assert conversation[:4] == [
            ("user_message_chunk", "remember this"),
            ("agent_message_chunk", "remember"), ("agent_message_chunk", " this"),
            ("user_message_chunk", "/tool"),
        ]
        tools = [u for u in replay if u["sessionUpdate"].startswith("tool_call")]
        assert [(u["sessionUpdate"], u.get("status")) for u in tools] == [
            ("tool_call", "pending"), ("tool_call_update", "in_progress"),
            ("tool_call_update", "completed")]
        replayed_text = second.text(session, mark, second.reply_index(loading))
        assert replayed_text == f"remember thistool done{pid}"

        # Same warm process, now driven from the second editor.
        assert int(await _pid_of(second, session)) == pid
        await second.call("close_session", sessionId=session)
    async with daemon.client() as client:
        listed = await client.request(m.ListChats(id=0, include_closed=True))
        assert [c.closed for c in listed.chats if c.chat == session] == [True]


async def _pid_of(editor: Editor, session: str) -> str:
    mark = len(editor.messages)
    await editor.call("prompt", sessionId=session, text="/pid")
    return editor.text(session, mark)


async def test_permission_reaches_the_editor_and_the_first_answer_wins(
        daemon: DaemonProcess) -> None:
    async with open_editor(daemon) as editor, daemon.client() as client:
        session = await _start(editor, daemon)
        await subscribe(client, session)

        # Answered by the editor.
        mark = len(editor.messages)
        prompt = await editor.send("prompt", sessionId=session, text="/permission")
        asked = await editor.wait_event("permission", mark)
        assert asked["sessionId"] == session
        assert [o["optionId"] for o in asked["options"]] == ["allow", "always", "reject"]
        assert asked["toolCall"]["title"] == "echo wants permission"
        await editor.call("answer", key=asked["key"], optionId="allow")
        assert await editor.reply(prompt) == {"stopReason": "end_turn"}
        assert editor.text(session, mark).endswith("permission: allow")
        resolved = await wait_for_delta(client, lambda x: isinstance(
            x.body, d.PermissionResolved))
        assert isinstance(resolved.body, d.PermissionResolved)
        assert resolved.body.by == _editor_name(editor)

        # Answered elsewhere first: the editor's prompt is withdrawn ($/cancel_request).
        mark = len(editor.messages)
        prompt = await editor.send("prompt", sessionId=session, text="/permission")
        asked = await editor.wait_event("permission", mark)
        request = await wait_for_delta(client, lambda x: isinstance(
            x.body, d.PermissionRequest))
        assert isinstance(request.body, d.PermissionRequest)
        await client.request(m.Permit(id=0, chat=session, request=request.body.request,
                                      option="reject"))
        withdrawn = await editor.wait_event("withdrawn", mark)
        assert withdrawn["rpcId"] == asked["rpcId"]
        assert await editor.reply(prompt) == {"stopReason": "end_turn"}
        assert editor.text(session, mark).endswith("permission: reject")


async def test_editor_and_attach_see_the_same_deltas_in_order(daemon: DaemonProcess) -> None:
    async with open_editor(daemon) as editor, daemon.client("other") as other:
        session = await _start(editor, daemon)
        head = (await other.request(m.Inspect(id=0, chat=session))).chat.head_seq
        attach = await trio.lowlevel.open_process(
            [sys.executable, "-m", "daemon.cli", "attach", session, "--json",
             "--since", str(head)], stdout=subprocess.PIPE, env=daemon.env())
        try:
            log = DeltaLog()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(log.read, attach)
                # A prompt from another client, queued while the editor's turn runs...
                slow = await editor.send("prompt", sessionId=session, text="/slow 800")
                await wait_state(other, session, "busy")
                await other.request(m.Prompt(id=0, chat=session, text="queued meanwhile"))
                assert await editor.reply(slow) == {"stopReason": "end_turn"}
                # ...and one from the CLI while the editor is idle: both stream to both.
                sent = await trio.to_thread.run_sync(
                    lambda: daemon.cli("send", "--chat", session, "hello from the cli"))
                assert sent.returncode == 0, sent.stderr
                await editor.call("prompt", sessionId=session, text="/tool")
                await log.wait(lambda ds: sum(isinstance(x.body, d.TurnEnded) for x in ds) == 4)
                nursery.cancel_scope.cancel()
        finally:
            attach.kill()
            await attach.wait()
        seen_by_attach = _project_deltas(log.deltas, _editor_name(editor))
        seen_by_editor = _project_updates(editor.updates(session))
        assert seen_by_editor == seen_by_attach
        assert seen_by_editor[:4] == [
            ("agent", "slow 800"),
            # Shown when its turn runs, not inside the editor's turn it was queued behind.
            ("user", "queued meanwhile"), ("agent", "queued"), ("agent", " meanwhile")]
        assert seen_by_editor[4:9] == [
            ("user", "hello from the cli"), ("agent", "hello"), ("agent", " from"),
            ("agent", " the"), ("agent", " cli")]
        assert [kind for kind, *_ in seen_by_editor[9:]] == [
            "tool_call", "tool_call_update", "tool_call_update", "agent"]


class DeltaLog:
    """The deltas `stoker attach --json` printed, as they come."""

    def __init__(self) -> None:
        self.deltas: list[d.Delta] = []
        self._changed = trio.Event()

    async def read(self, process: trio.Process) -> None:
        assert process.stdout is not None
        decoder = msgspec.json.Decoder(d.Delta)
        buffer = b""
        while data := await process.stdout.receive_some(1 << 16):
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            self.deltas.extend(decoder.decode(line) for line in lines if line.strip())
            self._changed.set()
            self._changed = trio.Event()

    async def wait(self, done: Any, timeout: float = 15.0) -> None:
        with trio.fail_after(timeout):
            while not done(self.deltas):
                await self._changed.wait()


def _project_deltas(deltas: list[d.Delta], own: str) -> list[tuple[Any, ...]]:
    """What of the chat's deltas a person watching sees, as comparable tuples: the agent's
    output and tool calls, and the prompts of other clients, each placed where its turn
    begins to run (at the turn's first delta)."""
    out: list[tuple[Any, ...]] = []
    prompts: dict[int, str] = {}
    for delta in deltas:
        body = delta.body
        if isinstance(body, d.TurnStarted):
            if body.by != own:
                prompts[delta.turn] = body.prompt
            continue
        if delta.turn in prompts:
            out.append(("user", prompts.pop(delta.turn)))
        if isinstance(body, d.Text):
            out.append(("agent", body.text))
        elif isinstance(body, d.ToolCall):
            out.append(("tool_call", body.tool_call_id, body.status))
        elif isinstance(body, d.ToolUpdate):
            out.append(("tool_call_update", body.tool_call_id, body.status))
    return out


def _project_updates(updates: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for update in updates:
        kind = update["sessionUpdate"]
        if kind == "user_message_chunk":
            out.append(("user", update["content"]["text"]))
        elif kind == "agent_message_chunk":
            out.append(("agent", update["content"]["text"]))
        elif kind in ("tool_call", "tool_call_update"):
            out.append((kind, update["toolCallId"], update.get("status")))
    return out


async def test_editor_killed_mid_turn_turn_completes_and_load_shows_it(
        daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        async with open_editor(daemon, check=False) as first:
            session = await _start(first, daemon)
            await subscribe(client, session)
            await first.send("prompt", sessionId=session, text="/slow 1500")
            started = await wait_for_delta(client, lambda x: isinstance(x.body, d.TurnStarted))
            await wait_state(client, session, "busy")
            first.kill()
            await first.process.wait()
            bridge = first.agent_pid
        # `stoker acp` sees EOF on stdin and leaves; the turn goes on in the daemon.
        await wait_gone([bridge])
        ended = await wait_for_delta(client, lambda x: isinstance(x.body, d.TurnEnded))
        assert ended.turn == started.turn
        assert isinstance(ended.body, d.TurnEnded)
        assert ended.body.stop_reason == "end_turn"
        # What the killed bridge wrote is still schema-valid, up to the kill.
        first.check_trace()

    async with open_editor(daemon) as second:
        await second.call("initialize")
        mark = len(second.messages)
        loading = await second.send("load_session", sessionId=session, cwd=str(daemon.work))
        await second.reply(loading)
        end = second.reply_index(loading)
        assert second.text(session, mark, end, kind="user_message_chunk") == "/slow 1500"
        assert second.text(session, mark, end) == "slow 1500"


async def test_failed_turn_is_an_error_and_the_bridge_survives_a_daemon_restart(
        daemon: DaemonProcess) -> None:
    async with open_editor(daemon) as editor:
        session = await _start(editor, daemon)
        running = await editor.send("prompt", sessionId=session, text="/sleep 20000")
        async with daemon.client() as client:
            await wait_state(client, session, "busy")
        assert await trio.to_thread.run_sync(daemon.stop) == 0
        # The turn ended with an error, not a stop reason: a JSON-RPC error answers it.
        with pytest.raises(EditorError) as failure:
            await editor.reply(running)
        assert failure.value.code == -32603
        assert "daemon shutting down" in failure.value.message
        assert failure.value.data["turn"] == 1

        await trio.to_thread.run_sync(daemon.start)
        # The bridge reconnects and resubscribes from its cursor; the session goes on.
        mark = len(editor.messages)
        result = await editor.call("prompt", sessionId=session, text="still here")
        assert result == {"stopReason": "end_turn"}
        assert editor.text(session, mark) == "still here"


async def test_without_a_daemon_initialize_fails_clearly_then_spawn_daemon_starts_one(
        daemon_factory: DaemonFactory) -> None:
    absent = daemon_factory()
    argv = [sys.executable, "-m", "daemon.cli", "acp", "--agent", "echo"]
    async with open_agent(argv, env=absent.env()) as peer:
        with pytest.raises(RpcError) as failure:
            await peer.initialize()
        assert "daemon is not running" in failure.value.message
        assert str(absent.socket) in failure.value.message
    assert peer.process.returncode == 0

    async with open_agent([*argv, "--spawn-daemon"], env=absent.env()) as peer:
        with trio.fail_after(30):
            init = await peer.initialize()
        assert init["agentCapabilities"]["loadSession"] is True
    async with Client.connect(absent.socket) as client:
        status = await client.request(m.GetStatus(id=0))
    spawned = psutil.Process(status.pid)
    spawned.send_signal(signal.SIGTERM)
    await trio.to_thread.run_sync(lambda: spawned.wait(20))
    log = (absent.state_dir / "daemon.log").read_text()
    assert "ready" in log, log[-2000:]



async def test_cancel_drops_the_editors_queued_prompt_not_another_clients_turn(
        daemon: DaemonProcess) -> None:
    async with open_editor(daemon) as editor:
        await editor.call("initialize")
        session = (await editor.call("new_session", cwd=str(daemon.work)))["sessionId"]
        async with daemon.client("cli") as client:
            await subscribe(client, session)
            other = await client.request(m.Prompt(id=0, chat=session, text="/sleep 1500"))
            await wait_state(client, session, "busy")
            mine = await editor.send("prompt", sessionId=session, text="never runs")
            # Wait until the editor's prompt is queued in the daemon behind the other turn.
            await wait_actor(client, session, lambda a: a.queued >= 1, timeout=10)
            await editor.call("cancel", sessionId=session)
            assert await editor.reply(mine) == {"stopReason": "cancelled"}
            ended = await wait_turn_end(client, session, other.turn)
            assert ended.stop_reason == "end_turn"
        assert "never runs" not in "".join(
            u["content"]["text"] for u in editor.updates(session, kind="agent_message_chunk"))

"""The built-in echo agent (daemon/echo_agent.py), driven as a real subprocess over ACP.

Every message the agent writes is validated against tests/data/acp/schema.json by the peer
(tests/support/acp_peer.py); the PromptResponse ``usage`` field and the ``x_echo_future`` update are
the deliberate exceptions.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.support.acp_peer import (
    AcpPeer,
    AcpSchema,
    AgentGone,
    Call,
    JsonObj,
    LocalFs,
    LocalTerminals,
    RpcError,
    open_agent,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOKER_ECHO_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def agent_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "daemon.echo_agent", *args]


@asynccontextmanager
async def echo(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    state: bool = True,
) -> AsyncIterator[AcpPeer]:
    """An echo agent whose state lives in tmp_path/state (unless ``state`` is False)."""
    argv = agent_argv(*(["--state-dir", str(tmp_path / "state")] if state else []), *args)
    async with open_agent(argv, env=env or agent_env(), cwd=REPO_ROOT) as peer:
        yield peer


async def session(peer: AcpPeer, tmp_path: Path, **caps: bool) -> str:
    await peer.initialize(**caps)
    return await peer.new_session(tmp_path)


async def start_load(peer: AcpPeer, sid: str, tmp_path: Path) -> Call:
    """`session/load` of `sid` sent (its replay comes before `call.result()`)."""
    return await peer.start(
        "session/load", {"sessionId": sid, "cwd": str(tmp_path), "mcpServers": []})


def chunk_texts(peer: AcpPeer, sid: str, start: int = 0) -> list[str]:
    return [u["content"]["text"] for u in peer.updates(sid, "agent_message_chunk", start)]


# ---------------------------------------------------------------- handshake


async def test_initialize_and_new_session(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            init = await peer.initialize()
            assert init["protocolVersion"] == 1
            assert init["agentInfo"]["name"] == "stoker-echo"
            assert init["agentInfo"]["version"] == "1"
            assert init["authMethods"] == []
            caps = init["agentCapabilities"]
            assert caps["loadSession"] is True
            assert caps["promptCapabilities"] == {
                "image": True,
                "audio": False,
                "embeddedContext": True,
            }
            assert caps["sessionCapabilities"] == {"resume": {}, "close": {}, "list": {}}

            result = await peer.request("session/new", {"cwd": str(tmp_path), "mcpServers": []})
            sid = result["sessionId"]
            assert result["modes"] == {
                "currentModeId": "default",
                "availableModes": [
                    {"id": "default", "name": "Default"},
                    {"id": "plan", "name": "Plan"},
                ],
            }
            model, verbose = result["configOptions"]
            assert model["id"] == "model"
            assert model["type"] == "select"
            assert model["category"] == "model"
            assert model["currentValue"] == "echo-1"
            assert [o["value"] for o in model["options"]] == ["echo-1", "echo-2"]
            assert verbose["id"] == "verbose"
            assert verbose["type"] == "boolean"
            assert verbose["currentValue"] is False

            saved = json.loads((tmp_path / "state" / f"{sid}.json").read_text())
            assert saved["sessionId"] == sid
            assert saved["cwd"] == str(tmp_path)
            assert saved["history"] == []
            assert saved["memory"] == []
            assert saved["mode"] == "default"

            with pytest.raises(RpcError) as err:
                await peer.request("session/new", {"cwd": "relative/dir", "mcpServers": []})
            assert err.value.code == -32602


async def test_capability_flags(tmp_path: Path) -> None:
    args = ("--no-load", "--no-resume", "--no-close", "--no-image")
    async with echo(tmp_path, *args) as peer:
        with trio.fail_after(5):
            init = await peer.initialize()
            caps = init["agentCapabilities"]
            assert caps["loadSession"] is False
            assert caps["promptCapabilities"]["image"] is False
            assert caps["promptCapabilities"]["embeddedContext"] is False
            assert caps["sessionCapabilities"] == {"list": {}}
            sid = await peer.new_session(tmp_path)
            for method in ("session/load", "session/resume"):
                with pytest.raises(RpcError) as err:
                    await peer.request(
                        method, {"sessionId": sid, "cwd": str(tmp_path), "mcpServers": []}
                    )
                assert err.value.code == -32601
            with pytest.raises(RpcError) as err:
                await peer.request("session/close", {"sessionId": sid})
            assert err.value.code == -32601


# ------------------------------------------------------------ prompt basics


async def test_plain_echo_word_by_word(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            result = await peer.prompt(sid, "  hello   big\tworld  ")
            assert result["stopReason"] == "end_turn"
            assert result["usage"] == {"totalTokens": 6, "inputTokens": 3, "outputTokens": 3}
            assert chunk_texts(peer, sid) == ["hello", " big", " world"]
            # Text blocks are joined with a space; an unknown slash word is plain text.
            start = len(peer.messages)
            blocks = [{"type": "text", "text": "/nosuch"}, {"type": "text", "text": "two"}]
            await peer.prompt(sid, blocks)
            assert peer.agent_text(sid, start) == "/nosuch two"
            # An empty prompt answers nothing and ends the turn.
            start = len(peer.messages)
            assert (await peer.prompt(sid, "   "))["stopReason"] == "end_turn"
            assert peer.updates(sid, start=start) == []


async def test_content_blocks(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            blocks: list[JsonObj] = [
                {"type": "text", "text": "look"},
                {
                    "type": "image",
                    "mimeType": "image/png",
                    "data": base64.b64encode(b"\x89PNG\r").decode(),
                },
                {"type": "resource_link", "uri": "file:///a.txt", "name": "a.txt"},
                {
                    "type": "resource",
                    "resource": {"uri": "file:///b.txt", "text": "héllo", "mimeType": "text/plain"},
                },
                {"type": "text", "text": "here"},
            ]
            await peer.prompt(sid, blocks)
            assert chunk_texts(peer, sid) == [
                "image image/png 5 bytes\n",
                "link file:///a.txt\n",
                "resource file:///b.txt 5 chars\n",
                "look",
                " here",
            ]
            with pytest.raises(RpcError) as err:
                await peer.prompt(sid, [{"type": "image", "mimeType": "x", "data": "!!"}])
            assert err.value.code == -32602


async def test_unknown_session_and_busy_session(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            with pytest.raises(RpcError) as err:
                await peer.prompt("no-such-session", "hi")
            assert err.value.code == -32002
            slow = await peer.start_prompt(sid, "/slow 10000")
            with pytest.raises(RpcError) as err:
                await peer.prompt(sid, "hi")
            assert err.value.code == -32602
            assert "a prompt is already running" in err.value.message
            await peer.cancel(sid)
            assert (await slow.result())["stopReason"] == "cancelled"
            # The session takes prompts again once the turn is over.
            assert (await peer.prompt(sid, "again"))["stopReason"] == "end_turn"


async def test_chunks_100000(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(20):
            sid = await session(peer, tmp_path)
            start = len(peer.messages)
            began = time.monotonic()
            result = await peer.prompt(sid, "/chunks 100000")
            elapsed = time.monotonic() - began
            texts = chunk_texts(peer, sid, start)
            assert len(texts) == 100_000
            assert texts[0] == "c0"
            assert texts[1] == " c1"
            assert texts[-1] == " c99999"
            assert "".join(texts) == " ".join(f"c{i}" for i in range(100_000))
            assert result["stopReason"] == "end_turn"
            assert result["usage"]["outputTokens"] == 100_000
            # Generous: this includes the test-side parsing and schema checks.
            assert elapsed < 10, elapsed


async def test_pid(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            await peer.prompt(sid, "/pid")
            assert peer.agent_text(sid) == str(peer.process.pid)


async def test_bad_arguments_reply_usage(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            for prompt in ("/chunks many", "/sleep -1", "/exit 300", "/remember"):
                start = len(peer.messages)
                assert (await peer.prompt(sid, prompt))["stopReason"] == "end_turn"
                assert peer.agent_text(sid, start).startswith("error: usage: "), prompt
            assert peer.process.returncode is None


# --------------------------------------------------------------- cancelling


async def test_cancel_sleep_within_a_second(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            call = await peer.start_prompt(sid, "/sleep 30000")
            # A request answered after the prompt started proves the turn is under way.
            await peer.request("session/list", {})
            began = time.monotonic()
            await peer.cancel(sid)
            with trio.fail_after(1):
                result = await call.result()
            assert time.monotonic() - began < 1
            assert result["stopReason"] == "cancelled"
            assert peer.updates(sid, "agent_message_chunk") == []

            start = len(peer.messages)
            assert (await peer.prompt(sid, "/sleep 10"))["stopReason"] == "end_turn"
            assert peer.agent_text(sid, start) == "slept 10"


async def test_cancel_chunks(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(10):
            sid = await session(peer, tmp_path)
            call = await peer.start_prompt(sid, "/chunks 100000000")
            await peer.wait_update(sid, "agent_message_chunk")
            await peer.cancel(sid)
            result = await call.result()
            assert result["stopReason"] == "cancelled"
            sent = len(chunk_texts(peer, sid))
            assert 0 < sent < 100_000_000
            assert result["usage"]["outputTokens"] == sent


async def test_slow_keeps_answering_requests(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            call = await peer.start_prompt(sid, "/slow 600")
            with pytest.raises(RpcError) as err:
                await peer.request("_stoker/ping", {})
            assert err.value.code == -32601
            assert err.value.message == "Method not found"
            assert not call.done.is_set()
            assert peer.updates(sid) == []  # silent so far
            sessions = await peer.request("session/list", {})
            assert [s["sessionId"] for s in sessions["sessions"]] == [sid]
            result = await call.result()
            assert result["stopReason"] == "end_turn"
            assert peer.agent_text(sid) == "slow 600"

            call = await peer.start_prompt(sid, "/slow 30000")
            with pytest.raises(RpcError):
                await peer.request("_stoker/ping", {})
            await peer.cancel(sid)
            with trio.fail_after(1):
                assert (await call.result())["stopReason"] == "cancelled"


# ---------------------------------------------------------- process control


async def test_hang_stops_answering(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            await peer.request("session/list", {})  # answered before the hang
            prompt = await peer.start_prompt(sid, "/hang")
            ping = await peer.start("session/list", {})
            with trio.move_on_after(0.5) as waited:
                await ping.done.wait()
            assert waited.cancelled_caught, "a hung agent answered"
            assert not prompt.done.is_set()
            assert peer.process.returncode is None
            peer.kill()
            assert await peer.wait_exit() == -signal.SIGKILL


@pytest.mark.parametrize(("prompt", "status", "chunks"), [
    pytest.param("/crash", 3, ["crashing"], id="crash-exits-3"),
    pytest.param("/exit 7", 7, [], id="exit-code-without-reply"),
])
async def test_exit_mid_prompt_without_reply(
    tmp_path: Path, prompt: str, status: int, chunks: list[str]
) -> None:
    """The agent exits with `status` and never answers the prompt; the only updates it sent
    are agent_message_chunks with these texts."""
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            call = await peer.start_prompt(sid, prompt)
            assert await peer.wait_exit() == status
            with pytest.raises(AgentGone):
                await call.result()
            assert [(u["sessionUpdate"], u["content"]["text"]) for u in peer.updates(sid)] == [
                ("agent_message_chunk", text) for text in chunks
            ]


async def _close_stdin(peer: AcpPeer) -> None:
    await peer.close_stdin()


async def _sigterm(peer: AcpPeer) -> None:
    peer.process.send_signal(signal.SIGTERM)


@pytest.mark.parametrize(("prompt", "stop", "status"), [
    pytest.param("/sleep 60000", _close_stdin, 0, id="stdin-eof-exits-0"),
    pytest.param("/slow 60000", _sigterm, -signal.SIGTERM, id="sigterm"),
])
async def test_stops_promptly_even_mid_prompt(
    tmp_path: Path, prompt: str, stop: Callable[[AcpPeer], Awaitable[None]], status: int
) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            await peer.start_prompt(sid, prompt)
            await peer.request("session/list", {})
            await stop(peer)
            with trio.fail_after(2):
                assert await peer.wait_exit() == status


async def test_fail_initialize(tmp_path: Path) -> None:
    for args, env in (
        (("--fail-initialize",), agent_env()),
        ((), agent_env(STOKER_ECHO_FAIL_INIT="1")),
    ):
        async with echo(tmp_path, *args, env=env) as peer:
            with trio.fail_after(5):
                call = await peer.start("initialize", {"protocolVersion": 1})
                assert await peer.wait_exit() == 4
                with pytest.raises(AgentGone):
                    await call.result()
                assert "fail" in peer.stderr_text
                assert peer.stderr_text.endswith("\n")
    # The flag wins over the environment.
    env = agent_env(STOKER_ECHO_FAIL_INIT="1")
    async with echo(tmp_path, "--no-fail-initialize", env=env) as peer:
        with trio.fail_after(5):
            assert (await peer.initialize())["protocolVersion"] == 1


async def test_startup_delay(tmp_path: Path) -> None:
    for args, env in (
        (("--startup-delay", "300"), agent_env()),
        ((), agent_env(STOKER_ECHO_STARTUP_DELAY_MS="300")),
    ):
        began = time.monotonic()
        async with echo(tmp_path, *args, env=env) as peer:
            with trio.fail_after(5):
                await peer.initialize()
        assert time.monotonic() - began >= 0.3


# ------------------------------------------------------------- client calls


async def test_write_and_read_through_client_fs(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        fs = LocalFs()
        fs.install(peer)
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            await peer.prompt(sid, "/write notes/a.txt hello  there world")
            target = tmp_path / "notes" / "a.txt"
            # The client's write fails (no such directory): its message is the reply.
            assert peer.agent_text(sid).startswith("error: cannot write")
            (tmp_path / "notes").mkdir()
            start = len(peer.messages)
            await peer.prompt(sid, "/write notes/a.txt hello  there world")
            assert peer.agent_text(sid, start) == f"wrote {target}"
            assert target.read_text() == "hello  there world"
            write = peer.requests("fs/write_text_file")[-1]["params"]
            assert write == {"sessionId": sid, "path": str(target), "content": "hello  there world"}

            start = len(peer.messages)
            await peer.prompt(sid, f"/read {target}")
            assert peer.agent_text(sid, start) == "hello  there world"
            assert peer.requests("fs/read_text_file")[-1]["params"] == {
                "sessionId": sid,
                "path": str(target),
            }
            start = len(peer.messages)
            await peer.prompt(sid, "/read missing.txt")
            assert (
                peer.agent_text(sid, start) == f"error: Resource not found: {tmp_path}/missing.txt"
            )


async def test_fs_and_terminal_refused_without_capabilities(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path, read=False, write=False, terminal=False)
            for prompt, missing in (
                ("/write a.txt x", "fs.writeTextFile"),
                ("/read a.txt", "fs.readTextFile"),
                ("/terminal echo hi", "terminal"),
            ):
                start = len(peer.messages)
                await peer.prompt(sid, prompt)
                text = peer.agent_text(sid, start)
                assert text.startswith("error: "), text
                assert missing in text, text
            assert peer.requests() == []


@pytest.mark.parametrize("option", ["allow", "always", "reject"])
async def test_permission_selected(tmp_path: Path, option: str) -> None:
    async with echo(tmp_path) as peer:
        seen: list[JsonObj] = []

        async def answer(params: JsonObj) -> JsonObj:
            seen.append(params)
            return {"outcome": {"outcome": "selected", "optionId": option}}

        peer.handlers["session/request_permission"] = answer
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            result = await peer.prompt(sid, "/permission")
            assert result["stopReason"] == "end_turn"
            assert peer.agent_text(sid) == f"permission: {option}"
            (tool_call,) = peer.updates(sid, "tool_call")
            assert tool_call["kind"] == "edit"
            assert tool_call["status"] == "pending"
            assert tool_call["title"] == "echo wants permission"
            (params,) = seen
            assert params["sessionId"] == sid
            assert params["toolCall"]["toolCallId"] == tool_call["toolCallId"]
            assert [(o["optionId"], o["kind"]) for o in params["options"]] == [
                ("allow", "allow_once"),
                ("always", "allow_always"),
                ("reject", "reject_once"),
            ]


async def test_permission_cancelled_after_session_cancel(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        asked = trio.Event()
        cancel_sent = trio.Event()

        async def answer(params: JsonObj) -> JsonObj:
            asked.set()
            await cancel_sent.wait()
            return {"outcome": {"outcome": "cancelled"}}

        peer.handlers["session/request_permission"] = answer
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            call = await peer.start_prompt(sid, "/permission")
            await asked.wait()
            await peer.cancel(sid)
            cancel_sent.set()
            result = await call.result()
            assert result["stopReason"] == "cancelled"
            assert peer.agent_text(sid) == "permission: cancelled"


async def test_permission_answered_with_error(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:  # no handler: the peer answers -32601
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            assert (await peer.prompt(sid, "/permission"))["stopReason"] == "end_turn"
            assert peer.agent_text(sid) == "error: Method not found"


async def test_terminal(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        terminals = LocalTerminals()
        terminals.install(peer)
        with trio.fail_after(10):
            sid = await session(peer, tmp_path)
            await peer.prompt(sid, "/terminal sh -c 'pwd; echo oops >&2; exit 3'")
            assert peer.agent_text(sid) == f"{tmp_path}\noops\n[exit 3]"
            assert [name for name, _ in terminals.calls] == [
                "create",
                "wait_for_exit",
                "output",
                "release",
            ]
            create = terminals.calls[0][1]
            assert create == {
                "sessionId": sid,
                "command": "sh",
                "args": ["-c", "pwd; echo oops >&2; exit 3"],
                "cwd": str(tmp_path),
                "outputByteLimit": 65536,
            }
            assert terminals.terminals == {}

            start = len(peer.messages)
            await peer.prompt(sid, "/terminal sh -c 'kill -TERM $$'")
            assert peer.agent_text(sid, start) == "[signal SIGTERM]"

            start = len(peer.messages)
            await peer.prompt(sid, "/terminal /no/such/program")
            assert peer.agent_text(sid, start).startswith("error: cannot run /no/such/program")

            # Cancelling stops waiting for the command and releases its terminal.
            terminals.calls.clear()
            start = len(peer.messages)
            call = await peer.start_prompt(sid, "/terminal sleep 30")
            await peer.wait_for(lambda m: m.get("method") == "terminal/wait_for_exit", start=start)
            await peer.cancel(sid)
            with trio.fail_after(2):
                assert (await call.result())["stopReason"] == "cancelled"
            assert [name for name, _ in terminals.calls][-1] == "release"
            assert terminals.terminals == {}


# ------------------------------------------------------------ session state


async def test_memory_survives_kill_9_resume_and_load(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            await peer.prompt(sid, "/recall")
            assert peer.agent_text(sid) == "nothing remembered"
            await peer.prompt(sid, "/remember alpha")
            await peer.prompt(sid, "/remember beta")
            assert chunk_texts(peer, sid)[-1] == "remembered beta"
            peer.kill()
            assert await peer.wait_exit() == -signal.SIGKILL

    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            await peer.initialize()
            start = len(peer.messages)
            call = await peer.start("session/resume", {"sessionId": sid, "cwd": str(tmp_path)})
            resumed = await call.result()
            assert resumed["modes"]["currentModeId"] == "default"
            assert peer.updates(sid, start=start) == []  # resume does not replay
            start = len(peer.messages)
            await peer.prompt(sid, "/recall")
            assert peer.agent_text(sid, start) == "alpha beta"

            with pytest.raises(RpcError) as err:
                await peer.request("session/resume", {"sessionId": "nope", "cwd": str(tmp_path)})
            assert err.value.code == -32002

    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            await peer.initialize()
            start = len(peer.messages)
            call = await start_load(peer, sid, tmp_path)
            loaded = await call.result()
            assert loaded["configOptions"][0]["currentValue"] == "echo-1"
            replay = [
                (u["sessionUpdate"], u["content"]["text"])
                for u in peer.updates(sid, start=start, end=call.index)
            ]
            assert replay == [
                ("user_message_chunk", "/recall"),
                ("agent_message_chunk", "nothing remembered"),
                ("user_message_chunk", "/remember alpha"),
                ("agent_message_chunk", "remembered alpha"),
                ("user_message_chunk", "/remember beta"),
                ("agent_message_chunk", "remembered beta"),
                ("user_message_chunk", "/recall"),
                ("agent_message_chunk", "alpha beta"),
            ]
            assert peer.updates(sid, start=call.index) == []  # all of it before the response
            for bad in ("nope", "../../etc/passwd"):
                with pytest.raises(RpcError) as err:
                    await peer.request(
                        "session/load", {"sessionId": bad, "cwd": str(tmp_path), "mcpServers": []}
                    )
                assert err.value.code == -32002


async def test_history_is_appended_not_rewritten(tmp_path: Path) -> None:
    """A turn appends one line to the session's history file and leaves the settings file
    alone (the agent's cost per turn must not grow with its history: scripts/bench measures
    the daemon against it). A history line cut short by a kill is skipped, the ones after
    it are kept, and a settings file from before the split keeps its own history first."""
    state = tmp_path / "state"
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            settings = (state / f"{sid}.json").read_bytes()
            for word in ("one", "two", "three"):
                await peer.prompt(sid, word)
            assert (state / f"{sid}.json").read_bytes() == settings
            lines = (state / f"{sid}.history.jsonl").read_bytes().split(b"\n")
            assert lines[0] == b""
            assert [json.loads(x)["user"] for x in lines[1:]] == ["one", "two", "three"]
            assert json.loads(lines[-1])["agent"] == "three"
    # A kill cut the last line short; a turn after the restart appends a whole one.
    history = state / f"{sid}.history.jsonl"
    history.write_bytes(history.read_bytes() + b'\n{"user":"cut sh')
    saved = json.loads(settings)
    saved["history"] = [{"role": "user", "text": "old"}, {"role": "agent", "text": "reply"}]
    (state / f"{sid}.json").write_text(json.dumps(saved))
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            await peer.initialize()
            await peer.request("session/resume", {"sessionId": sid, "cwd": str(tmp_path)})
            await peer.prompt(sid, "four")
            await peer.request("session/set_mode", {"sessionId": sid, "modeId": "plan"})
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            await peer.initialize()
            start = len(peer.messages)
            call = await start_load(peer, sid, tmp_path)
            await call.result()
            users = [
                u["content"]["text"]
                for u in peer.updates(sid, "user_message_chunk", start=start, end=call.index)
            ]
            assert users == ["old", "one", "two", "three", "four"]
            assert json.loads((state / f"{sid}.json").read_text())["mode"] == "plan"


async def test_close_and_list(tmp_path: Path) -> None:
    other = tmp_path / "other"
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            sid2 = await peer.new_session(other)
            await peer.prompt(sid, "/title My session")
            listed = (await peer.request("session/list", {}))["sessions"]
            assert {s["sessionId"] for s in listed} == {sid, sid2}
            mine = (await peer.request("session/list", {"cwd": str(tmp_path)}))["sessions"]
            assert len(mine) == 1
            assert mine[0]["sessionId"] == sid
            assert mine[0]["cwd"] == str(tmp_path)
            assert mine[0]["title"] == "My session"
            assert mine[0]["updatedAt"].endswith("Z")

            # Closing cancels a running prompt and forgets the session.
            call = await peer.start_prompt(sid, "/sleep 30000")
            await peer.request("session/list", {})
            assert await peer.request("session/close", {"sessionId": sid}) == {}
            with trio.fail_after(1):
                assert (await call.result())["stopReason"] == "cancelled"
            with pytest.raises(RpcError) as err:
                await peer.prompt(sid, "hi")
            assert err.value.code == -32002
            with pytest.raises(RpcError) as err:
                await peer.request("session/close", {"sessionId": sid})
            assert err.value.code == -32002
            # Its file stays: resume brings it back.
            await peer.request("session/resume", {"sessionId": sid, "cwd": str(tmp_path)})
            assert (await peer.prompt(sid, "back"))["stopReason"] == "end_turn"


async def test_set_mode_and_config_option(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            call = await peer.start("session/set_mode", {"sessionId": sid, "modeId": "plan"})
            assert await call.result() == {}
            index, update = await peer.wait_update(sid, "current_mode_update")
            assert update["currentModeId"] == "plan"
            assert index < call.index
            with pytest.raises(RpcError) as err:
                await peer.request("session/set_mode", {"sessionId": sid, "modeId": "warp"})
            assert err.value.code == -32602

            call = await peer.start(
                "session/set_config_option",
                {"sessionId": sid, "configId": "model", "value": "echo-2"},
            )
            options = (await call.result())["configOptions"]
            assert options[0]["currentValue"] == "echo-2"
            index, update = await peer.wait_update(sid, "config_option_update")
            assert update["configOptions"] == options
            assert index < call.index
            result = await peer.request(
                "session/set_config_option",
                {"sessionId": sid, "configId": "verbose", "type": "boolean", "value": True},
            )
            assert result["configOptions"][1]["currentValue"] is True
            for bad in (
                {"configId": "model", "value": "echo-9"},
                {"configId": "verbose", "value": "yes"},
                {"configId": "temperature", "value": "hot"},
            ):
                with pytest.raises(RpcError) as err:
                    await peer.request("session/set_config_option", {"sessionId": sid, **bad})
                assert err.value.code == -32602, bad

            start = len(peer.messages)
            await peer.prompt(sid, "/mode default")
            assert peer.updates(sid, "current_mode_update", start)[0]["currentModeId"] == "default"
            assert peer.agent_text(sid, start) == "mode default"
            start = len(peer.messages)
            await peer.prompt(sid, "/mode warp")
            assert peer.agent_text(sid, start).startswith("error: unknown mode")
            await peer.request("session/set_mode", {"sessionId": sid, "modeId": "plan"})

    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            await peer.initialize()
            loaded = await peer.request(
                "session/load", {"sessionId": sid, "cwd": str(tmp_path), "mcpServers": []}
            )
            assert loaded["modes"]["currentModeId"] == "plan"
            assert [o["currentValue"] for o in loaded["configOptions"]] == ["echo-2", True]


async def test_authentication(tmp_path: Path) -> None:
    async with echo(tmp_path, "--require-auth") as peer:
        with trio.fail_after(5):
            init = await peer.initialize()
            (method,) = init["authMethods"]
            assert method["id"] == "echo-login"
            assert method["name"] == "Echo login"
            assert method["description"]
            for name, params in (
                ("session/new", {"cwd": str(tmp_path), "mcpServers": []}),
                ("session/resume", {"sessionId": "x", "cwd": str(tmp_path)}),
                ("session/load", {"sessionId": "x", "cwd": str(tmp_path), "mcpServers": []}),
            ):
                with pytest.raises(RpcError) as err:
                    await peer.request(name, params)
                assert err.value.code == -32000
                assert err.value.message == "Authentication required"
            with pytest.raises(RpcError) as err:
                await peer.request("authenticate", {"methodId": "password"})
            assert err.value.code == -32602
            assert await peer.request("authenticate", {"methodId": "echo-login"}) == {}
            await peer.new_session(tmp_path)

    env = agent_env(STOKER_ECHO_REQUIRE_AUTH="1")
    async with echo(tmp_path, env=env) as peer:
        with trio.fail_after(5):
            assert len((await peer.initialize())["authMethods"]) == 1
    async with echo(tmp_path, "--no-require-auth", env=env) as peer:
        with trio.fail_after(5):
            assert (await peer.initialize())["authMethods"] == []
            assert await peer.request("authenticate", {"methodId": "anything"}) == {}
            await peer.new_session(tmp_path)


async def test_state_dir_from_environment(tmp_path: Path) -> None:
    state = tmp_path / "env-state"
    async with echo(tmp_path, env=agent_env(STOKER_ECHO_STATE=str(state)), state=False) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
    assert (state / f"{sid}.json").is_file()


# ------------------------------------------------------------ the updates


async def test_tool_call_sequence(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)
            await peer.prompt(sid, "/tool")
            await peer.prompt(sid, "/tool")
            kinds = [u["sessionUpdate"] for u in peer.updates(sid)]
            assert kinds == 2 * [
                "tool_call",
                "tool_call_update",
                "tool_call_update",
                "agent_message_chunk",
            ]
            first, progress, done, chunk = peer.updates(sid)[:4]
            assert first["toolCallId"] == "tool-1"
            assert (first["title"], first["kind"], first["status"]) == (
                "echo tool",
                "other",
                "pending",
            )
            assert progress == {
                "sessionUpdate": "tool_call_update",
                "toolCallId": "tool-1",
                "status": "in_progress",
            }
            assert done["status"] == "completed"
            assert done["content"] == [
                {"type": "content", "content": {"type": "text", "text": "tool output"}}
            ]
            assert chunk["content"]["text"] == "tool done"
            assert peer.updates(sid, "tool_call")[1]["toolCallId"] != "tool-1"


async def test_other_session_updates(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            sid = await session(peer, tmp_path)

            async def run(prompt: str) -> tuple[list[JsonObj], str]:
                start = len(peer.messages)
                assert (await peer.prompt(sid, prompt))["stopReason"] == "end_turn"
                others = [
                    u
                    for u in peer.updates(sid, start=start)
                    if u["sessionUpdate"] != "agent_message_chunk"
                ]
                return others, peer.agent_text(sid, start)

            (thought,), text = await run("/think deep thoughts")
            assert thought["sessionUpdate"] == "agent_thought_chunk"
            assert thought["content"] == {"type": "text", "text": "deep thoughts"}
            assert text == "thought"

            (plan,), text = await run("/plan")
            assert [(e["priority"], e["status"]) for e in plan["entries"]] == [
                ("medium", "in_progress"),
                ("medium", "pending"),
            ]
            assert all(e["content"] for e in plan["entries"])
            assert text == "planned"

            (commands,), text = await run("/commands")
            assert commands["sessionUpdate"] == "available_commands_update"
            assert len(commands["availableCommands"]) == 2
            assert all(c["name"] and c["description"] for c in commands["availableCommands"])
            assert text == "commands sent"

            (info,), text = await run("/title Fix the bug")
            assert info["sessionUpdate"] == "session_info_update"
            assert info["title"] == "Fix the bug"
            assert info["updatedAt"].endswith("Z")
            assert text == "titled"

            (usage,), text = await run("/usage")
            assert usage == {
                "sessionUpdate": "usage_update",
                "used": 1234,
                "size": 200000,
                "cost": {"amount": 0.01, "currency": "USD"},
            }
            assert text == "usage sent"

            start = len(peer.messages)
            (future,), text = await run("/unknown")
            assert future == {"sessionUpdate": "x_echo_future", "payload": 1}
            assert text == "unknown sent"
            custom = [m for m in peer.messages[start:] if m.get("method") == "_echo/custom"]
            assert [m["params"] for m in custom] == [{"sessionId": sid, "n": 1}]

            _, text = await run("/stderr 3")
            assert text == "stderr 3"
            await peer.wait_stderr("echo stderr line 2\n")
            assert "echo stderr line 0\necho stderr line 1\necho stderr line 2\n" in (
                peer.stderr_text
            )

            _, text = await run("/lines alpha  beta gamma")
            assert text == "alpha\nbeta\ngamma"
            _, text = await run("/lines")
            assert text == "error: usage: /lines WORD..."

            # With MS, the usage is reported first and the turn ends MS ms later.
            start = len(peer.messages)
            assert (await peer.prompt(sid, "/meta-usage 50"))["stopReason"] == "end_turn"
            metered = peer.updates(sid, start=start)
            assert metered[0]["_meta"]["usage"]["totalTokens"] == 107
            assert peer.agent_text(sid, start) == "metered"

            _, text = await run("/bigline 300")
            assert text == "x" * 300 * 1024
            assert len(chunk_texts(peer, sid)[-1]) == 300 * 1024

            start = len(peer.messages)
            with pytest.raises(RpcError) as err:
                await peer.prompt(sid, "/error")
            assert (err.value.code, err.value.message) == (-32603, "echo: requested failure")
            assert peer.updates(sid, start=start) == []


# --------------------------------------------------------- JSON-RPC hygiene


async def test_malformed_lines_and_unknown_methods(tmp_path: Path) -> None:
    async with echo(tmp_path) as peer:
        with trio.fail_after(5):
            await peer.initialize()
            for line, code in (
                (b"{not json\n", -32700),
                (b"\xff\xfe\n", -32700),
                (b"[1, 2]\n", -32600),
            ):
                start = len(peer.messages)
                await peer.send_raw(line)
                index = await peer.wait_for(lambda m: "error" in m, start=start)
                assert peer.messages[index]["id"] is None
                assert peer.messages[index]["error"]["code"] == code
            for method in ("_stoker/ping", "session/teleport"):
                with pytest.raises(RpcError) as err:
                    await peer.request(method, {})
                assert err.value.code == -32601
                assert err.value.message == "Method not found"
            # Unknown notifications and answers to nothing are ignored: the next message
            # is the answer to the next request.
            start = len(peer.messages)
            await peer.notify("_stoker/hello", {"x": 1})
            await peer.notify("session/cancel", {"sessionId": "nope"})
            await peer.send({"jsonrpc": "2.0", "id": 999, "result": {}})
            call = await peer.start("session/list", {})
            await call.result()
            assert call.index == start
            assert peer.process.returncode is None


def test_schema_checker_has_teeth() -> None:
    """The peer's checker rejects what the agent must never send, and skips the exceptions."""
    import jsonschema

    schema = AcpSchema()
    chunk: JsonObj = {
        "jsonrpc": "2.0",
        "method": "session/update",
        "params": {
            "sessionId": "s",
            "update": {"sessionUpdate": "agent_message_chunk", "content": {"text": "hi"}},
        },
    }
    with pytest.raises(jsonschema.ValidationError):
        schema.check(chunk)
    chunk["params"]["update"]["content"]["type"] = "text"
    schema.check(chunk)
    with pytest.raises(jsonschema.ValidationError):
        schema.check(
            {"jsonrpc": "2.0", "id": 1, "result": {"stopReason": "done"}}, "session/prompt"
        )
    with pytest.raises(jsonschema.ValidationError):
        schema.check({"jsonrpc": "2.0", "id": 1, "result": {}}, "session/new")
    usage = {"totalTokens": 1, "inputTokens": 1, "outputTokens": 0}
    result = {"stopReason": "end_turn", "usage": usage}
    schema.check({"jsonrpc": "2.0", "id": 1, "result": result}, "session/prompt")
    future = {"sessionUpdate": "x_echo_future", "payload": 1}
    schema.check(
        {
            "jsonrpc": "2.0",
            "method": "session/update",
            "params": {"sessionId": "s", "update": future},
        }
    )
    assert schema.skipped == 1


def test_main_rejects_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from daemon.echo_agent.agent import main, parse_options

    with pytest.raises(SystemExit) as exited:
        main(["--startup-delay", "soon"])
    assert exited.value.code == 2
    assert "startup-delay" in capsys.readouterr().err
    options = parse_options(["--state-dir", "/x", "--no-close"])
    assert options.state_dir == "/x"
    assert options.close is False
    assert options.load is True

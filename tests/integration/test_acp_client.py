"""Issue 3: the daemon as a complete ACP client, end to end with real echo agents.

Every agent here runs under tests/support/acp_tee.py, which records both directions; the fixture
validates every message the daemon sent to any agent against the official ACP schema when
the test ends (that is where the "schema validation of every message" requirement lives).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import trio

from daemon.client import Client, RequestFailed
from protocol import deltas as d
from protocol import messages as m
from tests.support.acp_tee import ClientSchema, iter_updates, read_trace, tee_command, traces
from tests.support.harness import (
    DaemonFactory,
    DaemonProcess,
    actor,
    agent_pid,
    collect_turn,
    open_chat,
    replay,
    subscribe,
    turn,
    wait_actor,
    wait_for_body,
)

ECHO = [sys.executable, "-m", "daemon.echo_agent"]
VARIANTS = {
    "echo": [],
    "noimg": ["--no-image"],
    "noresume": ["--no-resume"],
    "fresh": ["--no-resume", "--no-load"],
    "authy": ["--require-auth"],
    "models": ["--models-only"],
}


def traced_config(trace_dir: Path, extra: str = "") -> str:
    lines = []
    for name, flags in VARIANTS.items():
        argv = tee_command(trace_dir / name, [*ECHO, *flags])
        lines.append(f"[agents.{name}]\ncommand = {json.dumps(argv)}\n")
    return "".join(lines) + extra


class Traced:
    def __init__(self, daemon: DaemonProcess, trace_dir: Path) -> None:
        self.daemon = daemon
        self.trace_dir = trace_dir

    def sent(self, agent: str) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for stem in traces(self.trace_dir):
            if stem.name.startswith(f"{agent}."):
                out.extend(read_trace(stem)[0])
        return out

    def methods(self, agent: str) -> list[str]:
        return [str(msg["method"]) for msg in self.sent(agent) if "method" in msg]


@pytest.fixture
def traced_factory(daemon_factory: DaemonFactory) -> Iterator[
        type[Traced] | object]:
    made: list[Traced] = []

    def make(extra: str = "") -> Traced:
        daemon = daemon_factory()
        trace_dir = daemon.base / "trace"
        trace_dir.mkdir()
        daemon.write_config(traced_config(trace_dir, extra))
        daemon.start()
        traced = Traced(daemon, trace_dir)
        made.append(traced)
        return traced

    yield make
    schema = ClientSchema()
    for traced in made:
        stems = traces(traced.trace_dir)
        assert stems, "no agent ran"
        for stem in stems:
            schema.validate(*read_trace(stem))
    assert schema.checked.get("initialize", 0) >= 1


@pytest.fixture
def traced(traced_factory: Callable[..., Traced]) -> Traced:
    result: Traced = traced_factory()
    return result


async def test_every_update_kind_becomes_a_delta_and_state(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "kinds", cwd=daemon.work)
        tool = await turn(client, info.chat, "/tool")
        assert [b.status for b in tool.of(d.ToolCall)] == ["pending"]
        assert [b.status for b in tool.of(d.ToolUpdate)] == ["in_progress", "completed"]
        assert tool.of(d.ToolCall)[0].acp["sessionUpdate"] == "tool_call"
        assert (await turn(client, info.chat, "/think deep")).of(d.Reasoning)[0].text == "deep"
        assert len((await turn(client, info.chat, "/plan")).of(d.Plan)[0].entries) == 2
        commands = (await turn(client, info.chat, "/commands")).of(d.Commands)[0].commands
        assert len(commands) == 2
        assert (await turn(client, info.chat, "/title Hello")).of(d.Info)[0].title == "Hello"
        usage = (await turn(client, info.chat, "/usage")).of(d.Usage)
        assert usage[0].used == 1234
        assert usage[0].size == 200000
        mode = await turn(client, info.chat, "/mode plan")
        assert mode.of(d.Mode)[0].mode == "plan"
        unknown = await turn(client, info.chat, "/unknown")
        raws = unknown.of(d.Raw)
        assert {r.method for r in raws} == {"session/update", "_echo/custom"}
        assert any(isinstance(r.acp, dict) and r.acp.get("sessionUpdate") == "x_echo_future"
                   for r in raws)
        detail = await actor(client, info.chat)
        assert detail.modes is not None
        assert detail.modes["currentModeId"] == "plan"
        assert len(detail.commands) == 2
        assert detail.usage.context_used == 1234
        assert detail.usage.cost == pytest.approx(0.01)
        assert detail.capabilities["loadSession"] is True
        assert detail.agent_info["name"] == "stoker-echo"
        listing = await client.request(m.ListChats(id=0))
        assert [c.title for c in listing.chats if c.chat == "kinds"] == ["Hello"]
    init = next(msg for msg in traced.sent("echo") if msg.get("method") == "initialize")
    caps = init["params"]["clientCapabilities"]  # type: ignore[index]
    assert caps == {"fs": {"readTextFile": True, "writeTextFile": True}, "terminal": True}


async def ask_permission(client: Client, chat: str, watcher: Client | None = None
                         ) -> tuple[m.PromptAccepted, d.PermissionRequest]:
    """`client` subscribes to `chat` and prompts `/permission`; returns that turn and the
    permission request the echo agent asks, as `watcher` (by default `client`) sees it."""
    await subscribe(client, chat)
    accepted: m.PromptAccepted = await client.request(
        m.Prompt(id=0, chat=chat, text="/permission"))
    return accepted, await wait_for_body(watcher or client, d.PermissionRequest, timeout=10)


async def test_permission_first_answer_wins(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client("alice") as alice, daemon.client("bob") as bob:
        info = await open_chat(alice, "perm", cwd=daemon.work)
        await subscribe(bob, info.chat)
        accepted, request = await ask_permission(alice, info.chat, watcher=bob)
        assert request.policy == "ask"
        assert [o["optionId"] for o in request.options] == ["allow", "always", "reject"]
        await bob.request(m.Permit(id=0, chat=info.chat, request=request.request,
                                   option="always"))
        with pytest.raises(RequestFailed) as second:
            await alice.request(m.Permit(id=0, chat=info.chat, request=request.request,
                                         option="reject"))
        assert second.value.code == "already_answered"
        result = await collect_turn(alice, info.chat, accepted.turn)
        assert result.text == "permission: always"
        assert [(r.option, r.by) for r in result.of(d.PermissionResolved)] == [("always", "bob")]


async def test_permit_through_the_cli_and_unknown_request(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "cli-perm", cwd=daemon.work)
        accepted, request = await ask_permission(client, info.chat)
        request_id = request.request
        bad = await trio.to_thread.run_sync(daemon.cli, "permit", info.chat, "nope", "allow")
        assert bad.returncode == 1
        assert "no permission request" in bad.stderr
        wrong = await trio.to_thread.run_sync(daemon.cli, "permit", info.chat, request_id, "x")
        assert wrong.returncode == 1
        assert "unknown option" in wrong.stderr
        done = await trio.to_thread.run_sync(daemon.cli, "permit", info.chat, request_id,
                                             "allow")
        assert done.returncode == 0, done.stderr
        assert (await collect_turn(client, info.chat, accepted.turn)).text == "permission: allow"
        again = await trio.to_thread.run_sync(daemon.cli, "permit", info.chat, request_id,
                                              "allow")
        assert again.returncode == 1
        assert "already answered" in again.stderr


async def test_permission_policies_and_timeout(traced_factory: Callable[..., Traced]) -> None:
    traced: Traced = traced_factory('[permissions]\npolicy = "deny"\ntimeout = "300ms"\n')
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "pol", cwd=daemon.work)
        denied = await turn(client, info.chat, "/permission")
        assert denied.text == "permission: reject"
        assert denied.of(d.PermissionResolved)[0].by == "policy:deny"
        await client.request(m.SetPolicy(id=0, chat=info.chat, policy="allow"))
        assert (await turn(client, info.chat, "/permission")).text == "permission: allow"
        cli = await trio.to_thread.run_sync(daemon.cli, "policy", info.chat, "ask")
        assert cli.returncode == 0, cli.stderr
        timed_out = await turn(client, info.chat, "/permission")
        assert timed_out.text == "permission: reject"
        resolved = timed_out.of(d.PermissionResolved)[0]
        assert resolved.by == "timeout"
        assert resolved.option == "reject"
        other = await open_chat(client, "pol2", cwd=daemon.work, policy="allow")
        assert (await turn(client, other.chat, "/permission")).text == "permission: allow"


async def test_cancel_answers_pending_permission_cancelled(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "pc", cwd=daemon.work)
        accepted, _request = await ask_permission(client, info.chat)
        await client.request(m.Cancel(id=0, chat=info.chat))
        cancelled = await collect_turn(client, info.chat, accepted.turn, timeout=10)
        resolved = cancelled.of(d.PermissionResolved)
        assert [(r.outcome, r.option) for r in resolved] == [("cancelled", None)]
        assert cancelled.ended.stop_reason == "cancelled"
    answers = [msg for msg in traced.sent("echo")
               if "result" in msg and isinstance(msg["result"], dict)
               and "outcome" in msg["result"]]
    assert answers == [{"jsonrpc": "2.0", "id": answers[0]["id"],
                        "result": {"outcome": {"outcome": "cancelled"}}}]


async def test_terminal_runs_a_real_process_and_streams_output(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "term", cwd=daemon.work)
        result = await turn(client, info.chat, "/terminal sh -c 'echo hi; echo there >&2'")
        assert result.text == "hi\nthere\n[exit 0]"
        events = [(t.event, t.data) for t in result.of(d.Terminal)]
        assert next(e for e, _ in events) == "created"
        assert "".join(data for e, data in events if e == "output") == "hi\nthere\n"
        assert [e for e, _ in events][-2:] == ["exited", "released"]
        failing = await turn(client, info.chat, "/terminal sh -c 'exit 7'")
        assert failing.text.endswith("[exit 7]")
        pwd = await turn(client, info.chat, "/terminal pwd")
        assert pwd.text.strip().startswith(str(Path(daemon.work).resolve()))
    methods = traced.methods("echo")
    assert "session/prompt" in methods


async def test_terminal_output_limit_truncates_at_character_boundary(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "trunc", cwd=daemon.work)
        # 70 000 two-byte characters against echo's 65 536-byte outputByteLimit.
        result = await turn(client, info.chat,
                            "/terminal python3 -c \"print('é' * 70000, end='')\"")
        body = result.text.removesuffix("[exit 0]")
        assert body == "é" * 32768
    response = next(msg for stem in traces(traced.trace_dir)
                    for msg in read_trace(stem)[0]
                    if isinstance(msg.get("result"), dict) and "truncated" in msg["result"])
    assert response["result"]["truncated"] is True


async def test_terminals_die_with_their_chat(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "tdie", cwd=daemon.work)
        await subscribe(client, info.chat)
        await client.request(m.Prompt(id=0, chat=info.chat, text="/terminal sleep 61.5"))
        await wait_for_body(client, d.Terminal, lambda t: t.event == "created", timeout=10)
        # `created` is published once the process is spawned, which may be a moment
        # before it has exec'd `sleep` (a loaded machine shows the gap): wait for it.
        with trio.fail_after(10):
            while not (sleepers := [p for p in psutil.process_iter(["cmdline"])
                                    if p.info["cmdline"] == ["sleep", "61.5"]]):
                await trio.sleep(0.02)
        assert len(sleepers) == 1
        detail = await actor(client, info.chat)
        assert detail.terminals == ["term-1"]
        await client.request(m.CloseChat(id=0, chat=info.chat))
        _gone, alive = psutil.wait_procs(sleepers, timeout=10)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


async def test_modes_config_options_and_boolean(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "modes", cwd=daemon.work)
        await turn(client, info.chat, "hello")
    cli = daemon.cli
    assert (await trio.to_thread.run_sync(cli, "mode", "modes", "plan")).returncode == 0
    bad = await trio.to_thread.run_sync(cli, "mode", "modes", "warp")
    assert bad.returncode == 1
    assert "unknown mode" in bad.stderr
    assert (await trio.to_thread.run_sync(cli, "config", "modes", "model",
                                          "echo-2")).returncode == 0
    assert (await trio.to_thread.run_sync(cli, "config", "modes", "verbose",
                                          "true")).returncode == 0
    nope = await trio.to_thread.run_sync(cli, "config", "modes", "model", "gpt-99")
    assert nope.returncode == 1
    assert "echo-1" in nope.stderr
    async with daemon.client() as client:
        detail = await actor(client, "modes")
        assert detail.modes is not None
        assert detail.modes["currentModeId"] == "plan"
        values = {o["id"]: o["currentValue"] for o in detail.config_options}
        assert values == {"model": "echo-2", "verbose": True}
    sent = traced.sent("echo")
    boolean = next(msg for msg in sent if msg.get("method") == "session/set_config_option"
                   and msg["params"]["configId"] == "verbose")  # type: ignore[index]
    assert boolean["params"]["type"] == "boolean"  # type: ignore[index]
    assert boolean["params"]["value"] is True  # type: ignore[index]


async def test_model_falls_back_to_set_model(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "mod", agent="models", cwd=daemon.work)
        await turn(client, info.chat, "hello")
        await client.request(m.SetConfig(id=0, chat=info.chat, option="model", value="echo-2"))
        detail = await actor(client, info.chat, "models")
        assert detail.config_options == []
        assert detail.models is not None
        assert detail.models["currentModelId"] == "echo-2"
    shown = await trio.to_thread.run_sync(daemon.cli, "inspect", "mod")
    assert "model:       echo-2 (available: echo-1, echo-2)" in shown.stdout
    assert "session/set_model" in traced.methods("models")
    assert "session/set_config_option" not in traced.methods("models")


async def test_prompt_content_images_files_links(traced: Traced) -> None:
    daemon = traced.daemon
    image = daemon.work / "pixel.png"
    image.write_bytes(base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="))
    notes = daemon.work / "notes.txt"
    notes.write_text("ten chars!")
    run = daemon.cli
    sent = await trio.to_thread.run_sync(lambda: run(
        "send", "--chat", "content", "--image", str(image), "--file", str(notes),
        "--link", str(notes), "look"))
    assert sent.returncode == 0, sent.stderr
    assert "image image/png 70 bytes" in sent.stdout
    assert f"resource {notes.as_uri()} 10 chars" in sent.stdout
    assert f"link {notes.as_uri()}" in sent.stdout
    assert sent.stdout.rstrip().endswith("look")
    async with daemon.client() as client:
        await open_chat(client, "noimg", agent="noimg", cwd=daemon.work)
        await turn(client, "noimg", "warm up")
        prompts_before = traced.methods("noimg").count("session/prompt")
        with pytest.raises(RequestFailed) as refused:
            await client.request(m.Prompt(id=0, chat="noimg", content=[
                m.ImageBlock(data=base64.b64encode(image.read_bytes()).decode(),
                             mime_type="image/png")]))
        assert refused.value.code == "bad_request"
        assert "does not accept images" in refused.value.message
        assert traced.methods("noimg").count("session/prompt") == prompts_before


async def test_usage_accounting_is_summed_and_persisted(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "usage", cwd=daemon.work)
        await turn(client, info.chat, "one two three")
        await turn(client, info.chat, "four five")
        usage = (await actor(client, info.chat)).usage
        assert usage.input_tokens == 5
        assert usage.output_tokens == 5
    assert daemon.stop() == 0
    daemon.start()
    async with daemon.client() as client:
        usage = (await actor(client, "usage")).usage
        assert (usage.input_tokens, usage.output_tokens) == (5, 5)
    cli = await trio.to_thread.run_sync(daemon.cli, "inspect", "usage")
    assert "usage:       in 5, out 5" in cli.stdout


async def _kill_agent(client: Client, chat: str, agent: str) -> None:
    """kill -9 the agent and wait until its *next* generation is ready."""
    generation = (await actor(client, chat, agent)).generation
    pid = await agent_pid(client, chat, agent)
    os.kill(pid, 9)
    await wait_actor(client, chat, lambda a: a.generation > generation and a.state == "ready",
                     agent=agent, timeout=15)


async def test_resume_prefers_session_resume(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "res", cwd=daemon.work)
        await turn(client, info.chat, "/remember pear")
        session = (await actor(client, info.chat)).session_id
        await _kill_agent(client, info.chat, "echo")
        assert (await turn(client, info.chat, "/recall")).text == "pear"
        assert (await actor(client, info.chat)).session_id == session
    assert "session/resume" in traced.methods("echo")
    assert "session/load" not in traced.methods("echo")


async def test_resume_falls_back_to_load_without_rebroadcast(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "load", agent="noresume", cwd=daemon.work)
        await turn(client, info.chat, "/remember plum")
        await _kill_agent(client, info.chat, "noresume")
        seen: list[d.Delta] = []
        result = await turn(client, info.chat, "/recall")
        seen.extend(result.deltas)
        assert result.text == "plum"
        assert not result.of(d.UserText), "replayed history was re-broadcast"
    assert "session/load" in traced.methods("noresume")
    replayed = [u for stem in traces(traced.trace_dir) if stem.name.startswith("noresume.")
                for u in iter_updates(read_trace(stem)[1])
                if u["sessionUpdate"] == "user_message_chunk"]
    assert replayed, "the agent did replay history during session/load"


async def test_resume_impossible_starts_fresh_with_notice(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "fresh", agent="fresh", cwd=daemon.work)
        await turn(client, info.chat, "/remember fig")
        old_session = (await actor(client, info.chat, "fresh")).session_id
        await _kill_agent(client, info.chat, "fresh")
        result = await turn(client, info.chat, "/recall")
        assert result.text == "nothing remembered"
        detail = await actor(client, info.chat, "fresh")
        assert detail.session_id != old_session
    async with daemon.client() as client:
        notices = [x.body.message for x in await replay(client, "fresh", timeout=10)
                   if isinstance(x.body, d.Notice)]
        assert any("lost its context" in n for n in notices)


async def test_authentication_required_then_auth(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "auth", agent="authy", cwd=daemon.work)
        first = await turn(client, info.chat, "hello")
        error = first.ended.error
        assert error is not None
        assert "echo-login" in error
        assert "stoker auth" in error
    # A method the agent never offered is refused before the agent sees it, naming its own.
    wrong = await trio.to_thread.run_sync(daemon.cli, "auth", "auth", "nope")
    assert wrong.returncode == 1
    assert "has no auth method 'nope'" in wrong.stderr
    assert "echo-login" in wrong.stderr
    auth = await trio.to_thread.run_sync(daemon.cli, "auth", "auth", "echo-login")
    assert auth.returncode == 0, auth.stderr
    async with daemon.client() as client:
        assert (await turn(client, "auth", "hello again")).text == "hello again"
    methods = traced.methods("authy")
    assert methods.count("authenticate") == 1
    assert methods.index("authenticate") < len(methods) - 1


async def test_auth_with_an_agent_that_offers_no_method_is_refused(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "noauth", cwd=daemon.work)
        assert (await turn(client, info.chat, "hi")).text == "hi"
    refused = await trio.to_thread.run_sync(daemon.cli, "auth", "noauth", "anything")
    assert refused.returncode == 1
    assert "it lists none" in refused.stderr
    async with daemon.client() as client:
        notices = [x.body.message for x in await replay(client, "noauth", timeout=10)
                   if isinstance(x.body, d.Notice)]
        assert not any("authenticated" in n for n in notices)


async def test_unknown_agent_request_gets_method_not_found(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "ask", cwd=daemon.work)
        result = await turn(client, info.chat, "/ask _vendor/whatever")
        assert result.text.startswith("error -32601:")
        # Unknown update kinds and notifications are kept as raw deltas, not dropped.
        assert len((await turn(client, info.chat, "/unknown")).of(d.Raw)) == 2


async def test_usage_streamed_in_meta_is_counted_once(traced: Traced) -> None:
    daemon = traced.daemon
    async with daemon.client() as client:
        info = await open_chat(client, "meta", cwd=daemon.work)
        metered = await turn(client, info.chat, "/meta-usage")
        assert metered.text == "metered"
        assert [(u.input_tokens, u.output_tokens) for u in metered.of(d.Usage)] == [(100, 7)]
        usage = (await actor(client, info.chat)).usage
        # The prompt response's own usage (1 word in, 1 chunk out) is not added on top.
        assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens,
                usage.total_tokens) == (100, 7, 3, 107)
        await turn(client, info.chat, "plain words")
        usage = (await actor(client, info.chat)).usage
        assert (usage.input_tokens, usage.output_tokens) == (102, 9)

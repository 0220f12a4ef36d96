"""A session whose agent never brings up Stoker's MCP server says so once in the chat
(daemon/mcp/presence.py): the real daemon, real echo agents whose MCP start is set with
`STOKER_ECHO_MCP_START` (`late`: not at session setup, unsaid, as an agent that failed to
start it; `eager`: at session setup; the default `demand`: on first use, said in
`initialize`), over stdio (`stoker mcp`) and over the daemon's HTTP endpoint."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
import trio

from daemon.client import Client, RequestFailed
from protocol import deltas as d
from protocol import messages as m
from tests.integration.test_tasks import mcp, mcp_credential
from tests.support.harness import (
    DaemonFactory,
    DaemonProcess,
    actor,
    agent_pid,
    open_chat,
    replay,
    subscribe,
    turn,
    wait_actor,
)

ECHO = [sys.executable, "-m", "daemon.echo_agent"]
SHORT = 1.5
"""`tasks.mcp_start_timeout` where the server is not to come up: the warning comes soon."""


def agent(name: str, mode: str, *, http: bool = False, shared: bool = False) -> str:
    command = [*ECHO, "--mcp-http"] if http else ECHO
    return (f"[agents.{name}]\ncommand = {json.dumps(command)}\n"
            f"env = {{ STOKER_ECHO_MCP_START = \"{mode}\" }}\n"
            + ('process = "shared"\n' if shared else ""))


def started(daemon_factory: DaemonFactory, timeout: float, *agents: str) -> DaemonProcess:
    config = ("".join(agents) + f"[tasks]\nmcp_start_timeout = \"{timeout}s\"\n"
              "[lifecycle]\nrestart_backoff = \"100ms\"\nsweep_interval = \"100ms\"\n")
    daemon = daemon_factory(config=config)
    daemon.start()
    return daemon


def is_warning(notice: d.Notice) -> bool:
    return notice.level == "warning" and "MCP server did not come up" in notice.message


def is_late(notice: d.Notice) -> bool:
    return notice.level == "info" and "MCP server came up after all" in notice.message


async def mcp_notices(daemon: DaemonProcess, chat: str) -> list[d.Notice]:
    """The chat's notices about Stoker's MCP server (read on a connection of their own: the
    test's keeps its live subscriptions)."""
    async with daemon.client() as reader:
        return [x.body for x in await replay(reader, chat) if isinstance(x.body, d.Notice)
                and "Stoker's MCP server" in x.body.message]


async def wait_notices(daemon: DaemonProcess, chat: str, count: int, timeout: float = 60
                       ) -> list[d.Notice]:
    """The chat's MCP notices once there are `count` (polled under a deadline)."""
    with trio.fail_after(timeout):
        while True:
            notices = await mcp_notices(daemon, chat)
            if len(notices) >= count:
                return notices
            await trio.sleep(0.1)


async def set_up(client: Client, daemon: DaemonProcess, name: str, agent_name: str) -> str:
    """A chat on `agent_name` whose session is set up (its first turn answered)."""
    chat = (await open_chat(client, name, agent=agent_name, cwd=daemon.work)).chat
    await subscribe(client, chat)
    answer = await turn(client, chat, "hello", timeout=60)
    assert answer.text == "hello"
    assert answer.ended.stop_reason == "end_turn"
    return chat


async def test_a_server_never_started_warns_once_per_session_and_turns_still_work(
        daemon_factory: DaemonFactory) -> None:
    daemon = started(daemon_factory, SHORT, agent("late", "late"),
                     agent("late_http", "late", http=True),
                     agent("late_shared", "late", shared=True))
    async with daemon.client() as client:
        # The default echo agent starts its servers on demand and says so: never checked
        # (set up first, a warning of it would come before the others').
        quiet = await set_up(client, daemon, "quiet", "echo")
        chats = {"late": await set_up(client, daemon, "stdio", "late"),
                 "late_http": await set_up(client, daemon, "http", "late_http")}
        shared = [await set_up(client, daemon, f"shared{i}", "late_shared") for i in range(2)]
        for chat in [*chats.values(), *shared]:
            await wait_notices(daemon, chat, 1)
        # Turns still work, and say nothing more of it (the replays below).
        for chat in [*chats.values(), *shared]:
            again = await turn(client, chat, "still here", timeout=60)
            assert again.text == "still here"
        for name, chat in chats.items():
            [warning] = await mcp_notices(daemon, chat)
            assert is_warning(warning)
            transport = "HTTP" if name == "late_http" else "stdio (`stoker mcp`"
            assert f"agent {name!r} was offered it over {transport}" in warning.message
            assert "Check the agent's log" in warning.message
            assert "mcp_transport_agents" in warning.message
            assert (await actor(client, chat, name)).mcp == (
                "not up (http)" if name == "late_http" else "not up (stdio)")
        # A shared process: each session is checked on its own.
        for chat in shared:
            assert [is_warning(n) for n in await mcp_notices(daemon, chat)] == [True]
        assert await mcp_notices(daemon, quiet) == []
        assert (await actor(client, quiet)).mcp == "not up (stdio)"
        assert daemon.log_text().count("Stoker's MCP server did not come up") == 4

        # A forged credential marks nothing up.
        with pytest.raises(RequestFailed) as refused:
            await client.request(m.McpUp(id=0, chat=chats["late"], credential="0" * 64))
        assert refused.value.code == "unauthorized"
        assert (await actor(client, chats["late"], "late")).mcp == "not up (stdio)"

        # Late is fine: the server comes up (the echo agent's first `/mcp` starts it), and
        # the chat is told so, once.
        for name, chat in chats.items():
            assert (await mcp(client, chat, "list_tasks"))["tasks"] == []
            notices = await wait_notices(daemon, chat, 2)
            assert [is_warning(n) for n in notices] == [True, False]
            assert is_late(notices[1])
            assert (await actor(client, chat, name)).mcp == (
                "up (http)" if name == "late_http" else "up (stdio)")

        # Nor does another chat's (its `stoker mcp` has the late stdio chat's).
        other = mcp_credential(await agent_pid(client, chats["late"]))
        with pytest.raises(RequestFailed) as refused:
            await client.request(m.McpUp(id=0, chat=shared[0], credential=other))
        assert refused.value.code == "unauthorized"
        assert (await actor(client, shared[0], "late_shared")).mcp == "not up (stdio)"

        # A new session (the agent restarted and resumed it) is a new check.
        chat = chats["late"]
        pid = await agent_pid(client, chat)
        os.kill(pid, signal.SIGKILL)
        await wait_actor(client, chat, lambda a: a.pid != pid, agent="late", timeout=60)
        resumed = await turn(client, chat, "after the crash", timeout=60)
        assert resumed.text == "after the crash"
        notices = await wait_notices(daemon, chat, 3)
        assert [is_warning(n) for n in notices] == [True, False, True]
        assert daemon.log_text().count("Stoker's MCP server did not come up") == 5


async def test_a_server_started_at_session_setup_says_nothing(
        daemon_factory: DaemonFactory) -> None:
    # Generous: `stoker mcp` imports the MCP SDK, slow on a loaded machine. The check is
    # that the server is up (sticky: a server up is never warned about).
    daemon = started(daemon_factory, 120, agent("eager", "eager"),
                     agent("eager_http", "eager", http=True))
    async with daemon.client() as client:
        for name, transport in (("eager", "stdio"), ("eager_http", "http")):
            chat = await set_up(client, daemon, name, name)
            want = f"up ({transport})"
            await wait_actor(client, chat, lambda a: a.mcp == want,  # noqa: B023
                             agent=name, timeout=90)
            assert (await mcp(client, chat, "list_tasks"))["tasks"] == []
            assert await mcp_notices(daemon, chat) == []
        assert "Stoker's MCP server did not come up" not in daemon.log_text()
        assert "came up late" not in daemon.log_text()


async def test_two_agents_of_one_chat_are_checked_apart(
        daemon_factory: DaemonFactory) -> None:
    """A chat that switched agents has two live agents, each offered its own server: `late`
    (stdio) does not bring it up, `eager_http` does. Only `late` is warned about, by name,
    each actor shows its own state, and `late`'s server coming up later is its own."""
    # Long enough for eager_http's server (the daemon's endpoint, warmed first) to come up
    # under load; short enough for late's warning to come soon.
    daemon = started(daemon_factory, 5.0, agent("warm", "demand", http=True),
                     agent("eager_http", "eager", http=True), agent("late", "late"))
    async with daemon.client() as client:
        # Bind the HTTP endpoint and import the MCP SDK in the daemon (an unchecked agent).
        warm = await set_up(client, daemon, "warm", "warm")
        assert (await mcp(client, warm, "list_tasks"))["tasks"] == []
        chat = await set_up(client, daemon, "pair", "late")
        other = await turn(client, chat, "hello too", agent="eager_http", timeout=60)
        assert other.ended.stop_reason == "end_turn"
        await wait_actor(client, chat, lambda a: a.mcp == "up (http)", agent="eager_http",
                         timeout=60)
        [warning] = await wait_notices(daemon, chat, 1)
        assert is_warning(warning)
        assert "agent 'late' was offered it over stdio" in warning.message
        assert "eager_http" not in warning.message
        assert (await actor(client, chat, "late")).mcp == "not up (stdio)"
        assert (await actor(client, chat, "eager_http")).mcp == "up (http)"

        # late brings its server up (the echo agent's first `/mcp`): its `stoker mcp` says
        # so for late, and the chat hears it once.
        listed = await turn(client, chat, "/mcp list_tasks {}", agent="late", timeout=90)
        assert json.loads(listed.text) == {"tasks": []}, listed.text
        notices = await wait_notices(daemon, chat, 2)
        assert [is_warning(n) for n in notices] == [True, False]
        assert is_late(notices[1])
        await wait_actor(client, chat, lambda a: a.mcp == "up (stdio)", agent="late")
        assert (await actor(client, chat, "eager_http")).mcp == "up (http)"
        assert daemon.log_text().count("Stoker's MCP server did not come up") == 1

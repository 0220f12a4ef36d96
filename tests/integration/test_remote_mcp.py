"""Stoker's MCP server for agents on another computer: the daemon's HTTP endpoint reaches the
computer's loopback through an SSH remote port forward of its connection (docs/REMOTE.md).

Against OpenSSH's own `sshd` (tests/support/openssh.py): `AllowTcpForwarding` is its setting,
and a refusal must be met as the real server words it; the delegation also against
asyncssh's server (tests/support/sshd.py), which runs where OpenSSH's cannot. The parent is
the echo agent on the computer, advertising `mcpCapabilities.http`; it calls the tools with
`/mcp TOOL JSON` over the forwarded port and delegates to the local echo agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol import deltas as d
from protocol import messages as m
from tests.integration.test_remote import wait_computer
from tests.integration.test_tasks import delegate_a_sleep, mcp, turns_end_once
from tests.support.acp_tee import ClientSchema, read_trace, tee_command, traces
from tests.support.harness import (
    DaemonFactory,
    agent_pid,
    open_chat,
    replay,
    turn,
    wait_gone,
    wait_log,
)
from tests.support.openssh import OpenSshServer, openssh_missing
from tests.support.remote_rig import SshServer, start_remote

needs_openssh = pytest.mark.skipif(openssh_missing() is not None,
                                   reason=openssh_missing() or "")

ECHO = [sys.executable, "-m", "daemon.echo_agent"]
RPARENT = (f"[agents.rparent]\ncommand = {json.dumps([*ECHO, '--mcp-http'])}\n"
           'computer = "loop"\n')


def recorded_parents(trace_dir: Path) -> str:
    """`rparent` on the computer, and `lparent`, the same agent defined for this machine (a
    chat pins it to the computer), both under the ACP recorder: the test reads the
    `mcpServers` entries the daemon sent (the computer is this machine)."""
    return (f"[agents.rparent]\ncommand = "
            f"{json.dumps(tee_command(trace_dir / 'r', [*ECHO, '--mcp-http']))}\n"
            'computer = "loop"\n'
            f"[agents.lparent]\ncommand = "
            f"{json.dumps(tee_command(trace_dir / 'l', [*ECHO, '--mcp-http']))}\n")


def stoker_urls(trace_dir: Path) -> list[str]:
    """The URL of Stoker's entry in every session setup the daemon sent (schema-checked)."""
    urls = []
    schema = ClientSchema()
    for stem in traces(trace_dir):
        sent, answered = read_trace(stem)
        schema.validate(sent, answered)
        for msg in sent:
            if msg.get("method") in ("session/new", "session/load", "session/resume"):
                urls += [e["url"] for e in msg["params"]["mcpServers"]
                         if e.get("name") == "stoker"]
    return urls
FORWARDED = r'event="forwarded a port of this machine to the computer".*remote_port=(\d+)'


def _server(allow: str) -> Iterator[OpenSshServer]:
    server = OpenSshServer(allow_tcp_forwarding=allow)
    yield server
    server.stop()
    if os.environ.get("STOKER_KEEP_TEST_DIRS") != "1":
        subprocess.run(["rm", "-rf", str(server.base)], check=False)


@pytest.fixture(params=["openssh", "asyncssh"])
def forwarding_sshd(request: pytest.FixtureRequest) -> Iterator[SshServer]:
    """OpenSSH as shipped (`AllowTcpForwarding yes`), or asyncssh's server."""
    if request.param == "asyncssh":
        server = SshServer()
        yield server
        server.stop()
        if os.environ.get("STOKER_KEEP_TEST_DIRS") != "1":
            subprocess.run(["rm", "-rf", str(server.base)], check=False)
        return
    missing = openssh_missing()
    if missing is not None:
        pytest.skip(missing)
    yield from _server("yes")


@pytest.fixture
def closed_sshd() -> Iterator[OpenSshServer]:
    """OpenSSH that forwards no port."""
    yield from _server("no")


async def test_a_remote_parent_delegates_to_a_local_agent_through_the_forward(
        forwarding_sshd: SshServer, daemon_factory: DaemonFactory) -> None:
    sshd = forwarding_sshd
    trace_dir = sshd.base / "traces"
    trace_dir.mkdir()
    daemon = start_remote(sshd, daemon_factory, extra=recorded_parents(trace_dir))
    async with daemon.client() as client:
        parent = await open_chat(client, "rboss", agent="rparent", cwd=sshd.work)
        spawned = await delegate_a_sleep(client, parent.chat, "from afar")
        tasks: m.TaskList = await client.request(m.ListTasks(id=0, parent=parent.chat))
        [task] = tasks.tasks
        assert (task.agent, task.origin, task.title) == ("echo", "agent", "from afar")
        # The agent was given the computer's end of the forward, not the daemon's port.
        remote_port = int((await wait_log(daemon, FORWARDED)).group(1))
        st: m.StatusResult = await client.request(m.GetStatus(id=0))
        assert st.mcp_http is not None
        assert urllib.parse.urlsplit(st.mcp_http).port != remote_port
        # A chat pinned to the computer (its agent defined for this machine) is offered the
        # same forward, not this machine's endpoint.
        pinned = await open_chat(client, "pinned", agent="lparent", cwd=sshd.work,
                                 computer="loop")
        assert (await mcp(client, pinned.chat, "list_tasks")) == {"tasks": []}
        assert stoker_urls(trace_dir) == [
            f"http://127.0.0.1:{remote_port}/mcp/{chat}?agent={agent}"
            for chat, agent in (("pinned", "lparent"), ("rboss", "rparent"))]

        # The host goes away with its agent; on the next connection the forward is opened
        # again (on the same remote port when it is free) and the tools work again.
        pid = await agent_pid(client, parent.chat)
        mark = daemon.log_path.stat().st_size
        sshd.kill()
        await wait_gone([pid])
        sshd.start()
        await wait_computer(client, "connected")
        again = await mcp(client, parent.chat, "list_tasks")
        assert [t["id"] for t in again["tasks"]] == [spawned["id"]]
        assert int((await wait_log(daemon, FORWARDED, after=mark)).group(1)) == remote_port
        assert stoker_urls(trace_dir)[-1] == \
            f"http://127.0.0.1:{remote_port}/mcp/rboss?agent=rparent"
        # No notice: the server was offered each time. (A replay ends the live
        # subscription: last.)
        deltas = await replay(client, parent.chat)
        assert not [x for x in deltas if isinstance(x.body, d.Notice)]
        turns_end_once(deltas)


@needs_openssh
async def test_a_server_that_forwards_nothing_leaves_the_chat_working_and_says_why(
        closed_sshd: OpenSshServer, daemon_factory: DaemonFactory) -> None:
    sshd = closed_sshd
    daemon = start_remote(sshd, daemon_factory, extra=RPARENT)
    async with daemon.client() as client:
        parent = await open_chat(client, "rlone", agent="rparent", cwd=sshd.work)
        hello = await turn(client, parent.chat, "hello", timeout=60)
        assert hello.ended.stop_reason == "end_turn", hello.ended
        assert "hello" in hello.text
        tried = await turn(client, parent.chat, "/mcp list_tasks {}")
        assert tried.text == "error: this session has no MCP server", tried.text
        await wait_log(daemon, "MCP server is not offered to the remote agent.*"
                               "refused to forward")
        # A second session (the agent restarted) says it in the log, not in a second notice.
        pid = await agent_pid(client, parent.chat)
        mark = daemon.log_path.stat().st_size
        await turn(client, parent.chat, "/crash", timeout=60)
        await wait_gone([pid])
        again = await turn(client, parent.chat, "hello again", timeout=60)
        assert again.ended.stop_reason == "end_turn", again.ended
        await wait_log(daemon, "MCP server is not offered to the remote agent", after=mark)
        deltas = await replay(client, parent.chat)
        notices = [x.body for x in deltas if isinstance(x.body, d.Notice)]
        assert len(notices) == 1, notices
        assert notices[0].level == "warning"
        assert "refused to forward a port" in notices[0].message
        assert "AllowTcpForwarding" in notices[0].message
        assert "'loop'" in notices[0].message
        turns_end_once(deltas)


@needs_openssh
def test_doctor_warns_of_a_server_that_forwards_nothing(
        closed_sshd: OpenSshServer, daemon_factory: DaemonFactory) -> None:
    sshd = closed_sshd
    daemon = daemon_factory(config="")
    sshd.start()
    daemon.write_config(sshd.computer_config())
    row = daemon.doctor_check("computer loop")
    assert row["status"] == "warn", row
    assert "host key verified" in row["detail"]
    assert "no port forwarding" in row["detail"]
    assert "AllowTcpForwarding" in row["detail"]

"""Many remote agents on one computer, against OpenSSH's own `sshd` and its `MaxSessions`.

Stock OpenSSH lets one connection carry 10 sessions, SFTP included. With every agent,
terminal and git command on one pooled connection, the tenth agent was refused ("open
failed") while `stoker computers` said connected. The computer now spreads long-lived
channels over several connections (`sessions_per_connection`, 6 by default) and learns a
server's lower limit from its refusals. Each test stops the daemon at the end (the fixture),
which must stop every remote agent, even those on connections with no session to spare.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from daemon.client import Client
from protocol import messages as m
from tests.support.harness import DaemonFactory, agent_pid, open_chat, turn
from tests.support.openssh import OpenSshServer, openssh_missing
from tests.support.remote_rig import start_remote

pytestmark = pytest.mark.skipif(openssh_missing() is not None,
                                reason=openssh_missing() or "")


def _server(max_sessions: int) -> Iterator[OpenSshServer]:
    server = OpenSshServer(max_sessions=max_sessions)
    yield server
    server.stop()
    if os.environ.get("STOKER_KEEP_TEST_DIRS") != "1":
        subprocess.run(["rm", "-rf", str(server.base)], check=False)


@pytest.fixture
def stock_sshd() -> Iterator[OpenSshServer]:
    """OpenSSH with its default `MaxSessions 10`."""
    yield from _server(10)


@pytest.fixture
def tight_sshd() -> Iterator[OpenSshServer]:
    """OpenSSH allowing 3 sessions per connection."""
    yield from _server(3)


async def loop_computer(client: Client) -> m.ComputerInfo:
    result: m.ComputerList = await client.request(m.ListComputers(id=0, probe=False))
    return next(c for c in result.computers if c.name == "loop")


async def warm_agents(client: Client, server: OpenSshServer, count: int) -> list[int]:
    """`count` remote echo chats, each answering a turn and staying warm; their pids."""
    pids = []
    for i in range(count):
        info = await open_chat(client, f"many{i}", agent="recho", cwd=server.work)
        result = await turn(client, info.chat, "/pid", timeout=60)
        assert result.ended.stop_reason == "end_turn", (i, result.ended)
        pids.append(int(result.text))
        assert await agent_pid(client, info.chat) == pids[-1]
    return pids


async def test_twelve_agents_on_stock_openssh(stock_sshd: OpenSshServer,
                                              daemon_factory: DaemonFactory) -> None:
    """Twelve warm agents where one connection allows nine: all answer, spread over two
    connections of at most `sessions_per_connection` (6) each, and `computers` shows it."""
    daemon = start_remote(stock_sshd, daemon_factory)
    async with daemon.client() as client:
        pids = await warm_agents(client, stock_sshd, 12)
        assert len(set(pids)) == 12
        info = await loop_computer(client)
        assert info.state == "connected"
        assert info.processes == 12
        assert info.connections == [6, 6], info.connections
        # Every agent still answers (a second turn each, on its own connection).
        for i, pid in enumerate(pids):
            again = await turn(client, f"many{i}", "/pid", timeout=60)
            assert int(again.text) == pid
    listing = daemon.cli("computers", "--no-probe")
    assert listing.returncode == 0, listing.stderr
    assert "6+6" in listing.stdout, listing.stdout
    assert "open failed" not in daemon.log_text()


async def test_a_refusing_server_is_learnt_from(tight_sshd: OpenSshServer,
                                                daemon_factory: DaemonFactory) -> None:
    """A server whose `MaxSessions` (3) is below `sessions_per_connection` (10): each
    refusal moves the agent to another connection, nothing fails, and the daemon still stops
    every agent although no connection has a session to spare for the stop command."""
    daemon = start_remote(tight_sshd, daemon_factory)
    daemon.stop()
    text = (daemon.base / "config.toml").read_text()
    daemon.write_config(text.replace("[computers.loop]\n",
                                     "[computers.loop]\nsessions_per_connection = 10\n", 1))
    daemon.start()
    async with daemon.client() as client:
        pids = await warm_agents(client, tight_sshd, 6)
        assert len(set(pids)) == 6
        info = await loop_computer(client)
        assert info.processes == 6
        # Main: SFTP + 2 agents; each extra connection: 3 agents.
        assert len(info.connections) >= 3, info.connections
        assert sum(info.connections) == 6
        assert max(info.connections) <= 3
    assert "refused another session" in daemon.log_text()
    assert daemon.stop() == 0

"""Remote agents over SSH, against a real SSH server on loopback (tests/support/sshd.py, asyncssh's
server in its own process): key authentication, a verified host key, and agents, files,
terminals, restarts, resume, a vanishing host, orphan reclaim and remote workspaces. The
"remote" host is this machine, so the tests can look at the remote processes with psutil;
every remote process carries the daemon's leftover marker, so the harness fails a test that
leaves one behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import trio

from daemon.client import Client, RequestFailed
from protocol import messages as m
from tests.integration.test_workspaces import make_project
from tests.support.harness import (
    DaemonFactory,
    actor,
    agent_pid,
    alive,
    assert_fs_confined,
    inspect,
    open_chat,
    subscribe,
    turn,
    wait_actor,
    wait_gone,
    wait_log,
    wait_state,
    wait_turn_end,
)
from tests.support.remote_rig import SshServer, start_remote


@pytest.fixture
def sshd() -> Iterator[SshServer]:
    """Request it *before* `daemon_factory`: it must outlive the daemon, whose shutdown
    stops the remote agents through it."""
    server = SshServer()
    yield server
    server.stop()
    if os.environ.get("STOKER_KEEP_TEST_DIRS") != "1":
        subprocess.run(["rm", "-rf", str(server.base)], check=False)


async def computers(client: Client, probe: bool = True) -> dict[str, m.ComputerInfo]:
    result: m.ComputerList = await client.request(m.ListComputers(id=0, probe=probe))
    return {c.name: c for c in result.computers}


async def wait_computer(client: Client, state: str, timeout: float = 20.0) -> m.ComputerInfo:
    with trio.fail_after(timeout):
        while True:
            info = (await computers(client, probe=False))["loop"]
            if info.state == state:
                return info
            await trio.sleep(0.05)


async def wait_busy(client: Client, chat: str) -> None:
    await wait_state(client, chat, "busy", agent="recho", timeout=10)


async def open_remote(client: Client, sshd: SshServer, chat: str
                      ) -> tuple[m.ChatInfo, int]:
    """Open `chat` with the remote echo agent in the server's work dir and start it; the
    chat and the agent's pid."""
    info = await open_chat(client, chat, agent="recho", cwd=sshd.work)
    return info, await agent_pid(client, info.chat)


async def test_remote_agent_behaves_as_locally(sshd: SshServer,
                                               daemon_factory: DaemonFactory) -> None:
    """Warm reuse, cancel, files confined to the remote cwd, a terminal, `computers`, and
    close stopping the whole remote tree (an escaped descendant included)."""
    daemon = start_remote(sshd, daemon_factory)
    cwd = sshd.work / "chat"
    (cwd / "sub").mkdir(parents=True)
    secret = sshd.work / "secret.txt"
    secret.write_text("secret")
    (cwd / "link").symlink_to(sshd.work)
    async with daemon.client() as client:
        info = await open_chat(client, "r1", agent="recho", cwd=cwd)
        assert info.cwd == str(cwd)
        first = await turn(client, info.chat, "/pid")
        second = await turn(client, info.chat, "/pid")
        assert first.ended.stop_reason == "end_turn", first.ended
        assert first.text == second.text
        pid = int(first.text)
        detail = await actor(client, info.chat, "recho")
        assert (detail.pid, detail.pgid, detail.generation) == (pid, pid, 1)
        # A process of the SSH server, leading its own process group, in the chat's cwd,
        # carrying the markers; not a child of the daemon.
        proc = psutil.Process(pid)
        assert os.getpgid(pid) == pid
        assert proc.cwd() == str(cwd)
        assert "STOKER_ACTOR" in proc.environ()
        assert daemon.pid not in [p.pid for p in proc.parents()]

        # Cancel reaches the remote agent (session/cancel, not a kill).
        await subscribe(client, info.chat)
        client._test_subscribed = {info.chat}  # type: ignore[attr-defined]
        accepted = await client.request(m.Prompt(id=0, chat=info.chat, text="/sleep 10000"))
        await wait_busy(client, info.chat)
        start = trio.current_time()
        await client.request(m.Cancel(id=0, chat=info.chat))
        ended = await wait_turn_end(client, info.chat, accepted.turn)
        assert ended.stop_reason == "cancelled"
        assert trio.current_time() - start < 1.0
        assert await agent_pid(client, info.chat) == pid

        # fs/* over SFTP, confined to the remote cwd.
        await assert_fs_confined(client, info.chat, cwd, secret)

        # terminal/* runs there too: stdout and stderr merged, exit status, cwd.
        term = await turn(client, info.chat, "/terminal sh -c 'echo hi; echo there >&2; exit 7'")
        assert term.text == "hi\nthere\n[exit 7]", term.text
        pwd = await turn(client, info.chat, "/terminal pwd")
        assert pwd.text == f"{cwd}\n[exit 0]"

        listing = await computers(client)
        loop = listing["loop"]
        assert loop.state == "connected"
        assert loop.latency_ms is not None
        assert loop.port == sshd.port
        assert loop.processes == 1
        assert loop.connects == 1

        # Close stops the whole remote tree, including a child that left the group.
        escaped = int((await turn(client, info.chat, "/spawn 300")).text)
        assert os.getpgid(escaped) != pid
        await client.request(m.CloseChat(id=0, chat=info.chat))
        await wait_gone([pid, escaped])
    cli = await trio.to_thread.run_sync(daemon.cli, "computers")
    assert cli.returncode == 0, cli.stderr
    assert "loop" in cli.stdout
    assert "connected" in cli.stdout
    assert f"127.0.0.1:{sshd.port}" in cli.stdout
    as_json = json.loads((await trio.to_thread.run_sync(daemon.cli, "computers",
                                                        "--json")).stdout)
    assert as_json["computers"][0]["name"] == "loop"
    # Per chat: the built-in (local) echo agent, on the computer for this one chat.
    sent = await trio.to_thread.run_sync(lambda: daemon.cli(
        "send", "--computer", "loop", "--cwd", str(cwd), "--chat", "percomputer",
        "hello over there"))
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == "hello over there"
    async with daemon.client() as client:
        listed = await inspect(client, "percomputer")
        assert listed.chat.computer == "loop"
        there = await actor(client, "percomputer", "echo")
        assert psutil.Process(there.pid).environ().get("STOKER_TEST_ID") == daemon.marker


async def test_remote_fifo_is_refused_and_the_connection_keeps_serving(
        sshd: SshServer, daemon_factory: DaemonFactory) -> None:
    """A FIFO on the remote host is refused before SFTP opens it (opening it would block the
    remote SFTP server, and with it every file request on the computer's connection)."""
    daemon = start_remote(sshd, daemon_factory)
    cwd = sshd.work / "fifo"
    cwd.mkdir()
    os.mkfifo(cwd / "pipe")
    async with daemon.client() as client:
        info = await open_chat(client, "rfifo", agent="recho", cwd=cwd)
        with trio.fail_after(30):
            read = await turn(client, info.chat, "/read pipe")
            wrote = await turn(client, info.chat, "/write pipe hello")
        assert read.ended.stop_reason == "end_turn"
        for result in (read, wrote):
            assert result.text.startswith("error:"), result.text
            assert "FIFO" in result.text, result.text
        # The same connection still reads and writes regular files.
        assert (await turn(client, info.chat, "/write a.txt fine")).text.startswith("wrote")
        assert (await turn(client, info.chat, "/read a.txt")).text == "fine"
    assert (cwd / "pipe").is_fifo()


async def test_crash_restarts_and_memory_survives_kill9(
        sshd: SshServer, daemon_factory: DaemonFactory) -> None:
    daemon = start_remote(sshd, daemon_factory)
    async with daemon.client() as client:
        info, pid = await open_remote(client, sshd, "r2")
        crashed = await turn(client, info.chat, "/crash")
        assert crashed.ended.error is not None
        assert "status 3" in crashed.ended.error
        after = await agent_pid(client, info.chat)
        assert after != pid
        assert not alive(pid)
        assert (await actor(client, info.chat, "recho")).generation == 2

        assert (await turn(client, info.chat, "/remember kiwi")).text == "remembered kiwi"
        os.kill(after, signal.SIGKILL)
        await wait_gone([after])
        # The crash is noticed, and the agent restarted.
        await wait_actor(client, info.chat, lambda a: a.generation >= 3 and a.state == "ready",
                         agent="recho", timeout=10)
        recalled = await turn(client, info.chat, "/recall")
        assert recalled.ended.stop_reason == "end_turn", recalled.ended
        assert recalled.text == "kiwi"
        detail = await actor(client, info.chat, "recho")
        assert detail.generation == 3
        assert detail.pid not in (pid, after)


async def test_host_vanishing_mid_turn_then_returning(
        sshd: SshServer, daemon_factory: DaemonFactory) -> None:
    daemon = start_remote(sshd, daemon_factory)
    async with daemon.client() as client:
        info, pid = await open_remote(client, sshd, "r3")
        accepted = await client.request(m.Prompt(id=0, chat=info.chat, text="/sleep 20000"))
        await wait_busy(client, info.chat)
        sshd.kill()
        ended = await wait_turn_end(client, info.chat, accepted.turn)
        assert ended.error is not None
        assert "'loop'" in ended.error, ended.error
        assert f"127.0.0.1:{sshd.port}" in ended.error
        assert "lost" in ended.error
        await wait_gone([pid])  # it lost its stdin with the server
        down = (await computers(client))["loop"]
        assert down.losses == 1
        assert down.state in ("disconnected", "connecting", "unreachable"), down

        sshd.start()
        await wait_computer(client, "connected")
        await wait_actor(client, info.chat, lambda a: a.state in ("ready", "failed"),
                         agent="recho")
        again = await turn(client, info.chat, "/pid")
        assert again.ended.stop_reason == "end_turn", again.ended
        assert int(again.text) != pid
        assert (await actor(client, info.chat, "recho")).generation >= 2


async def test_wrong_host_key_is_refused(sshd: SshServer,
                                         daemon_factory: DaemonFactory) -> None:
    daemon = start_remote(sshd, daemon_factory)
    import asyncssh

    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    async with daemon.client() as client:
        info = await open_chat(client, "r4", agent="recho", cwd=sshd.work)
        assert (await turn(client, info.chat, "/pid")).ended.stop_reason == "end_turn"
        # The host "is reinstalled": same address, another key than the one we trust.
        sshd.trust(other)
        sshd.kill()
        sshd.host_key.unlink()
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(sshd.host_key))
        sshd.start()
        await wait_computer(client, "refused")
        result = await turn(client, info.chat, "/pid")
        error = result.ended.error
        assert error is not None
        assert "host key" in error
        assert "CHANGED" in error
        assert "'loop'" in error
        assert "SHA256:" in error
        with pytest.raises(RequestFailed) as refused:
            await open_chat(client, "r5", agent="recho", cwd=sshd.work)
        assert "host key" in refused.value.message
    send = await trio.to_thread.run_sync(
        lambda: daemon.cli("send", "--agent", "recho", "--cwd", str(sshd.work), "hello"))
    assert send.returncode == 1
    assert "host key of computer 'loop'" in send.stderr
    row = await trio.to_thread.run_sync(daemon.doctor_check, "computer loop")
    assert row["status"] == "fail"
    assert "host key" in row["detail"]


async def test_doctor_checks_the_computer(sshd: SshServer,
                                          daemon_factory: DaemonFactory) -> None:
    daemon = start_remote(sshd, daemon_factory)
    async with daemon.client() as client:
        # Probed over there (started in the remote home, asked `initialize`, stopped).
        described: m.AgentDescription = await client.request(
            m.DescribeAgent(id=0, agent="recho"))
        assert described.agent_info["name"] == "stoker-echo"
    row = await trio.to_thread.run_sync(daemon.doctor_check, "computer loop")
    assert row["status"] == "ok", row
    assert "host key verified" in row["detail"]
    assert "Linux" in row["detail"]
    assert "python3 3." in row["detail"]  # the stdio MCP bridge's, in the same round trip


async def test_orphan_reclaim_after_daemon_kill9(
        sshd: SshServer, daemon_factory: DaemonFactory) -> None:
    command = json.dumps([sys.executable, "-m", "daemon.echo_agent", "--linger"])
    linger = f'[agents.sticky]\ncommand = {command}\ncomputer = "loop"\n'
    daemon = start_remote(sshd, daemon_factory, extra=linger)
    async with daemon.client() as client:
        info = await open_chat(client, "r6", agent="sticky", cwd=sshd.work)
        assert (await turn(client, info.chat, "/remember fig")).text == "remembered fig"
        old = await agent_pid(client, info.chat)
        escaped = int((await turn(client, info.chat, "/spawn 300")).text)
        # Flushes the store: the finished turns are durably off the queue before the kill.
        await client.request(m.SetPolicy(id=0, chat=info.chat, policy="ask"))
    daemon.kill9()
    # The connection went with the daemon; the lingering agent ignores its stdin's EOF.
    await trio.sleep(0.3)
    assert alive(old)
    assert alive(escaped)
    daemon.start()
    await wait_gone([old, escaped])
    # Logged once the remote kill script has reported.
    await wait_log(daemon, "reclaimed orphaned remote agent processes", timeout=10)
    async with daemon.client() as client:
        detail = await actor(client, "r6", "sticky")
        assert "reclaimed" in detail.reason
        recalled = await turn(client, "r6", "/recall")
        assert recalled.text == "fig", recalled.ended


async def test_remote_workspace_created_diffed_and_reaped(
        sshd: SshServer, daemon_factory: DaemonFactory) -> None:
    project = make_project(sshd.work)
    daemon = start_remote(sshd, daemon_factory,
                          extra='[worktrees]\nreap_interval = "0"\nreap_grace = "0s"\n')
    new = await trio.to_thread.run_sync(lambda: daemon.cli(
        "workspace", "new", "--project", str(project), "--computer", "loop", "--json"))
    assert new.returncode == 0, new.stderr
    ws: dict[str, Any] = json.loads(new.stdout)
    assert ws["computer"] == "loop"
    root = sshd.work / "state" / "worktrees"
    assert ws["path"].startswith(str(root) + "/")
    assert (root / ws["path"][len(str(root)) + 1:] / "README.md").exists()
    async with daemon.client() as client:
        info = await open_chat(client, "r7", agent="recho", workspace=ws["workspace"])
        assert info.cwd == ws["path"]
        assert (await turn(client, info.chat, "/write added.txt new file")).text.startswith(
            "wrote")
        diff: m.DiffResult = await client.request(m.WorkspaceDiff(
            id=0, workspace=ws["workspace"]))
        assert [f.path for f in diff.files] == ["added.txt"]
        assert "+new file" in diff.patch
        # A clean remote workspace is reaped (soft: moved into the trash over there).
        clean: m.WorkspaceInfo = await client.request(m.WorkspaceNew(
            id=0, project=str(project), computer="loop"))
        await client.request(m.CloseWorkspace(id=0, workspace=clean.workspace))
        await client.request(m.CloseWorkspace(id=0, workspace=ws["workspace"]))
        reaped: m.ReapResult = await client.request(m.Reap(id=0))
        verdicts = {e.workspace: (e.action, e.reason, e.done) for e in reaped.entries}
        assert verdicts[clean.workspace][0] == "delete"
        assert verdicts[clean.workspace][2] is True
        assert verdicts[ws["workspace"]][:2] == ("keep", "dirty")
        assert not os.path.exists(clean.path)
        assert os.path.exists(ws["path"])


async def test_reload_replaces_a_changed_computer(
        sshd: SshServer, daemon_factory: DaemonFactory) -> None:
    daemon = start_remote(sshd, daemon_factory)
    async with daemon.client() as client:
        info, pid = await open_remote(client, sshd, "r8")
        text = daemon.config_path.read_text().replace('keepalive = "2s"', 'keepalive = "3s"')
        daemon.config_path.write_text(text + sshd.computer_config("loop2"))
        daemon.signal(signal.SIGHUP)
        await wait_state(client, info.chat, "hibernated", agent="recho")
        await wait_gone([pid])
        again = await agent_pid(client, info.chat)
        assert again != pid
        listed = await computers(client)
        assert listed["loop"].connects == 2
        assert listed["loop2"].state == "idle"  # added, and not connected before use
        other = await open_chat(client, "r9", cwd=sshd.work, computer="loop2")
        assert other.computer == "loop2"
        assert (await turn(client, other.chat, "on loop2")).text == "on loop2"
        assert (await computers(client))["loop2"].state == "connected"

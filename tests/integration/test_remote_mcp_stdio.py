"""Stoker's MCP server for an agent on another computer that takes MCP over stdio only: a
`python3 -c` bridge over there to the daemon's HTTP endpoint, reached through the SSH remote
port forward (daemon/ssh/mcp_stdio.py, daemon/ssh/mcp_bridge.py; docs/REMOTE.md).

Against OpenSSH's own `sshd` (tests/support/openssh.py), on this machine over loopback. The
parent is the echo agent on the computer without `--mcp-http` (so it takes stdio), under
the ACP recorder: the test reads the entry the daemon sent, and the bridge process's own
/proc entries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from protocol import deltas as d
from tests.integration.test_tasks import delegate_a_sleep, mcp, turns_end_once
from tests.support.acp_tee import ClientSchema, read_trace, tee_command, traces
from tests.support.harness import DaemonFactory, open_chat, replay, turn, wait_log
from tests.support.openssh import OpenSshServer, openssh_missing
from tests.support.remote_rig import remote_config, start_remote

ECHO = [sys.executable, "-m", "daemon.echo_agent"]
FORWARDED = r'event="forwarded a port of this machine to the computer".*remote_port=(\d+)'


@pytest.fixture
def sshd() -> Iterator[OpenSshServer]:
    missing = openssh_missing()
    if missing is not None:
        pytest.skip(missing)
    server = OpenSshServer()
    yield server
    server.stop()
    if os.environ.get("STOKER_KEEP_TEST_DIRS") != "1":
        subprocess.run(["rm", "-rf", str(server.base)], check=False)


def stdio_parents(trace_dir: Path) -> str:
    """`rstdio`, the echo agent on the computer taking stdio MCP only, and `rforced`, one
    that advertises HTTP but is set to stdio (`tasks.mcp_transport_agents`), recorded."""
    forced = tee_command(trace_dir / "f", [*ECHO, "--mcp-http"])
    return (f"[agents.rstdio]\ncommand = {json.dumps(tee_command(trace_dir / 'r', ECHO))}\n"
            'computer = "loop"\n'
            f"[agents.rforced]\ncommand = {json.dumps(forced)}\ncomputer = \"loop\"\n"
            '[tasks]\nmcp_transport_agents = { rforced = "stdio" }\n')


def stoker_entries(trace_dir: Path, prefix: str) -> list[dict[str, Any]]:
    """Stoker's entry in every session setup the daemon sent to the agent recorded under
    `prefix` (schema-checked)."""
    found = []
    schema = ClientSchema()
    for stem in traces(trace_dir):
        if not stem.name.startswith(prefix + "."):
            continue
        sent, answered = read_trace(stem)
        schema.validate(sent, answered)
        for msg in sent:
            if msg.get("method") in ("session/new", "session/load", "session/resume"):
                found += [e for e in msg["params"]["mcpServers"] if e.get("name") == "stoker"]
    return found


def bridges(url: str) -> list[psutil.Process]:
    """The bridge processes running for `url` (on the computer, which is this machine; a
    shim such as pyenv's may have run python3 by another name)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "python3" in "".join(cmdline[:1]) and cmdline[1:2] == ["-c"] \
                and cmdline[-1:] == [url]:
            found.append(proc)
    return found


async def test_a_remote_parent_taking_stdio_delegates_through_a_python_bridge(
        sshd: OpenSshServer, daemon_factory: DaemonFactory) -> None:
    trace_dir = sshd.base / "traces"
    trace_dir.mkdir()
    daemon = start_remote(sshd, daemon_factory, extra=stdio_parents(trace_dir))
    async with daemon.client() as client:
        parent = await open_chat(client, "rstd", agent="rstdio", cwd=sshd.work)
        await delegate_a_sleep(client, parent.chat, "bridged")
        # The entry: python3 over there, the forward's URL in argv, the credential in env.
        remote_port = int((await wait_log(daemon, FORWARDED)).group(1))
        url = f"http://127.0.0.1:{remote_port}/mcp/{parent.chat}?agent=rstdio"
        [entry] = stoker_entries(trace_dir, "r")
        assert entry["command"] == "python3"
        assert entry["args"][0] == "-c"
        assert entry["args"][-1] == url
        [env] = entry["env"]
        assert env["name"] == "STOKER_MCP_CREDENTIAL"
        credential = env["value"]
        assert len(credential) == 64
        # The bridge process (still running: the echo agent keeps its server) has the
        # credential in its environment and nowhere in its command line.
        [bridge] = bridges(url)
        cmdline = Path(f"/proc/{bridge.pid}/cmdline").read_bytes()
        assert url.encode() in cmdline
        assert credential.encode() not in cmdline
        environ = Path(f"/proc/{bridge.pid}/environ").read_bytes().split(b"\0")
        assert f"STOKER_MCP_CREDENTIAL={credential}".encode() in environ
        # An agent that could take HTTP, set to stdio, gets the bridge too.
        forced = await open_chat(client, "rforced", agent="rforced", cwd=sshd.work)
        listed = await mcp(client, forced.chat, "list_tasks")
        assert listed == {"tasks": []}
        [other] = stoker_entries(trace_dir, "f")
        assert (other["command"], other["args"][-1]) == (
            "python3", f"http://127.0.0.1:{remote_port}/mcp/rforced?agent=rforced")
        # No notice: the server was offered.
        for chat in (parent.chat, forced.chat):
            deltas = await replay(client, chat)
            assert not [x for x in deltas if isinstance(x.body, d.Notice)]
            turns_end_once(deltas)


def path_without_python(base: Path) -> Path:
    """A directory of every command in /usr/bin but Python's, for a PATH without it."""
    bin_dir = base / "nopython"
    bin_dir.mkdir()
    for name in os.listdir("/usr/bin"):
        if not name.startswith("python"):
            (bin_dir / name).symlink_to(Path("/usr/bin") / name)
    return bin_dir


def test_doctor_warns_of_a_computer_without_python3(sshd: OpenSshServer,
                                                   daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config="")
    sshd.child_env = {"PATH": str(path_without_python(sshd.base)), "PYENV_VERSION": "system"}
    sshd.start()
    daemon.write_config(sshd.computer_config())
    row = daemon.doctor_check("computer loop")
    assert row["status"] == "warn", row
    assert "host key verified" in row["detail"]
    assert "python3 is not found on its PATH" in row["detail"]
    assert "take MCP over stdio get no Stoker MCP server" in row["detail"]
    assert "no port forwarding" not in row["detail"]


async def test_a_computer_without_python3_leaves_the_chat_working_and_says_why(
        sshd: OpenSshServer, daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config="")
    # As start_remote, with a PATH on the computer that has no python3. (bash reads
    # ~/.bashrc for a command over SSH: a pyenv set up there puts its shims first, which
    # then look in PATH for the "system" version, and find none.)
    sshd.child_env = {"STOKER_TEST_ID": daemon.marker,
                      "XDG_STATE_HOME": str(daemon.base / "remote-xdg"),
                      "PATH": str(path_without_python(sshd.base)), "PYENV_VERSION": "system"}
    sshd.start()
    extra = f"[agents.rstdio]\ncommand = {json.dumps(ECHO)}\ncomputer = \"loop\"\n"
    daemon.write_config(remote_config(sshd, state=daemon.base / "echo-state", extra=extra))
    daemon.start()
    async with daemon.client() as client:
        parent = await open_chat(client, "nopy", agent="rstdio", cwd=sshd.work)
        hello = await turn(client, parent.chat, "hello", timeout=60)
        assert hello.ended.stop_reason == "end_turn", hello.ended
        tried = await turn(client, parent.chat, "/mcp list_tasks {}")
        assert tried.text == "error: this session has no MCP server", tried.text
        await wait_log(daemon, "MCP server is not offered to the remote agent.*python3")
        deltas = await replay(client, parent.chat)
        notices = [x.body for x in deltas if isinstance(x.body, d.Notice)]
        assert len(notices) == 1, notices
        assert notices[0].level == "warning"
        assert "python3 is not found" in notices[0].message, notices[0].message
        assert "'loop'" in notices[0].message
        turns_end_once(deltas)

"""Issue 16: a remote agent's configured environment reaches it, and never a command line.

Against the real SSH server on loopback (tests/support/sshd.py), which records every exec
request it receives: the agent's secrets are in the agent's environment (read from
/proc/PID/environ, which only its owner may read) and in no exec request, and in no process's
command line (world-readable) while the agent runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import trio

from protocol import messages as m
from tests.support.harness import DaemonFactory, agent_pid, open_chat, turn, wait_gone
from tests.support.openssh import OpenSshServer, openssh_missing
from tests.support.remote_rig import ECHO, SshServer, start_remote

SECRET = "sk-live-9f8e7d6c5b4a3210"
HOSTILE = "line one\n$(touch pwned) `touch pwned2` 'q' \"dq\" \\ %s a=b\n"


@pytest.fixture
def sshd() -> Iterator[SshServer]:
    """Requested before `daemon_factory`: it must outlive the daemon, whose shutdown stops
    the remote agents through it."""
    server = SshServer()
    yield server
    server.stop()
    if os.environ.get("STOKER_KEEP_TEST_DIRS") != "1":
        subprocess.run(["rm", "-rf", str(server.base)], check=False)


def secretive_agent(state: Path) -> str:
    env = {"STOKER_ECHO_STATE": str(state), "API_KEY": SECRET, "HOSTILE": HOSTILE}
    table = ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items())
    return ("[agents.secretive]\n"
            f"command = {json.dumps(ECHO)}\n"
            'computer = "loop"\n'
            f"env = {{ {table} }}\n")


def command_lines_with(needle: bytes) -> list[int]:
    """Pids of the processes whose command line contains `needle`."""
    found = []
    for proc in psutil.process_iter():
        try:
            with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
                if needle in fh.read():
                    found.append(proc.pid)
        except OSError:
            continue
    return found


async def test_a_remote_agent_gets_its_env_and_no_command_line_shows_it(
        sshd: SshServer, daemon_factory: DaemonFactory) -> None:
    daemon = start_remote(sshd, daemon_factory,
                          extra=secretive_agent(sshd.base / "echo-state"))
    cwd = sshd.work / "chat"
    cwd.mkdir(parents=True)
    async with daemon.client() as client:
        info = await open_chat(client, "keys", agent="secretive", cwd=cwd)
        pid = await agent_pid(client, info.chat)
        environ = psutil.Process(pid).environ()
        assert environ["API_KEY"] == SECRET
        assert environ["HOSTILE"] == HOSTILE
        assert "STOKER_ACTOR" in environ
        # The agent reads the client's ACP input right after its environment.
        assert (await turn(client, info.chat, "still talking")).text == "still talking"
        assert command_lines_with(SECRET.encode()) == []

    requests = sshd.exec_requests()
    launches = [r for r in requests if "stoker-launch" in r]
    assert launches, requests
    for request in requests:
        assert SECRET not in request
        assert "sk-live" not in request
        assert "touch pwned" not in request
    assert not (cwd / "pwned").exists()
    assert not (cwd / "pwned2").exists()


SCANNER = r"""
import os, sys
needle, out = os.environ["NEEDLE"].encode(), sys.argv[1]
hits = set()
scans = 0
while not os.path.exists(out + ".stop"):
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if needle in fh.read():
                        hits.add(pid)
            except OSError:
                pass
    scans += 1
with open(out, "w") as fh:
    fh.write(f"{scans} {' '.join(sorted(hits))}")
"""


@pytest.fixture
def openssh() -> Iterator[OpenSshServer]:
    server = OpenSshServer()
    yield server
    server.stop()
    if os.environ.get("STOKER_KEEP_TEST_DIRS") != "1":
        subprocess.run(["rm", "-rf", str(server.base)], check=False)


@pytest.mark.skipif(openssh_missing() is not None, reason=openssh_missing() or "")
async def test_another_user_scanning_proc_never_sees_the_secret(
        openssh: OpenSshServer, daemon_factory: DaemonFactory) -> None:
    """The issue's attack, against OpenSSH's own sshd: a second user (uid 65534 when the
    tests run as root, else this user) scans every /proc/*/cmdline in a loop while remote
    agents start, are stopped and start again; the secret never shows."""
    server = openssh
    daemon = start_remote(server, daemon_factory,
                          extra=secretive_agent(server.base / "echo-state"))
    out = server.base / "scan.txt"
    os.chmod(server.base, 0o777)
    argv = [sys.executable, "-c", SCANNER, str(out)]  # the needle never in its own argv
    if os.geteuid() == 0 and shutil.which("setpriv"):
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    scanner = await trio.lowlevel.open_process(argv, env={**os.environ, "NEEDLE": SECRET})
    try:
        async with daemon.client() as client:
            for i in range(3):
                info = await open_chat(client, f"scan{i}", agent="secretive",
                                       cwd=server.work)
                pid = await agent_pid(client, info.chat)
                assert psutil.Process(pid).environ()["API_KEY"] == SECRET
                await client.request(m.CloseChat(id=0, chat=info.chat))
                await wait_gone([pid])
    finally:
        (server.base / "scan.txt.stop").touch()
        with trio.fail_after(30):
            await scanner.wait()
    scans, _, hits = out.read_text().partition(" ")
    assert int(scans) > 3, "the scanner did not run during the starts"
    assert hits == "", f"the secret was on a command line: pids {hits}"

"""The daemon as a systemd service, against the real daemon process.

The test plays systemd's part with real kernel objects: it owns the ``$NOTIFY_SOCKET``
datagram socket (whatever arrives there is exactly what the manager would parse), and for
socket activation it binds and listens on the Unix socket itself, then hands the descriptor
over at fd 3 with ``LISTEN_*`` as ``systemd`` does between fork and exec. Variables naming
the daemon's pid (``LISTEN_PID``, ``WATCHDOG_PID``) are set by a tiny launcher that execs the
daemon, so the pid it writes is the daemon's own.

No sleeps that hope: every wait is on a datagram, a log line, a socket or an actor state,
with a deadline.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import ParamSpec

import psutil
import pytest
import trio
import trio.lowlevel

from daemon.client import Client
from protocol import messages as m
from tests.support.harness import (
    MOVE_FDS_TO_3,
    DaemonFactory,
    DaemonProcess,
    actor,
    agent_pid,
    open_chat,
    subscribe,
    turn,
    wait_log,
    wait_state,
)

P = ParamSpec("P")


def deadline(seconds: float) -> Callable[[Callable[P, Awaitable[None]]],
                                         Callable[P, Awaitable[None]]]:
    """Fail the test after *seconds*: a hung daemon must fail it (and be killed by the
    fixture's teardown), not hang the run until something outside kills pytest and leaves
    the daemon behind."""
    def wrap(test: Callable[P, Awaitable[None]]) -> Callable[P, Awaitable[None]]:
        @functools.wraps(test)
        async def bounded(*args: P.args, **kwargs: P.kwargs) -> None:
            with trio.fail_after(seconds):
                await test(*args, **kwargs)
        return bounded
    return wrap


SYSTEMD_VARS = re.compile(r"^(NOTIFY_SOCKET|LISTEN_\w*|WATCHDOG_\w*)=", re.MULTILINE)
ECHO = [sys.executable, "-m", "daemon.echo_agent"]

# Runs between "fork" and the daemon's exec, as systemd's own code does: moves the
# descriptors it was given to 3, 4, ... and sets the named variables to its own pid, which
# the daemon keeps across exec. argv: JSON spec, then the daemon's argv.
_LAUNCHER = r"""
import fcntl, json, os, sys
spec = json.loads(sys.argv[1])
""" + MOVE_FDS_TO_3 + r"""
for name in spec["pid_vars"]:
    os.environ[name] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


def launcher(*, pid_vars: tuple[str, ...] = (), fds: tuple[int, ...] = ()) -> list[str]:
    """argv for `DaemonProcess.start(launcher=...)`: set *pid_vars* to the daemon's pid and
    move *fds* (also given as `pass_fds`) to 3, 4, ..."""
    spec = json.dumps({"pid_vars": list(pid_vars), "fds": list(fds)})
    return [sys.executable, "-c", _LAUNCHER, spec]


class NotifySocket:
    """The manager's end of ``$NOTIFY_SOCKET``: every datagram, parsed, with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._raw.bind(str(path))
        self._sock = trio.socket.from_stdlib_socket(self._raw)
        self.received: list[tuple[float, dict[str, str]]] = []
        """(trio.current_time(), assignments) for every datagram taken so far."""

    async def next(self, timeout: float = 20.0) -> dict[str, str]:
        with trio.fail_after(timeout):
            data = await self._sock.recv(65536)
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.received.append((trio.current_time(), fields))
        return fields

    async def wait_for(self, predicate: Callable[[dict[str, str]], bool],
                       timeout: float = 20.0) -> dict[str, str]:
        """The first datagram (from now on) that satisfies *predicate*."""
        with trio.fail_after(timeout):
            while True:
                fields = await self.next()
                if predicate(fields):
                    return fields

    def all(self) -> Iterator[dict[str, str]]:
        return (fields for _, fields in self.received)

    def close(self) -> None:
        """Close after the trio run (fixture teardown): the raw socket, not trio's wrapper."""
        self._raw.close()


@pytest.fixture
def notify_factory() -> Iterator[Callable[[Path], NotifySocket]]:
    made: list[NotifySocket] = []

    def make(path: Path) -> NotifySocket:
        sock = NotifySocket(path)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()


def is_ready(fields: dict[str, str]) -> bool:
    return fields.get("READY") == "1"


def is_watchdog(fields: dict[str, str]) -> bool:
    return fields.get("WATCHDOG") == "1"


def agent_env(pid: int) -> str:
    """The environment an agent process started with, one VAR=value per line."""
    return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode()


async def wait_exit(daemon: DaemonProcess, timeout: float = 30.0) -> int:
    assert daemon.proc is not None
    status = await trio.to_thread.run_sync(daemon.proc.wait, timeout)
    return int(status)


# ------------------------------------------------------------------ notify + watchdog


@deadline(90)
async def test_ready_watchdog_status_then_stopping_and_clean_exit(
        daemon_factory: DaemonFactory,
        notify_factory: Callable[[Path], NotifySocket]) -> None:
    daemon = daemon_factory(config='[daemon]\nlog_level = "info"\n')
    notify = notify_factory(daemon.base / "notify")
    usec = 500_000  # pings every 0.25 s
    daemon.start(wait=False, launcher=launcher(pid_vars=("WATCHDOG_PID",)),
                 env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(usec)})

    ready = await notify.wait_for(is_ready)
    # READY means usable: the socket is bound and answers a request at once.
    assert daemon.socket.exists()
    async with daemon.client() as client:
        assert isinstance(await client.request(m.Ping(id=0)), m.Pong)
    assert re.fullmatch(r"0 warm, 0 busy, 0 chats", ready["STATUS"]), ready

    # WATCHDOG=1 from the trio loop every WATCHDOG_USEC/2, only because WATCHDOG_PID is us.
    pings = [trio.current_time()]
    while len(pings) < 7:
        await notify.wait_for(is_watchdog, timeout=5)
        pings.append(notify.received[-1][0])
    gaps = sorted(b - a for a, b in itertools.pairwise(pings[1:]))
    period = usec / 2 / 1e6
    median = gaps[len(gaps) // 2]
    assert 0.5 * period < median < 1.6 * period, gaps
    assert max(gaps) < usec / 1e6, f"a ping came later than WATCHDOG_USEC: {gaps}"

    async with daemon.client() as client:
        info = await open_chat(client, "ops", cwd=daemon.work)
        agent_pid = int((await turn(client, info.chat, "/pid")).text)
        # Neither the agent nor a terminal it starts sees systemd's variables.
        assert not SYSTEMD_VARS.search(agent_env(agent_pid)), agent_env(agent_pid)
        env_out = (await turn(client, info.chat, "/terminal env")).text
        assert f"STOKER_TEST_ID={daemon.marker}" in env_out
        assert not SYSTEMD_VARS.search(env_out), env_out

        # STATUS follows the counts: a busy agent shows up within the update period (5 s).
        busy = await client.request(m.Prompt(id=0, chat=info.chat, text="/sleep 30000"))
        await notify.wait_for(lambda f: "1 busy" in f.get("STATUS", ""), timeout=15)
        assert (await actor(client, info.chat)).state == "busy"

        # SIGTERM with that turn in flight: STOPPING=1, the turn ends, exit 0, agent gone.
        assert busy.turn >= 1
        daemon.signal(signal.SIGTERM)
        await notify.wait_for(lambda f: f.get("STOPPING") == "1", timeout=15)
    assert await wait_exit(daemon) == 0
    assert not psutil.pid_exists(agent_pid) or \
        psutil.Process(agent_pid).status() == psutil.STATUS_ZOMBIE
    assert daemon.leftovers() == []
    after_stop = False
    for fields in notify.all():
        after_stop = after_stop or fields.get("STOPPING") == "1"
        assert not (after_stop and is_ready(fields)), "READY after STOPPING"
    assert 'event="shutting down" signal=SIGTERM' in daemon.log_text()


# ------------------------------------------------------------------ socket activation


@deadline(90)
async def test_socket_activation_serves_the_inherited_socket(
        daemon_factory: DaemonFactory,
        notify_factory: Callable[[Path], NotifySocket]) -> None:
    daemon = daemon_factory()
    notify = notify_factory(daemon.base / "notify")
    path = daemon.base / "activated.sock"
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(path))
    os.chmod(path, 0o600)
    listening.listen(16)
    inode = os.fstat(listening.fileno()).st_ino
    pongs: list[m.Pong] = []

    async def early_client() -> None:
        # Connects while no daemon runs: the kernel queues it on systemd's socket.
        async with Client.connect(path, client="early") as client:
            pongs.append(await client.request(m.Ping(id=0)))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(early_client)
            await trio.lowlevel.checkpoint()
            daemon.start(
                wait=False, pass_fds=(listening.fileno(),),
                launcher=launcher(pid_vars=("LISTEN_PID",), fds=(listening.fileno(),)),
                # A watchdog meant for another process: the daemon must not ping it.
                env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "stoker",
                     "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000",
                     "WATCHDOG_PID": "1"})
            await notify.wait_for(is_ready)
    assert len(pongs) == 1, "the connection made before the daemon started was not served"
    # It served systemd's socket and bound none of its own.
    assert not daemon.socket.exists()
    assert re.search(r'event=ready socket=\S*activated.sock activated=True', daemon.log_text())
    # run_watchdog pings once before READY when active: none came, as WATCHDOG_PID is not us.
    assert not any(is_watchdog(f) for f in notify.all())

    async with Client.connect(path, client="test") as client:
        info = await open_chat(client, "act", cwd=daemon.work)
        agent_pid = int((await turn(client, info.chat, "/pid")).text)
    env = agent_env(agent_pid)
    assert f"STOKER_TEST_ID={daemon.marker}" in env
    assert not SYSTEMD_VARS.search(env), env
    # Nor does the agent hold the listening socket (FD_CLOEXEC on the inherited fd).
    held = set()
    for fd in os.listdir(f"/proc/{agent_pid}/fd"):
        try:
            held.add(os.readlink(f"/proc/{agent_pid}/fd/{fd}"))
        except FileNotFoundError:
            continue
    assert f"socket:[{inode}]" not in held, held

    assert daemon.stop() == 0
    # The path belongs to the socket unit: the daemon must not unlink it.
    assert path.exists()
    assert not any(is_watchdog(f) for f in notify.all())
    listening.close()


# ------------------------------------------------------------------ reload


def _config(*, idle_ttl: str, x_env: str = "", y: bool = False) -> str:
    text = (f'[lifecycle]\nidle_ttl = "{idle_ttl}"\nsweep_interval = "100ms"\n\n'
            f"[agents.x]\ncommand = {json.dumps(ECHO)}\n{x_env}\n")
    if y:
        text += f"[agents.y]\ncommand = {json.dumps(ECHO)}\n"
    return text


@deadline(90)
async def test_reload_applies_changes_keeps_unchanged_agents_rejects_bad_config(
        daemon_factory: DaemonFactory,
        notify_factory: Callable[[Path], NotifySocket]) -> None:
    daemon = daemon_factory(config=_config(idle_ttl="1h"))
    notify = notify_factory(daemon.base / "notify")
    daemon.start(env={"NOTIFY_SOCKET": str(notify.path)})
    await notify.wait_for(is_ready)

    async with daemon.client() as client:
        a = await open_chat(client, "a", cwd=daemon.work)
        b = await open_chat(client, "b", agent="x", cwd=daemon.work)
        pid_a = await agent_pid(client, a.chat)
        pid_b = await agent_pid(client, b.chat, "x")

        # 1. SIGHUP: agent x changed, agent y is new; the echo agent is untouched.
        daemon.write_config(_config(idle_ttl="1h", x_env='env = {ECHO_GEN = "2"}', y=True))
        before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        mark = len(daemon.log_text())
        daemon.signal(signal.SIGHUP)
        reloading = await notify.wait_for(lambda f: f.get("RELOADING") == "1")
        assert before_usec <= int(reloading["MONOTONIC_USEC"]) <= \
            time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        done = await notify.next()
        assert is_ready(done), done
        assert re.fullmatch(r"\d+ warm, \d+ busy, 2 chats", done["STATUS"]), done
        line = await wait_log(daemon, r'event="config reloaded" .*', after=mark)
        assert "recycled=1" in line.group(0)
        assert "changed=agents.x,agents.y" in line.group(0)

        await wait_state(client, b.chat, "hibernated", agent="x")
        same = await actor(client, a.chat)
        assert (same.state, same.pid) == ("ready", pid_a)
        assert await agent_pid(client, a.chat) == pid_a
        assert await agent_pid(client, b.chat, "x") != pid_b
        recycled = await turn(client, b.chat, "/terminal printenv ECHO_GEN", agent="x")
        assert recycled.text.startswith("2\n"), recycled.text
        c = await open_chat(client, "c", agent="y", cwd=daemon.work)
        assert (await turn(client, c.chat, "new agent", agent="y")).text == "new agent"

        # 2. An invalid file (a typo'd key) is rejected, by SIGHUP and by `stoker reload`.
        good = daemon.config_path.read_text()
        daemon.write_config(good.replace("idle_ttl", "idle_tt"))
        mark = len(daemon.log_text())
        daemon.signal(signal.SIGHUP)
        await notify.wait_for(lambda f: f.get("RELOADING") == "1")
        assert is_ready(await notify.next())
        rejected = await wait_log(daemon, r'level=error actor=daemon event="reload rejected; '
                                  r'keeping the running config" error=.*', after=mark)
        assert "unknown key `idle_tt`" in rejected.group(0)
        assert "lifecycle" in rejected.group(0)
        cli = await trio.to_thread.run_sync(lambda: daemon.cli("reload"))
        assert cli.returncode == 1
        assert "unknown key `idle_tt`" in cli.stderr, cli.stderr
        await notify.wait_for(lambda f: f.get("RELOADING") == "1")
        assert is_ready(await notify.next())
        # The old config is still in force: y is known, the echo agent still warm.
        assert (await turn(client, c.chat, "still here", agent="y")).text == "still here"
        assert (await actor(client, a.chat)).pid == pid_a

        # 3. A lifecycle change applies to running agents: idle_ttl 1h -> 1s hibernates.
        daemon.write_config(good.replace('"1h"', '"1s"'))
        cli = await trio.to_thread.run_sync(lambda: daemon.cli("reload"))
        assert cli.returncode == 0, cli.stderr
        line = await wait_log(daemon, r'event="config reloaded" .*changed=lifecycle.idle_ttl\b')
        assert "recycled=0" in line.group(0)
        await wait_state(client, a.chat, "hibernated", timeout=15)
        assert psutil.pid_exists(pid_a) is False or \
            psutil.Process(pid_a).status() == psutil.STATUS_ZOMBIE
    assert daemon.stop() == 0


# ------------------------------------------------------------------ logs


SECRET_ENV = "sk-stoker-ENVSECRET-6f1c2a"
PROMPT = "deploy with password hunter2-PROMPTWORD-91b and token ghp_PROMPTSECRET0042"


@deadline(90)
async def test_logs_are_structured_and_keep_prompts_and_secrets_out(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=(
        f"[agents.sec]\ncommand = {json.dumps(ECHO)}\n"
        f'env = {{API_KEY = "{SECRET_ENV}", OPENAI_API_KEY = "{SECRET_ENV}"}}\n'))
    daemon.start(log_level="info")
    async with daemon.client() as client:
        info = await open_chat(client, "logs", agent="sec", cwd=daemon.work)
        await subscribe(client, info.chat)
        result = await turn(client, info.chat, PROMPT, agent="sec")
        assert result.ended.stop_reason == "end_turn"
    assert daemon.stop() == 0
    text = daemon.log_text()
    for secret in (SECRET_ENV, "hunter2-PROMPTWORD-91b", "ghp_PROMPTSECRET0042", "deploy with"):
        assert secret not in text, f"{secret!r} is in the info-level log"
    lines = [line for line in text.splitlines() if line and not line.startswith(" ")]
    assert lines
    for line in lines:
        assert re.match(r"\S+ level=(debug|info|warning|error) actor=\S+ ", line), line
        assert " event=" in line, line
        assert "level=debug" not in line, line
    started = [line for line in lines if 'event="agent started"' in line]
    assert started, text
    assert re.search(rf"level=info actor=backend chat={info.chat} agent=sec gen=1 "
                     r'event="agent started" pid=\d+', started[0]), started[0]
    assert any(re.search(rf"actor=backend chat={info.chat} agent=sec gen=1 "
                         r'event="turn ended" .*stop_reason=end_turn', line) for line in lines)

    # At debug level prompts may be logged, but the agent's env values never are.
    daemon.start(log_level="debug")
    async with daemon.client() as client:
        result = await turn(client, info.chat, PROMPT, agent="sec")
        assert result.ended.stop_reason == "end_turn"
    assert daemon.stop() == 0
    assert "level=debug" in daemon.log_text()
    assert SECRET_ENV not in daemon.log_text()


def test_log_level_flag_survives_reload_of_config_level() -> None:
    """`--log-level debug` pins the level: a reload applying `log_level = "info"` from the
    file must not silently drop the operator's choice."""
    code = (
        "import logging\n"
        "from daemon import log\n"
        "log.setup('debug', pinned=True)\n"
        "log.set_level('error')\n"
        "assert logging.getLogger('stoker').level == logging.DEBUG\n"
        "log.setup('info')\n"
        "log.set_level('error')\n"
        "assert logging.getLogger('stoker').level == logging.ERROR\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)

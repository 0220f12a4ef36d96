"""Issue 21: the `stoker` command line as a newcomer meets it, driven as a user drives it: a
real CLI process against the real daemon, a real SIGINT for Ctrl-C, a real pipe closed by
`head`, a pseudo-terminal where the output depends on one."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
import trio

from protocol import deltas as d
from tests.support.harness import DaemonProcess, replay, subscribe, wait_for_delta

Spawn = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def spawn_cli(daemon: DaemonProcess) -> Iterator[Spawn]:
    """`spawn_cli(*args)`: `stoker ARGS` as a process of its own (stdout and stderr piped,
    stdin closed), killed at teardown if the test left it running (before the daemon stops:
    it carries the daemon's test marker)."""
    procs: list[subprocess.Popen[str]] = []

    def spawn(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", *args],
                                env=daemon.env(), cwd=str(daemon.work),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


async def wait_running(daemon: DaemonProcess, chat: str, after: int = 0) -> int:
    """Wait until a turn of `chat` numbered above `after` runs on its agent (status `busy`,
    reason `turn N`); N."""
    def running(e: d.Delta) -> bool:
        return (e.chat == chat and isinstance(e.body, d.Status) and e.body.state == "busy"
                and int(e.body.reason.removeprefix("turn ")) > after)

    async with daemon.client("watch") as client:
        await subscribe(client, chat, since=0)
        busy = await wait_for_delta(client, running, timeout=30)
        assert isinstance(busy.body, d.Status)
        return int(busy.body.reason.removeprefix("turn "))


async def turn_ends(daemon: DaemonProcess, chat: str) -> dict[int, d.TurnEnded]:
    async with daemon.client("audit") as client:
        return {x.turn: x.body for x in await replay(client, chat)
                if isinstance(x.body, d.TurnEnded)}


async def read_chat_line(proc: subprocess.Popen[str]) -> str:
    """The chat id from `send`'s first stderr line (`chat: ID`)."""
    assert proc.stderr is not None
    line = await trio.to_thread.run_sync(proc.stderr.readline)
    assert line.startswith("chat: "), line
    return line.split()[1]


# ------------------------------------------------------------------ Ctrl-C and pipes


async def test_ctrl_c_cancels_the_turn_send_started(daemon: DaemonProcess,
                                                     spawn_cli: Spawn) -> None:
    """Without --chat: the first SIGINT cancels the turn this command started (not just
    prints so), and the command exits 130 once the turn has ended."""
    proc = spawn_cli("send", "--agent", "echo", "/sleep 60000")
    chat = await read_chat_line(proc)
    turn_no = await wait_running(daemon, chat)
    proc.send_signal(signal.SIGINT)
    status = await trio.to_thread.run_sync(lambda: proc.wait(30))
    _, err = proc.communicate()
    assert status == 130, err
    assert f"cancelling turn {turn_no}" in err
    assert "Traceback" not in err
    ends = await turn_ends(daemon, chat)
    assert ends[turn_no].stop_reason == "cancelled"


async def test_ctrl_c_with_chat_cancels_only_its_own_turn(daemon: DaemonProcess,
                                                           spawn_cli: Spawn) -> None:
    """With --chat: the turn cancelled is the one this command queued; a turn another client
    started before it runs on to its end."""
    assert daemon.cli("send", "--agent", "echo", "--chat", "shared", "warm").returncode == 0
    first = spawn_cli("send", "--chat", "shared", "/sleep 1500")
    running = await wait_running(daemon, "shared", after=1)
    second = spawn_cli("send", "--chat", "shared", "/sleep 60000")
    assert second.stderr is not None
    line = await trio.to_thread.run_sync(second.stderr.readline)
    assert "queued behind 1 turn" in line, line
    second.send_signal(signal.SIGINT)
    assert await trio.to_thread.run_sync(lambda: second.wait(30)) == 130
    assert await trio.to_thread.run_sync(lambda: first.wait(30)) == 0
    out, _ = first.communicate()
    assert out.strip() == "slept 1500"
    ends = await turn_ends(daemon, "shared")
    assert ends[running].stop_reason == "end_turn"
    assert ends[running + 1].stop_reason == "cancelled"
    second.communicate()


async def test_send_into_a_closed_pipe_exits_quietly(daemon: DaemonProcess) -> None:
    """`stoker send ... | head -c 60`: no traceback, no complaint, exit 0 (the reader
    leaving is not a failure); 200 KiB is more than a pipe buffers, so the write fails."""
    script = (f"{sys.executable} -m daemon.cli send --agent echo '/bigline 200' | head -c 60;"
              " echo \" status=${PIPESTATUS[0]}\"")
    done = await trio.to_thread.run_sync(lambda: subprocess.run(
        ["bash", "-c", script], env=daemon.env(), cwd=str(daemon.work), capture_output=True,
        text=True, timeout=60))
    assert done.stdout == "x" * 60 + " status=0\n", done.stdout[-200:]
    assert [line for line in done.stderr.splitlines() if not line.startswith("chat: ")] == []


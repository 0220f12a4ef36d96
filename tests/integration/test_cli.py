"""Issue 21: the `stoker` command line as a newcomer meets it, driven as a user drives it: a
real CLI process against the real daemon, a real SIGINT for Ctrl-C, a real pipe closed by
`head`, a pseudo-terminal where the output depends on one."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import trio

from protocol import deltas as d
from protocol import messages as m
from tests.support.harness import (
    ROOT,
    DaemonFactory,
    DaemonProcess,
    replay,
    short_tmpdir,
    subscribe,
    wait_for_delta,
)

EXIT_WAIT = 120
"""Seconds a CLI process gets to exit after its turn ended or a SIGINT: a failsafe, not a
measure (the run that found 30 s too short had the machine at load 30 on 2 cores)."""

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


async def exit_status(proc: subprocess.Popen[str]) -> int:
    """`proc`'s exit status within EXIT_WAIT; if it is still running then, what it was doing:
    its threads' stacks, which `stoker` prints on SIGUSR1, in the failure."""
    try:
        return await trio.to_thread.run_sync(lambda: proc.wait(EXIT_WAIT))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        # The dump is written by the signal handler at once; the kill must not race it.
        await trio.sleep(2)
        proc.kill()
        _, err = await trio.to_thread.run_sync(proc.communicate)
        raise AssertionError(f"{proc.args!r} did not exit in {EXIT_WAIT} s; its stacks and "
                             f"stderr:\n{err[-8000:]}") from None


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
    status = await exit_status(proc)
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
    # Long enough that the second command (a CLI start: seconds on a loaded machine) is
    # queued behind it: at 1.5 s a loaded run saw the first end before the second came.
    first = spawn_cli("send", "--chat", "shared", "/sleep 6000")
    running = await wait_running(daemon, "shared", after=1)
    second = spawn_cli("send", "--chat", "shared", "/sleep 60000")
    assert second.stderr is not None
    line = await trio.to_thread.run_sync(second.stderr.readline)
    assert "queued behind 1 turn" in line, line
    second.send_signal(signal.SIGINT)
    assert await exit_status(second) == 130
    assert await exit_status(first) == 0
    out, _ = first.communicate()
    assert out.strip() == "slept 6000"
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



# ------------------------------------------------------------------ progress, tool calls


def run_on_terminal(daemon: DaemonProcess, *args: str) -> tuple[int, str, str]:
    """`stoker ARGS` with stderr on a pseudo-terminal (as in an interactive shell) and
    stdout on a pipe: (exit status, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", *args], env=daemon.env(),
                                cwd=str(daemon.work), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=slave, text=True)
    finally:
        os.close(slave)
    out, _ = proc.communicate(timeout=60)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer of the terminal is gone
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return proc.returncode, out, shown.decode().replace("\r\n", "\n")


SLOW_START = """
[agents.slowecho]
command = ["{python}", "-m", "daemon.cli", "echo-agent", "--startup-delay", "500"]
"""


def test_send_shows_the_cold_start_on_a_terminal(daemon_factory: DaemonFactory) -> None:
    """On a terminal, send says what the agent is doing before the first word comes: its
    start, the session it resumes, how long it took. Not under --quiet or --json, not when
    stderr is not a terminal."""
    daemon = daemon_factory(config=SLOW_START.format(python=sys.executable))
    daemon.start()
    status, out, shown = run_on_terminal(daemon, "send", "--agent", "slowecho", "--chat",
                                         "c1", "hello")
    assert (status, out) == (0, "hello\n"), shown
    lines = shown.splitlines()
    assert lines[0] == "starting slowecho...", shown
    assert lines[1].startswith("ready in "), shown
    assert float(lines[1].removeprefix("ready in ").removesuffix("s")) >= 0.5

    daemon.stop()
    daemon.start()  # the agent restarts cold and resumes the chat's session
    status, out, shown = run_on_terminal(daemon, "send", "--chat", "c1", "again")
    assert (status, out) == (0, "again\n"), shown
    assert shown.splitlines()[:2] == ["starting slowecho...", f"resuming session "
                                      f"{shown.split('resuming session ')[1].split()[0]}"]
    assert "ready in" in shown

    daemon.stop()
    daemon.start()
    status, out, shown = run_on_terminal(daemon, "send", "--quiet", "--agent", "slowecho",
                                         "quiet please")
    assert (status, out, shown) == (0, "quiet please\n", "")
    status, out, shown = run_on_terminal(daemon, "send", "--json", "--chat", "c1", "j")
    assert status == 0
    assert "starting" not in shown
    kinds = [json.loads(line)["body"]["kind"] for line in out.splitlines()]
    assert kinds[-1] == "turn_ended"
    assert "status" in kinds  # the cold start is in the deltas, not on the terminal

    daemon.stop()
    daemon.start()
    piped = daemon.cli("send", "--chat", "c1", "piped")
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, "piped\n", "")


def test_send_shows_tool_calls_compactly(daemon: DaemonProcess) -> None:
    """A tool call is one line on stderr when it finishes; stdout keeps just the reply."""
    done = daemon.cli("send", "--agent", "echo", "--chat", "t", "/tool")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "tool done\n"
    assert done.stderr.splitlines() == ["[tool echo tool: completed]"]
    quiet = daemon.cli("send", "--chat", "t", "--quiet", "/tool")
    assert (quiet.stdout, quiet.stderr) == ("tool done\n", "")


# ------------------------------------------------------------------ attach, log


async def test_attach_says_what_it_follows_and_tails(daemon: DaemonProcess,
                                                      spawn_cli: Spawn) -> None:
    """attach prints a header at once (a quiet chat must not look hung), then the chat's
    deltas as they come; --tail N replays the last N first. log --tail N alike."""
    assert daemon.cli("send", "--agent", "echo", "--chat", "a", "one two").returncode == 0
    head = (await turn_ends_and_head(daemon, "a"))[1]
    follower = spawn_cli("attach", "a")
    assert follower.stderr is not None
    assert follower.stdout is not None
    header = await trio.to_thread.run_sync(follower.stderr.readline)
    assert header == f"following a from seq {head}, echo ready\n"
    assert daemon.cli("send", "--chat", "a", "three").returncode == 0
    seen: list[str] = []
    while not seen or not seen[-1].startswith("<<< [turn 2]"):
        line = await trio.to_thread.run_sync(follower.stdout.readline)
        assert line, "attach ended early"
        seen.append(line)
    assert seen[0] == ">>> [turn 2 · echo] three\n"
    assert "three\n" in seen
    follower.send_signal(signal.SIGINT)
    assert await exit_status(follower) == 130

    tailer = spawn_cli("attach", "a", "--tail", "2")
    assert tailer.stderr is not None
    assert tailer.stdout is not None
    header = await trio.to_thread.run_sync(tailer.stderr.readline)
    _, head = await turn_ends_and_head(daemon, "a")
    assert header == f"following a from seq {head - 2}, echo ready\n"
    # the last two deltas of turn 2: its reply's last chunk (or the busy->ready status)
    # and its turn_ended
    last = ""
    while not last.startswith("<<< [turn 2]"):
        last = await trio.to_thread.run_sync(tailer.stdout.readline)
        assert last, "attach ended early"
    tailer.send_signal(signal.SIGINT)
    assert await exit_status(tailer) == 130

    log = daemon.cli("log", "a", "--tail", "1", "--json")
    assert [json.loads(x)["seq"] for x in log.stdout.splitlines()] == [head]
    whole = daemon.cli("log", "a", "--json").stdout.splitlines()
    assert daemon.cli("log", "a", "--tail", "3", "--json").stdout.splitlines() == whole[-3:]
    bad = daemon.cli("attach", "a", "--tail", "2", "--since", "1")
    assert bad.returncode == 2


async def turn_ends_and_head(daemon: DaemonProcess, chat: str
                             ) -> tuple[dict[int, d.TurnEnded], int]:
    async with daemon.client("audit") as client:
        deltas = await replay(client, chat)
    return ({x.turn: x.body for x in deltas if isinstance(x.body, d.TurnEnded)},
            deltas[-1].seq)


# ------------------------------------------------------------------ --json everywhere


def json_of(done: subprocess.CompletedProcess[str]) -> object:
    """The one JSON object a `--json` command printed on stdout."""
    lines = done.stdout.splitlines()
    assert len(lines) == 1, (done.args, done.stdout, done.stderr)
    return json.loads(lines[0])


def test_every_command_speaks_json(daemon_factory: DaemonFactory) -> None:
    """Under --json every command prints one JSON object on stdout (the streaming ones,
    send and log, one per line), failures included: {"error": {"code", "message"}}, with
    the exit status the command has without --json."""
    daemon = daemon_factory()
    daemon.start(extra_args=["--json"])
    project = daemon.base / "project"
    project.mkdir()
    for git in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "base"]):
        subprocess.run(["git", *git], cwd=project, check=True, capture_output=True,
                       env={**daemon.env(), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})

    def ok(*args: str) -> object:
        done = daemon.cli(*args, "--json")
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return json_of(done)

    def error(status: int, code: str, *args: str) -> None:
        done = daemon.cli(*args, "--json")
        assert done.returncode == status, (args, done.stdout, done.stderr)
        reply = json_of(done)
        assert isinstance(reply, dict)
        assert reply["error"]["code"] == code, reply
        assert reply["error"]["message"], reply

    sent = daemon.cli("send", "--json", "--agent", "echo", "--chat", "j", "hi")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout.splitlines()[-1])["body"]["kind"] == "turn_ended"
    assert all(json.loads(line)["chat"] == "j" for line in sent.stdout.splitlines())
    logged = daemon.cli("log", "j", "--json")
    assert [json.loads(x)["chat"] for x in logged.stdout.splitlines()] == ["j"] * len(
        logged.stdout.splitlines())

    # Groups that do not depend on each other run side by side, each in its own order (a
    # command is a process of its own: ~0.4 s, most of it Python starting).
    def reads() -> None:
        assert ok("status")["pid"] == daemon.pid  # type: ignore[index]
        assert "agents" in ok("agents")  # type: ignore[operator]
        assert [c["chat"] for c in ok("ls")["chats"]] == ["j"]  # type: ignore[index]
        assert ok("inspect", "j")["chat"]["chat"] == "j"  # type: ignore[index]
        assert "checks" in ok("doctor", "--no-probe")  # type: ignore[operator]
        assert "token" in ok("token")  # type: ignore[operator]
        assert ok("computers") == {"computers": []}  # every field, an empty list too

    def errors() -> None:
        error(1, "unknown_chat", "inspect", "nope")
        error(1, "unknown_chat", "permit", "nope", "r1", "allow")
        error(1, "unknown_workspace", "workspace", "restore", "nope")
        error(2, "usage", "permit", "j", "r1")  # neither OPTION nor --cancel
        error(2, "usage", "inspect")  # argparse itself: no CHAT
        error(2, "usage", "workspace")  # a group without its action
        error(1, "already_running", "daemon")

    def chat_settings() -> None:
        assert ok("cancel", "j") == {}
        assert ok("policy", "j", "allow") == {}
        assert ok("mode", "j", "plan") == {}
        assert ok("reload") == {"changed": [], "restart_needed": []}

    def workspace_life() -> None:
        ws = ok("workspace", "new", "--project", str(project))
        assert isinstance(ws, dict)
        assert ok("workspace", "ls")["workspaces"][0]["workspace"] == ws["workspace"]  # type: ignore[index]
        assert ok("diff", ws["workspace"])["workspace"] == ws["workspace"]  # type: ignore[index]
        assert ok("workspace", "close", ws["workspace"])["state"] == "orphaned"  # type: ignore[index]
        assert ok("reap", "--dry-run")["dry_run"] is True  # type: ignore[index]

    groups = (reads, errors, chat_settings, workspace_life)
    with ThreadPoolExecutor(len(groups)) as pool:
        for running in [pool.submit(group) for group in groups]:
            running.result()
    assert ok("close", "j") == {}
    daemon.stop()
    assert '{"stopped":true' in daemon.log_text()
    error(1, "daemon_not_running", "status")


# ------------------------------------------------------------------ detach, wait, permit ls


ECHO2 = """
[agents.echo2]
command = ["{python}", "-m", "daemon.cli", "echo-agent"]
"""


async def test_detach_wait_permit_ls_prefixes_and_filters(
        daemon_factory: DaemonFactory) -> None:
    """The habits of similar daemons: `send --detach` returns once the prompt is queued,
    `wait` waits for a turn (live or long ended), `permit ls` lists the requests waiting,
    a unique prefix names a chat, `ls` filters by state and agent."""
    daemon = daemon_factory(config=ECHO2.format(python=sys.executable))
    daemon.start()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return daemon.cli(*args)

    detached = await trio.to_thread.run_sync(
        lambda: cli("send", "--detach", "--agent", "echo", "--chat", "alpha-1", "/sleep 3000"))
    assert detached.returncode == 0, detached.stderr
    assert detached.stdout == "alpha-1 1\n"
    assert "stoker wait alpha-1 --turn 1" in detached.stderr
    await wait_running(daemon, "alpha-1")  # --detach returned once it was queued
    busy = cli("ls", "--state", "busy", "--json")
    assert [c["chat"] for c in json.loads(busy.stdout)["chats"]] == ["alpha-1"]
    assert cli("send", "--agent", "echo2", "--chat", "beta", "hi").returncode == 0
    echo2 = cli("ls", "--agent", "echo2")
    assert [line.split()[0] for line in echo2.stdout.splitlines()] == ["CHAT", "beta"]

    waited = await trio.to_thread.run_sync(lambda: cli("wait", "alpha", "--turn", "1"))
    assert (waited.returncode, waited.stdout) == (0, "turn 1: end_turn\n"), waited.stderr
    again = cli("wait", "alpha-1")  # the latest turn, long ended: from the replay
    assert (again.returncode, again.stdout) == (0, "turn 1: end_turn\n")
    assert cli("wait", "alpha-1", "--turn", "7").returncode == 2

    # a turn that asks permission: listed by `permit ls`, answered through a prefix
    async with daemon.client("watch") as client:
        await subscribe(client, "alpha-1")
        asked = await trio.to_thread.run_sync(
            lambda: cli("send", "--detach", "--chat", "alpha-1", "/permission"))
        assert asked.stdout == "alpha-1 2\n"
        request = await wait_for_delta(
            client, lambda e: isinstance(e.body, d.PermissionRequest), timeout=30)
    assert isinstance(request.body, d.PermissionRequest)
    listed = cli("permit", "ls", "--json")
    assert [(p["chat"], p["request"]) for p in json.loads(listed.stdout)["permissions"]] == [
        ("alpha-1", request.body.request)]
    table = cli("permit", "ls").stdout.splitlines()
    assert table[1].split()[:2] == ["alpha-1", request.body.request]
    assert cli("permit", "alp", request.body.request, "allow").returncode == 0
    done = await trio.to_thread.run_sync(lambda: cli("wait", "alpha-1", "--turn", "2"))
    assert done.stdout == "turn 2: end_turn\n"
    assert cli("permit", "ls").stderr == "no permission requests are waiting\n"

    # prefixes: unique ones name the chat, ambiguous ones are a usage error naming them
    assert json.loads(cli("inspect", "be", "--json").stdout)["chat"]["chat"] == "beta"
    cli("send", "--detach", "--agent", "echo", "--chat", "alpha-2", "x")
    ambiguous = cli("inspect", "alpha")
    assert ambiguous.returncode == 2
    assert "alpha-1, alpha-2" in ambiguous.stderr
    cancelled = await trio.to_thread.run_sync(lambda: _cancelled_turn(daemon))
    assert cancelled.returncode == 1
    assert cancelled.stdout == "turn 1: cancelled\n"


def _cancelled_turn(daemon: DaemonProcess) -> subprocess.CompletedProcess[str]:
    """`wait` on a turn that gets cancelled while it waits: exit 1, the stop reason said."""
    assert daemon.cli("send", "--detach", "--agent", "echo", "--chat", "gamma",
                      "/sleep 60000").returncode == 0
    waiter = subprocess.Popen([sys.executable, "-m", "daemon.cli", "wait", "gamma"],
                              env=daemon.env(), cwd=str(daemon.work), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert daemon.cli("cancel", "gamma").returncode == 0
        out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    return subprocess.CompletedProcess(waiter.args, waiter.returncode, out, err)


# ------------------------------------------------------------------ agents not installed


def test_send_to_an_agent_that_is_not_installed_creates_nothing(
        daemon_factory: DaemonFactory) -> None:
    """`send --agent qwen` without qwen: the agent is checked first; the error says how to
    install or configure it, and no chat (failed or otherwise) is left behind."""
    empty = short_tmpdir("path")  # the daemon's PATH: no qwen there, whatever this host has
    daemon = daemon_factory(config='[agents.gone]\ncommand = ["/nonexistent/agent-binary"]\n',
                            env={"PATH": str(empty)})
    daemon.start()
    for args, code, says in (
            (("--agent", "qwen"), "agent_unavailable", "npm install -g @qwen-code/qwen-code"),
            (("--agent", "gone"), "agent_unavailable", "[agents.gone]"),
            (("--agent", "nosuch"), "unknown_agent", "the agents are"),
            (("--agent", "gone", "--chat", "named"), "agent_unavailable", "Nothing was created")):
        done = daemon.cli("send", *args, "hello")
        assert done.returncode == 1, done.stderr
        assert says in done.stderr, done.stderr
        assert "stoker doctor" in done.stderr or code == "unknown_agent"
        as_json = daemon.cli("send", *args, "--json", "hello")
        assert as_json.returncode == 1
        assert json.loads(as_json.stdout)["error"]["code"] == code
    assert json.loads(daemon.cli("ls", "--all", "--json").stdout) == {"chats": []}
    empty.rmdir()


# ------------------------------------------------------------------ version, completion


def complete_line(daemon: DaemonProcess, line: str) -> list[str]:
    """What `stoker`'s completion offers for the word at the end of `line`, asked the way the
    shell code of `stoker completion` asks (argcomplete's environment protocol)."""
    out = daemon.base / "completions"
    env = {**daemon.env(), "_ARGCOMPLETE": "1", "COMP_LINE": line,
           "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
           "_ARGCOMPLETE_IFS": "\n"}
    done = subprocess.run([sys.executable, "-m", "daemon.cli"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=str(daemon.work))
    assert done.returncode == 0, done.stderr
    return [word.strip() for word in out.read_text().split("\n")]


def test_version_and_completion(daemon: DaemonProcess) -> None:
    from daemon.version import VERSION

    version = daemon.cli("--version")
    assert (version.returncode, version.stdout) == (0, f"stoker {VERSION}\n")
    assert "inspect" in complete_line(daemon, "stoker ins")
    assert "--tail" in complete_line(daemon, "stoker attach --t")
    assert daemon.cli("send", "--agent", "echo", "--chat", "cmpl-1", "x").returncode == 0
    assert complete_line(daemon, "stoker inspect cm") == ["cmpl-1"]
    for shell in ("bash", "zsh", "fish"):
        code = daemon.cli("completion", shell)
        assert code.returncode == 0
        assert "stoker" in code.stdout
    bash = daemon.cli("completion", "bash").stdout
    registered = subprocess.run(["bash", "-c", f"{bash}\ncomplete -p stoker"],
                                capture_output=True, text=True, timeout=30)
    assert registered.returncode == 0, registered.stderr
    assert "stoker" in registered.stdout


# ------------------------------------------------------------------ stoker acp at EOF


def test_acp_answers_what_it_read_before_stdin_ended(daemon: DaemonProcess) -> None:
    """Requests piped into `stoker acp` and then EOF: each gets its answer before the
    bridge detaches (a slow one, session/new warming an agent, included)."""
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": 1, "clientCapabilities": {}}},
        {"jsonrpc": "2.0", "id": 2, "method": "session/new",
         "params": {"cwd": str(daemon.work), "mcpServers": []}},
        {"jsonrpc": "2.0", "id": 3, "method": "session/list", "params": {}},
    ]
    done = daemon.cli("acp", "--agent", "echo",
                      input="".join(json.dumps(r) + "\n" for r in requests))
    assert done.returncode == 0, done.stderr
    replies = {m["id"]: m for m in map(json.loads, done.stdout.splitlines()) if "id" in m}
    assert sorted(replies) == [1, 2, 3], done.stdout
    assert all("result" in r for r in replies.values()), replies
    session = replies[2]["result"]["sessionId"]
    # session/list was asked before session/new was answered (the bridge answers requests
    # as they complete): it may or may not list the new session, but it is answered.
    listed = [s["sessionId"] for s in replies[3]["result"]["sessions"]]
    assert set(listed) <= {session}, listed


def editor_pipes(daemon: DaemonProcess, *args: str) -> subprocess.Popen[str]:
    """`stoker ARGS` with stdin and stdout as pipes of ours, as an editor runs `stoker acp`."""
    return subprocess.Popen([sys.executable, "-m", "daemon.cli", *args], env=daemon.env(),
                            cwd=str(daemon.work), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


async def test_acp_detaches_at_once_when_the_editor_is_gone(daemon: DaemonProcess) -> None:
    """An editor that exits closes both ends: nobody can read an answer, so the bridge
    leaves at once instead of waiting for a long turn, which runs on in the daemon."""
    proc = editor_pipes(daemon, "acp", "--agent", "echo")
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout

        def call(id_: int, method: str, params: dict[str, object]) -> dict[str, object]:
            stdin.write(json.dumps({"jsonrpc": "2.0", "id": id_, "method": method,
                                    "params": params}) + "\n")
            stdin.flush()
            while True:
                message = json.loads(stdout.readline())
                if message.get("id") == id_:
                    return dict(message)

        call(1, "initialize", {"protocolVersion": 1, "clientCapabilities": {}})
        new = await trio.to_thread.run_sync(lambda: call(
            2, "session/new", {"cwd": str(daemon.work), "mcpServers": []}))
        session = str(new["result"]["sessionId"])  # type: ignore[index]
        stdin.write(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "session/prompt",
                                "params": {"sessionId": session, "prompt": [
                                    {"type": "text", "text": "/sleep 60000"}]}}) + "\n")
        stdin.flush()
        await wait_running(daemon, session)
        stdin.close()
        stdout.close()
        assert await trio.to_thread.run_sync(lambda: proc.wait(15)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    async with daemon.client("check") as client:
        detail = await client.request(m.Inspect(id=0, chat=session))
        assert detail.actors[0].state == "busy"  # the turn runs on
        await client.request(m.Cancel(id=0, chat=session))


# ------------------------------------------------------------------ scripts/run


def test_scripts_run_says_what_to_try_once_the_daemon_is_ready(
        daemon_factory: DaemonFactory) -> None:
    """`scripts/run` on a terminal: once the daemon answers, the next command to try; with
    its output on a pipe, nothing but the daemon's own log."""
    daemon = daemon_factory()  # its private directories and environment; started here
    run = [str(ROOT / "scripts" / "run")]
    master, slave = pty.openpty()
    proc = subprocess.Popen(run, env=daemon.env(), cwd=str(daemon.work),
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    shown = b""
    try:
        end = time.monotonic() + 60
        while b"stoker send --agent echo hello" not in shown:
            left = end - time.monotonic()
            assert left > 0, shown.decode(errors="replace")
            if select.select([master], [], [], left)[0]:
                shown += os.read(master, 65536)
        status = json.loads(daemon.cli("status", "--json").stdout)
        assert f"stoker is ready (pid {status['pid']})" in shown.decode()
        assert proc.pid == status["pid"]  # scripts/run became the daemon (exec)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(EXIT_WAIT) == 0
        os.close(master)

    piped = subprocess.Popen(run, env=daemon.env(), cwd=str(daemon.work),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        assert daemon.cli("status", "--wait", "60").returncode == 0
    finally:
        piped.send_signal(signal.SIGTERM)
        out, _ = piped.communicate(timeout=30)
    assert piped.returncode == 0
    assert "stoker is ready" not in out


async def test_sigusr1_prints_the_stacks_and_changes_nothing(daemon: DaemonProcess,
                                                             spawn_cli: Spawn) -> None:
    """`kill -USR1` on a stoker process prints its threads' stacks on stderr (what a stuck
    one is doing) and it carries on: here an attach, which then exits on Ctrl-C as ever."""
    assert daemon.cli("send", "--agent", "echo", "--chat", "u", "one").returncode == 0
    follower = spawn_cli("attach", "u")
    assert follower.stderr is not None
    header = await trio.to_thread.run_sync(follower.stderr.readline)
    assert header.startswith("following u from seq "), header
    follower.send_signal(signal.SIGUSR1)
    dump = ""
    with trio.fail_after(60):
        while "most recent call first" not in dump:
            line = await trio.to_thread.run_sync(follower.stderr.readline)
            assert line, "stderr ended before the dump"
            dump += line
    assert daemon.cli("send", "--chat", "u", "two").returncode == 0
    assert follower.poll() is None
    follower.send_signal(signal.SIGINT)
    assert await exit_status(follower) == 130

"""What a demanding new user of `stoker` ran into, against the real daemon and the echo agent:
each test is one finding, and fails on the command line as it was."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio

from daemon.client import ConnectionClosed, RequestFailed
from protocol import messages as m
from tests.support.harness import DaemonFactory, DaemonProcess, open_chat


def test_empty_lists_are_lists_under_json(daemon: DaemonProcess) -> None:
    """`stoker computers --json` printed `{}` and `stoker tasks --json` had no `tasks`:
    a script's `jq '.tasks[]'` failed exactly when there was nothing to list."""
    computers = daemon.cli("computers", "--json")
    assert computers.returncode == 0, computers.stderr
    assert json.loads(computers.stdout) == {"computers": []}
    tasks = daemon.cli("tasks", "--json")
    assert tasks.returncode == 0, tasks.stderr
    assert json.loads(tasks.stdout)["tasks"] == []


def test_trace_and_tasks_take_a_chat_prefix_and_refuse_an_unknown_chat(
        daemon: DaemonProcess) -> None:
    """Every command that names a chat takes a unique prefix of its id (README); `trace`
    said `unknown chat` to one, and `tasks NOPE` said `no tasks`, exit 0."""
    sent = daemon.cli("send", "--agent", "echo", "--chat", "prefixed-chat", "hello")
    assert sent.returncode == 0, sent.stderr
    trace = daemon.cli("trace", "prefixed")
    assert trace.returncode == 0, trace.stderr
    assert trace.stdout.startswith("turn 1  echo"), trace.stdout
    below = daemon.cli("tasks", "prefixed", "--json")
    assert below.returncode == 0, below.stderr
    assert json.loads(below.stdout)["tasks"] == []
    unknown = daemon.cli("tasks", "nope", "--json")
    assert unknown.returncode == 1, unknown.stdout
    assert json.loads(unknown.stdout)["error"]["code"] == "unknown_chat"


def test_a_default_agent_that_does_not_exist_is_named_as_the_default(
        daemon_factory: DaemonFactory) -> None:
    """With `default_agent` misspelt, `stoker send hi` said `no agent is called 'nope'`: the
    user never typed 'nope'. Now the error names the setting and how to fix it."""
    daemon = daemon_factory(config='[daemon]\ndefault_agent = "nope"\n')
    daemon.start()
    sent = daemon.cli("send", "hi")
    assert sent.returncode == 1
    assert "the default agent 'nope' ([daemon] default_agent)" in sent.stderr, sent.stderr
    assert "--agent" in sent.stderr
    assert json.loads(daemon.cli("ls", "--json").stdout) == {"chats": []}  # nothing made


def test_inspect_shows_a_boolean_option_as_the_agent_sent_it(daemon: DaemonProcess) -> None:
    """`config: verbose = False` was Python's spelling; the agent said `false`."""
    sent = daemon.cli("send", "--agent", "echo", "--chat", "b", "hi")
    assert sent.returncode == 0, sent.stderr
    shown = daemon.cli("inspect", "b")
    assert "config:      verbose = false" in shown.stdout, shown.stdout


def test_a_daemon_that_cannot_make_its_state_dir_or_socket_says_so_in_one_line(
        daemon_factory: DaemonFactory) -> None:
    """A state dir under a file, or a socket path too long for AF_UNIX, printed a Python
    traceback; now one line names the path and the fault, exit 1 (`startup` under --json)."""
    daemon = daemon_factory()
    a_file = daemon.base / "a-file"
    a_file.write_text("")
    under_a_file = daemon.cli("daemon", "--state-dir", str(a_file / "state"))
    assert under_a_file.returncode == 1
    assert under_a_file.stderr == (f"stoker: cannot use the state dir {a_file / 'state'}: "
                                   "Not a directory\n")
    too_long = str(daemon.base / ("x" * 120) / "s.sock")
    as_json = daemon.cli("daemon", "--socket", too_long, "--json")
    assert as_json.returncode == 1, as_json.stderr
    assert "Traceback" not in as_json.stderr
    error = json.loads(as_json.stdout.splitlines()[-1])["error"]
    assert error["code"] == "startup"
    assert error["message"] == (f"cannot use the socket {too_long}: the path is too long for "
                                "a Unix socket (at most 107 bytes)")


def test_inspect_says_a_chat_is_closed(daemon: DaemonProcess) -> None:
    """`stoker inspect` of a closed chat looked like any idle chat's; only --json told."""
    assert daemon.cli("send", "--agent", "echo", "--chat", "gone", "hi").returncode == 0
    assert daemon.cli("close", "gone").returncode == 0
    shown = daemon.cli("inspect", "gone")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("chat:        gone (closed)\n"), shown.stdout


def test_inspect_lists_the_auth_methods_that_stoker_auth_takes(
        daemon_factory: DaemonFactory) -> None:
    """OPERATIONS says `stoker inspect CHAT` lists the agent's auth methods; it printed
    none (only --json had them), so `stoker auth CHAT METHOD` had nothing to go on."""
    daemon = daemon_factory(config=f'[agents.locked]\ncommand = ["{sys.executable}", "-m", '
                            '"daemon.cli", "echo-agent", "--require-auth"]\n')
    daemon.start()
    sent = daemon.cli("send", "--agent", "locked", "--chat", "l", "hi")
    assert sent.returncode == 1, sent.stdout
    shown = daemon.cli("inspect", "l")
    assert "  auth:        echo-login" in shown.stdout, shown.stdout
    assert daemon.cli("auth", "l", "echo-login").returncode == 0
    assert daemon.cli("send", "--chat", "l", "hi").stdout == "hi\n"


async def test_wait_on_a_chat_without_turns_says_so(daemon: DaemonProcess) -> None:
    """It said `chat X has no turn 0 (its latest is 0)`."""
    async with daemon.client() as client:
        await open_chat(client, "empty")
    waited = await trio.to_thread.run_sync(daemon.cli, "wait", "empty")
    assert waited.returncode == 2
    assert waited.stderr.endswith("stoker wait: error: chat empty has had no turn yet: nothing "
                                  "to wait for\n"), waited.stderr


def test_task_commands_take_a_prefix_of_the_task_id(daemon: DaemonProcess) -> None:
    """A task is a chat, and every other command that names a chat takes a prefix."""
    assert daemon.cli("send", "--agent", "echo", "--chat", "boss", "hi").returncode == 0
    new = daemon.cli("task", "new", "--parent", "bo", "--agent", "echo", "do x")
    assert new.returncode == 0, new.stderr
    task = new.stdout.strip()
    shown = daemon.cli("task", "show", task[:6], "--wait", "60")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"{task}  done  echo  do x"), shown.stdout


def test_an_agent_that_never_answers_initialize_names_the_timeout(
        daemon_factory: DaemonFactory) -> None:
    """`failed to start: the agent did not answer ... in time` after a silent minute: which
    time? Now the error names the setting."""
    daemon = daemon_factory(config='[daemon]\nrequest_timeout = "1s"\n'
                            '[agents.mute]\ncommand = ["sleep", "600"]\n')
    daemon.start()
    sent = daemon.cli("send", "--agent", "mute", "--chat", "m", "hi")
    assert sent.returncode == 1
    assert "in time ([daemon] request_timeout;" in sent.stderr, sent.stderr


def test_web_without_the_listener_says_to_restart_not_reload(daemon: DaemonProcess) -> None:
    """`[websocket] enabled` is read at startup only (OPERATIONS, WEB.md); `stoker web` told
    the user to reload, which changes nothing."""
    shown = daemon.cli("web")
    assert shown.returncode == 1
    assert "restart the daemon" in shown.stderr, shown.stderr
    assert "and reload" not in shown.stderr


def test_send_json_that_loses_the_daemon_ends_with_an_error_object(
        daemon: DaemonProcess) -> None:
    """`send --json` whose daemon died printed a plain line on stderr and no error object
    (every --json failure is one); now the last line is the error, and it says how to learn
    the turn's fate."""
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "send", "--json", "--agent",
                             "echo", "--chat", "k", "/sleep 60000"], env=daemon.env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        while True:  # until the turn runs on the agent
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            body = json.loads(line)["body"]
            if body["kind"] == "status" and body["state"] == "busy":
                break
        daemon.kill9()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    error = json.loads(out.splitlines()[-1])["error"]
    assert error["code"] == "connection"
    assert "`stoker wait k --turn 1`" in error["message"]
    daemon.start()  # reclaims the agent the killed daemon left behind


def test_send_into_a_workspace_a_chat_is_not_in_says_where_it_is(
        daemon: DaemonProcess) -> None:
    """It said `works in workspace (none)`."""
    project = daemon.base / "p"
    project.mkdir()
    env = {**daemon.env(), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for git in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "base"]):
        subprocess.run(["git", *git], cwd=project, check=True, env=env)
    ws = daemon.cli("workspace", "new", "--project", str(project)).stdout.strip()
    assert daemon.cli("send", "--agent", "echo", "--chat", "plain", "hi").returncode == 0
    sent = daemon.cli("send", "--chat", "plain", "--workspace", ws, "hi")
    assert sent.returncode == 1
    assert (f"chat 'plain' works in {daemon.work}, in no workspace, not in workspace {ws}"
            in sent.stderr), sent.stderr


def test_task_show_wait_exits_0_only_for_a_task_that_is_done(daemon: DaemonProcess) -> None:
    """`stoker task show T --wait 60 && next` went on after a failed task: it exited 0
    whatever the task's end (and when the wait ran out)."""
    assert daemon.cli("send", "--agent", "echo", "--chat", "boss", "hi").returncode == 0

    def task(prompt: str) -> str:
        new = daemon.cli("task", "new", "--parent", "boss", "--agent", "echo", prompt)
        assert new.returncode == 0, new.stderr
        return new.stdout.strip()

    failed = task("/crash")
    shown = daemon.cli("task", "show", failed, "--wait", "60")
    assert shown.returncode == 1, shown.stdout
    assert f"{failed}  failed" in shown.stdout
    assert daemon.cli("task", "show", failed).returncode == 0  # a query, not a wait
    slow = task("/sleep 60000")
    still = daemon.cli("task", "show", slow, "--wait", "0.2")
    assert still.returncode == 1
    assert "is still" in still.stderr, still.stderr
    done = daemon.cli("task", "show", task("fine"), "--wait", "60")
    assert done.returncode == 0, done.stdout
    assert daemon.cli("task", "cancel", slow).returncode == 0


def test_status_names_the_config_and_doctor_warns_when_it_checks_another(
        daemon: DaemonProcess) -> None:
    """A shell without STOKER_CONFIG ran `stoker doctor` on the default config while the
    daemon read another file: every line said ok about a config nothing used."""
    status = daemon.cli("status")
    assert f"config:         {daemon.config_path}\n" in status.stdout, status.stdout
    ours = daemon.cli("doctor", "--no-probe", "--json")
    assert "daemon config" not in {c["check"] for c in json.loads(ours.stdout)["checks"]}
    other = daemon.base / "other.toml"
    other.write_text("")
    theirs = daemon.cli("doctor", "--no-probe", "--json", "--config", str(other))
    checks = {c["check"]: c for c in json.loads(theirs.stdout)["checks"]}
    assert checks["daemon config"]["status"] == "warn"
    assert f"the daemon reads {daemon.config_path}" in checks["daemon config"]["detail"]


async def test_a_reloaded_max_frame_holds_for_new_unix_connections(
        daemon: DaemonProcess) -> None:
    """The Unix listener kept the limits of the daemon's start while `welcome` announced
    the reloaded `max_frame`: a client told 64 KiB could send 16 MiB. New connections now
    get the live limits, as on the WebSocket."""
    daemon.write_config('[daemon]\nmax_frame = "64KiB"\n')
    async with daemon.client() as client:
        await client.request(m.Reload(id=0))
    async with daemon.client() as client:
        assert client.welcome is not None
        assert client.welcome.max_frame == 64 * 1024
        # Too large: an error frame (with no id: the frame was not read) and the end of
        # this connection; before, the daemon read it and answered `unknown_chat`.
        with pytest.raises(ConnectionClosed):
            await client.request(m.Prompt(id=0, chat="nope", text="x" * 100_000))
    async with daemon.client() as client:  # a frame within the limit still goes through
        with pytest.raises(RequestFailed) as refused:
            await client.request(m.Prompt(id=0, chat="nope", text="x" * 1000))
        assert refused.value.code == "unknown_chat"


def test_reload_names_what_changed_and_what_waits_for_a_restart(
        daemon: DaemonProcess) -> None:
    """`stoker reload` said `config reloaded` after `[websocket] enabled = true`, and the
    listener never came (it is read at start only): now it says so."""
    daemon.write_config('[websocket]\nenabled = true\n[lifecycle]\nidle_ttl = "5m"\n')
    reloaded = daemon.cli("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert reloaded.stderr == (
        "config reloaded: lifecycle.idle_ttl, websocket.enabled changed\n"
        "restart the daemon for these to take effect (read at start only): "
        "websocket.enabled\n")
    as_json = json.loads(daemon.cli("reload", "--json").stdout)
    assert as_json == {"changed": [], "restart_needed": []}

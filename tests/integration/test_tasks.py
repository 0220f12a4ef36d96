"""Issue 17 (background tasks): the real daemon, real echo agents, the real socket.

A task is a chat with a parent; these drive it through the protocol (`task_new`, `tasks`,
`task`, `task_send`, `task_cancel`), and through Stoker's MCP server as an echo parent
calls it (`/mcp TOOL JSON`)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

import psutil
import pytest
import trio

from daemon.client import Client, RequestFailed
from protocol import deltas as d
from protocol import messages as m
from tests.support.harness import (
    DaemonFactory,
    DaemonProcess,
    agent_pid,
    inspect,
    open_chat,
    replay,
    subscribe,
    turn,
    wait_committed,
    wait_for_delta,
    wait_state,
    wait_turn_end,
)


def started(config: str, daemon_factory: DaemonFactory) -> DaemonProcess:
    proc = daemon_factory(config=config)
    proc.start()
    return proc


async def new_task(client: Client, parent: str, prompt: str, **kwargs: object) -> m.TaskInfo:
    info: m.TaskInfo = await client.request(m.TaskNew(id=0, parent=parent, prompt=prompt,
                                                      **kwargs))  # type: ignore[arg-type]
    return info


async def result(client: Client, task: str, wait: float = 30.0) -> m.TaskInfo:
    info: m.TaskInfo = await client.request(m.GetTask(id=0, task=task, wait=wait))
    return info


def turns_end_once(deltas: list[d.Delta]) -> None:
    started_turns = Counter(x.turn for x in deltas if isinstance(x.body, d.TurnStarted))
    ended = Counter(x.turn for x in deltas if isinstance(x.body, d.TurnEnded))
    assert started_turns == ended, (started_turns, ended)
    assert all(n == 1 for n in ended.values()), ended


async def test_three_tasks_limit_two_two_run_one_queues_all_results_back(
        daemon_factory: DaemonFactory) -> None:
    daemon = started("[tasks]\nmax_running = 2\n", daemon_factory)
    async with daemon.client() as client:
        parent = await open_chat(client, "boss", cwd=daemon.work)
        made = [await new_task(client, parent.chat, f"/sleep {ms}", title=f"t{i}")
                for i, ms in enumerate((600, 600, 10))]
        listed: m.TaskList = await client.request(m.ListTasks(id=0, parent=parent.chat))
        assert [t.state for t in listed.tasks] == ["running", "running", "queued"]
        assert [t.task for t in listed.tasks] == [t.task for t in made]
        assert all(t.parent == parent.chat and t.depth == 1 and t.cwd == parent.cwd
                   for t in listed.tasks)
        results = [await result(client, t.task) for t in made]
        assert [r.state for r in results] == ["done"] * 3
        assert [r.result for r in results] == ["slept 600", "slept 600", "slept 10"]
        assert all(r.stop_reason == "end_turn" for r in results)
        # The third started only after one of the first two finished.
        third = made[2].task
        first_end = min(r.ended_at or 0 for r in results[:2])
        assert (results[2].started_at or 0) >= first_end
        detail = await inspect(client, parent.chat)
        assert detail.tasks == [t.task for t in made]
        child = await inspect(client, third)
        assert child.parent == parent.chat
        # The parent's channel tells the story: spawned, started, finished for each.
        log = await replay(client, parent.chat)
        events = [(x.body.task, x.body.event) for x in log if isinstance(x.body, d.Task)]
        for t in made:
            assert [e for task, e in events if task == t.task] == [
                "spawned", "started", "finished"]
        finished = [x.body for x in log if isinstance(x.body, d.Task)
                    and x.body.event == "finished"]
        assert sorted(b.summary for b in finished) == ["slept 10", "slept 600", "slept 600"]
        assert events.index((third, "started")) > min(
            events.index((made[0].task, "finished")), events.index((made[1].task, "finished")))
        for t in made:
            turns_end_once(await replay(client, t.task))


async def test_refusals_are_clear_and_create_nothing(daemon_factory: DaemonFactory) -> None:
    daemon = started('[tasks]\nmax_depth = 1\nmax_tasks = 2\nagents = ["echo"]\n',
                     daemon_factory)
    async with daemon.client() as client:
        parent = await open_chat(client, "p", cwd=daemon.work)
        cases: list[tuple[dict[str, object], str]] = [
            ({"agent": "nope"}, "unknown agent 'nope'"),
            ({"agent": "qwen"}, "may not be used for tasks"),
            ({"workspace": "/"}, "outside the parent's directory"),
            ({"workspace": "relative"}, "absolute directory"),
        ]
        for kwargs, message in cases:
            with pytest.raises(RequestFailed, match=message):
                await new_task(client, parent.chat, "hello", **kwargs)
        with pytest.raises(RequestFailed, match="unknown chat"):
            await new_task(client, "ghost", "hello")
        with pytest.raises(RequestFailed, match="empty prompt"):
            await new_task(client, parent.chat, "  ")
        child = await new_task(client, parent.chat, "/sleep 5000")
        with pytest.raises(RequestFailed, match="depth limit"):
            await new_task(client, child.task, "hello")
        await new_task(client, parent.chat, "/sleep 5000")
        with pytest.raises(RequestFailed, match="too many unfinished tasks"):
            await new_task(client, parent.chat, "hello")
        with pytest.raises(RequestFailed, match="credential"):
            await client.request(m.TaskNew(id=0, parent=parent.chat, prompt="x",
                                           caller=parent.chat, credential="forged"))
        listed: m.TaskList = await client.request(m.ListTasks(id=0))
        assert len(listed.tasks) == 2
        chats: m.ChatList = await client.request(m.ListChats(id=0))
        assert len(chats.chats) == 3


async def test_closing_the_parent_cancels_running_and_queued_tasks(
        daemon_factory: DaemonFactory) -> None:
    daemon = started("[tasks]\nmax_running = 1\n", daemon_factory)
    async with daemon.client() as client:
        parent = await open_chat(client, "p", cwd=daemon.work)
        running = await new_task(client, parent.chat, "/sleep 60000")
        queued = await new_task(client, parent.chat, "/sleep 60000")
        await client.request(m.CloseChat(id=0, chat=parent.chat))
        first, second = (await result(client, running.task, 20),
                         await result(client, queued.task, 20))
        assert (first.state, first.stop_reason) == ("cancelled", "cancelled")
        assert second.state == "cancelled"
        assert second.started_at is None
        turns_end_once(await replay(client, running.task))
        # The task chats are closed with their parent (no task outlives it).
        with trio.fail_after(20):
            while True:
                listed: m.ChatList = await client.request(m.ListChats(id=0))
                if [c.chat for c in listed.chats] == []:
                    break
                await trio.sleep(0.05)
        child = await inspect(client, running.task)
        assert child.chat.closed


async def test_a_reload_that_raises_max_running_starts_queued_tasks_at_once(
        daemon_factory: DaemonFactory) -> None:
    daemon = started("[tasks]\nmax_running = 1\n", daemon_factory)
    async with daemon.client() as client:
        parent = await open_chat(client, "p", cwd=daemon.work)
        first = await new_task(client, parent.chat, "/sleep 60000")
        second = await new_task(client, parent.chat, "/sleep 10")
        assert second.state == "queued"
        daemon.write_config("[tasks]\nmax_running = 2\n")
        await client.request(m.Reload(id=0))
        done = await result(client, second.task)
        assert (done.state, done.result) == ("done", "slept 10")
        assert (await result(client, first.task, 0)).state == "running"
        await client.request(m.TaskCancel(id=0, task=first.task))
        assert (await result(client, first.task)).state == "cancelled"


async def test_task_send_runs_a_follow_up_in_the_same_chat(daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        parent = await open_chat(client, "p", cwd=daemon.work)
        task = await new_task(client, parent.chat, "/remember blue")
        assert (await result(client, task.task)).result == "remembered blue"
        # A client (not an agent) is told how a client lists tasks.
        with pytest.raises(RequestFailed, match="no task 'nope'; `stoker tasks CHAT` lists"):
            await client.request(m.TaskSend(id=0, task="nope", prompt="x"))
        again: m.TaskInfo = await client.request(m.TaskSend(id=0, task=task.task,
                                                            prompt="/recall"))
        assert again.task == task.task
        done = await result(client, task.task)
        assert (done.state, done.result) == ("done", "blue")
        assert done.turn == 2


# --------------------------------------------------------------------------- through MCP


async def mcp(client: Client, chat: str, tool: str, arguments: dict[str, object] | None = None
              ) -> dict[str, Any]:
    """The echo agent of `chat` calls `tool` on Stoker's MCP server (started on first use,
    which imports the MCP SDK: a generous deadline)."""
    text = (await turn(client, chat, f"/mcp {tool} {json.dumps(arguments or {})}",
                       timeout=90)).text
    assert not text.startswith("error:"), text
    data: dict[str, Any] = json.loads(text)
    return data


async def delegate_a_sleep(client: Client, chat: str, title: str) -> dict[str, Any]:
    """The agent of `chat` spawns a 10 ms `/sleep` task on the echo agent through Stoker's
    MCP server and waits for its result, which must be done; returns the spawned task."""
    spawned = await mcp(client, chat, "spawn_task", {
        "agent": "echo", "prompt": "/sleep 10", "title": title})
    result = await mcp(client, chat, "task_result", {"id": spawned["id"], "wait_seconds": 60})
    assert (result["state"], result["result"], result["stop_reason"]) == (
        "done", "slept 10", "end_turn")
    return spawned


async def delegate_three_tasks(client: Client, chat: str) -> m.TaskList:
    """The delegation script (over whichever MCP transport the chat `boss` has): list the
    agents, spawn three echo tasks, list them, wait for each result, ask one's status, and
    two tool errors the model can read, with nothing created. Returns every task."""
    agents = await mcp(client, chat, "list_agents")
    assert "echo" in [a["name"] for a in agents["agents"]]
    ids = []
    for i, ms in enumerate((800, 800, 10)):
        spawned = await mcp(client, chat, "spawn_task", {
            "agent": "echo", "prompt": f"/sleep {ms}", "title": f"part {i}"})
        assert spawned["title"] == f"part {i}"
        ids.append(spawned["id"])
    listed = await mcp(client, chat, "list_tasks")
    assert [t["id"] for t in listed["tasks"]] == ids
    results = [await mcp(client, chat, "task_result",
                         {"id": task, "wait_seconds": 60}) for task in ids]
    assert [(r["state"], r["result"], r["stop_reason"]) for r in results] == [
        ("done", "slept 800", "end_turn"), ("done", "slept 800", "end_turn"),
        ("done", "slept 10", "end_turn")]
    status = await mcp(client, chat, "task_status", {"id": ids[0]})
    assert status["state"] == "done"
    tasks: m.TaskList = await client.request(m.ListTasks(id=0, parent=chat))
    assert all(t.origin == "agent" for t in tasks.tasks)
    # A tool error the model can read, and nothing created.
    refused = await turn(client, chat,
                         '/mcp spawn_task {"agent": "nope", "prompt": "x"}', timeout=30)
    assert refused.text.startswith("error:")
    assert "unknown agent 'nope'" in refused.text
    missing = await turn(client, chat, '/mcp task_status {"id": "nope"}')
    assert "no task 'nope' of chat 'boss'; list_tasks shows" in missing.text
    tasks = await client.request(m.ListTasks(id=0))
    assert len(tasks.tasks) == 3
    return tasks


async def test_an_echo_parent_delegates_through_mcp_and_gets_every_result(
        daemon_factory: DaemonFactory) -> None:
    daemon = started("[tasks]\nmax_running = 2\n", daemon_factory)
    async with daemon.client() as client:
        parent = await open_chat(client, "boss", cwd=daemon.work)
        await delegate_three_tasks(client, parent.chat)


def mcp_credential(agent: int) -> str:
    """The credential in the environment of the MCP server an agent process started."""
    for child in psutil.Process(agent).children(recursive=True):
        if "mcp" in child.cmdline():
            return str(child.environ()["STOKER_MCP_CREDENTIAL"])
    raise AssertionError("the agent runs no MCP server")


async def test_a_forged_or_other_chats_credential_is_a_clear_error_and_creates_nothing(
        daemon: DaemonProcess) -> None:
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    async with daemon.client() as client:
        mine = await open_chat(client, "mine", cwd=daemon.work)
        other = await open_chat(client, "other", cwd=daemon.work)
        await mcp(client, other.chat, "list_tasks")
        theirs = mcp_credential(await agent_pid(client, other.chat))
        # Chat mine's MCP server, given chat other's credential (or a forged one).
        for credential in (theirs, "0" * 64):
            params = StdioServerParameters(
                command=sys.executable, args=["-m", "daemon.cli", "mcp", "--chat", mine.chat],
                env={**daemon.env(), "STOKER_MCP_CREDENTIAL": credential})
            async with stdio_client(params) as (read, write), \
                    ClientSession(read, write) as session:
                await session.initialize()
                answer = await session.call_tool("spawn_task", {"agent": "echo",
                                                                "prompt": "hello"})
                assert answer.is_error
                text = "".join(getattr(c, "text", "") for c in answer.content)
                assert "unauthorized" in text, text
                assert "does not belong to chat 'mine'" in text, text
        # Over the socket directly: other's credential cannot touch mine's tasks either.
        task = await new_task(client, mine.chat, "/sleep 10")
        with pytest.raises(RequestFailed, match="no task"):
            await client.request(m.GetTask(id=0, task=task.task, caller=other.chat,
                                           credential=theirs))
        with pytest.raises(RequestFailed, match="only start its own tasks"):
            await client.request(m.TaskNew(id=0, parent=mine.chat, prompt="x",
                                           caller=other.chat, credential=theirs))
        listed: m.TaskList = await client.request(m.ListTasks(id=0))
        assert [t.task for t in listed.tasks] == [task.task]


# --------------------------------------------------------------------------- notify, cascade, crash


async def test_notify_prompt_brings_every_result_back_to_the_idle_parent_once(
        daemon_factory: DaemonFactory) -> None:
    daemon = started('[tasks]\nmax_running = 2\nnotify = "prompt"\n', daemon_factory)
    async with daemon.client() as client:
        parent = await open_chat(client, "boss", cwd=daemon.work)
        await subscribe(client, parent.chat)
        made = [await new_task(client, parent.chat, f"/sleep {ms}")
                for ms in (300, 300, 10)]
        reported: dict[str, int] = {}
        with trio.fail_after(60):
            while len(reported) < 3:
                delta = await wait_for_delta(client, lambda e: e.chat == parent.chat and (
                    isinstance(e.body, d.TurnStarted)))
                assert isinstance(delta.body, d.TurnStarted)
                assert delta.body.by == "tasks"
                for t in made:
                    if f"Task {t.task} " in delta.body.prompt:
                        assert t.task not in reported, "a result was brought back twice"
                        reported[t.task] = delta.turn
        assert set(reported) == {t.task for t in made}
        await wait_turn_end(client, parent.chat, max(reported.values()))
        log = await replay(client, parent.chat)
        turns_end_once(log)
        prompts = " ".join(x.body.prompt for x in log if isinstance(x.body, d.TurnStarted))
        assert prompts.count("slept 300") == 2
        assert prompts.count("slept 10") == 1


async def test_an_echo_parent_that_fetched_the_result_is_not_prompted_with_it(
        daemon_factory: DaemonFactory) -> None:
    daemon = started('[tasks]\nnotify = "prompt"\n', daemon_factory)
    async with daemon.client() as client:
        parent = await open_chat(client, "boss", cwd=daemon.work)
        spawned = await mcp(client, parent.chat, "spawn_task",
                            {"agent": "echo", "prompt": "/sleep 200"})
        fetched = await mcp(client, parent.chat, "task_result",
                            {"id": spawned["id"], "wait_seconds": 60})
        assert fetched["result"] == "slept 200"
        info = await result(client, spawned["id"])
        assert info.state == "done"
        # One more turn of the parent: had a report been due, it would have been sent
        # when the task_result turn ended, ahead of this one.
        await turn(client, parent.chat, "hello")
        log = await replay(client, parent.chat)
        assert not [x for x in log if isinstance(x.body, d.TurnStarted)
                    and x.body.by == "tasks"]
        turns_end_once(log)


async def test_cancelling_the_parents_turn_cancels_its_running_tasks(
        daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        parent = await open_chat(client, "boss", cwd=daemon.work)
        spawned = await mcp(client, parent.chat, "spawn_task",
                            {"agent": "echo", "prompt": "/sleep 60000"})
        await subscribe(client, parent.chat)
        waiting: m.PromptAccepted = await client.request(m.Prompt(
            id=0, chat=parent.chat,
            text=f'/mcp task_result {{"id": "{spawned["id"]}", "wait_seconds": 60}}'))
        await wait_state(client, parent.chat, "busy")
        await client.request(m.Cancel(id=0, chat=parent.chat, turn=waiting.turn))
        ended = await wait_turn_end(client, parent.chat, waiting.turn)
        assert ended.stop_reason == "cancelled"
        info = await result(client, spawned["id"], 20)
        assert (info.state, info.stop_reason) == ("cancelled", "cancelled")
        turns_end_once(await replay(client, spawned["id"]))


async def test_daemon_kill_9_mid_task_each_task_finishes_or_is_interrupted(
        daemon_factory: DaemonFactory) -> None:
    daemon = started("[tasks]\nmax_running = 1\n", daemon_factory)
    async with daemon.client() as client:
        parent = await open_chat(client, "boss", cwd=daemon.work)
        running = await new_task(client, parent.chat, "/sleep 30000")
        queued = await new_task(client, parent.chat, "/sleep 10")
        await wait_state(client, running.task, "busy")
    await wait_committed(
        daemon, "SELECT 1 FROM prompts WHERE chat=? AND state='running'", (running.task,))
    daemon.kill9()
    daemon.start()
    async with daemon.client() as client:
        first = await result(client, running.task, 30)
        second = await result(client, queued.task, 30)
        assert first.state == "interrupted"
        assert first.error is not None
        assert "interrupted" in first.error
        assert (second.state, second.result) == ("done", "slept 10")
        for chat in (parent.chat, running.task, queued.task):
            turns_end_once(await replay(client, chat))
        log = await replay(client, parent.chat)
        events = [(x.body.task, x.body.event) for x in log if isinstance(x.body, d.Task)]
        assert (running.task, "interrupted") in events
        assert (queued.task, "finished") in events


# --------------------------------------------------------------------------- CLI


async def test_cli_task_new_show_and_the_tree(daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        await open_chat(client, "boss", cwd=daemon.work)
    made = await trio.to_thread.run_sync(lambda: daemon.cli(
        "task", "new", "--parent", "boss", "--agent", "echo", "--title", "greet",
        "hello", "tasks"))
    assert made.returncode == 0, made.stderr
    task = made.stdout.strip()
    shown = await trio.to_thread.run_sync(lambda: daemon.cli("task", "show", task,
                                                             "--wait", "30"))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == f"{task}  done  echo  greet"
    assert shown.stdout.rstrip().endswith("hello tasks")
    nested = await trio.to_thread.run_sync(lambda: daemon.cli(
        "task", "new", "--parent", task, "/sleep 10"))
    assert nested.returncode == 0, nested.stderr
    child = nested.stdout.strip()
    tree = await trio.to_thread.run_sync(lambda: daemon.cli("tasks"))
    lines = tree.stdout.splitlines()
    assert lines[0] == "boss"
    assert lines[1].startswith(f"└── {task} [done] echo: greet")
    assert lines[2].startswith(f"    └── {child} [")
    # `ls --tree`: each task right under the chat that started it; `inspect` names both.
    listing = await trio.to_thread.run_sync(lambda: daemon.cli("ls", "--tree"))
    assert listing.returncode == 0, listing.stderr
    rows = listing.stdout.splitlines()[1:]
    assert len(rows) == 3, listing.stdout
    assert rows[0].startswith("boss ")
    assert rows[1].startswith(f"└─ {task}")
    assert rows[2].startswith(f"  └─ {child}")
    inspected = await trio.to_thread.run_sync(lambda: daemon.cli("inspect", task))
    assert "parent:      boss" in inspected.stdout, inspected.stdout
    assert f"tasks:       {child}" in inspected.stdout, inspected.stdout
    below = await trio.to_thread.run_sync(lambda: daemon.cli("tasks", task, "--json"))
    assert [t["task"] for t in json.loads(below.stdout)["tasks"]] == [child]
    refused = await trio.to_thread.run_sync(lambda: daemon.cli(
        "task", "new", "--parent", "boss", "--agent", "nope", "x"))
    assert refused.returncode == 1
    assert "unknown agent 'nope'" in refused.stderr


# ----------------------------------------------------------------- where and how tasks end


async def test_a_worktree_task_reports_the_files_it_changed(daemon: DaemonProcess) -> None:
    from tests.integration.test_workspaces import make_project

    project = make_project(daemon.work)
    async with daemon.client() as client:
        parent = await open_chat(client, "boss", cwd=project)
        task = await new_task(client, parent.chat, "/write notes.txt from the task",
                              workspace="worktree")
        assert task.workspace is not None
        assert task.cwd != parent.cwd
        done = await result(client, task.task)
        assert done.state == "done"
        assert done.files_changed == ["notes.txt"]
        assert not (project / "notes.txt").exists()


async def test_a_crashing_task_fails_and_a_huge_answer_is_clipped(daemon: DaemonProcess
                                                                  ) -> None:
    async with daemon.client() as client:
        parent = await open_chat(client, "boss", cwd=daemon.work)
        crash = await new_task(client, parent.chat, "/crash")
        big = await new_task(client, parent.chat, "/bigline 1024")
        failed = await result(client, crash.task)
        assert failed.state == "failed"
        assert failed.error
        clipped = await result(client, big.task)
        assert clipped.state == "done"
        assert "characters cut" in clipped.result
        assert len(clipped.result) < 300_000
        # The parent's notices follow the results (published as the task's turn ends,
        # delivered once committed): wait for both.
        wanted = {(crash.task, "failed"), (big.task, "finished")}
        with trio.fail_after(20):
            while True:
                log = await replay(client, parent.chat)
                events = {(x.body.task, x.body.event): x.body for x in log
                          if isinstance(x.body, d.Task)}
                if wanted <= events.keys():
                    break
                await trio.sleep(0.05)
        assert events[(crash.task, "failed")].error == failed.error
        assert len(events[(big.task, "finished")].summary) <= 200


async def test_a_used_up_token_budget_refuses_new_tasks_of_that_tree_only(
        daemon_factory: DaemonFactory) -> None:
    # The echo agent reports words + chunks as a turn's tokens: 3 + 3 for PROMPT.
    daemon = started("[tasks]\ntoken_budget = 10\n", daemon_factory)
    prompt = "hello there world"
    async with daemon.client() as client:
        parent = await open_chat(client, "boss", cwd=daemon.work)
        first = await result(client, (await new_task(client, parent.chat, prompt)).task)
        assert first.tokens == 6
        nested = await new_task(client, first.task, prompt)
        assert (await result(client, nested.task)).tokens == 6
        refused = await turn(client, parent.chat,
                             f'/mcp spawn_task {{"agent": "echo", "prompt": "{prompt}"}}',
                             timeout=90)
        assert refused.text.startswith("error:")
        assert "token budget of this task tree is used up (12 of" in refused.text
        with pytest.raises(RequestFailed, match="token budget"):
            await client.request(m.TaskSend(id=0, task=first.task, prompt=prompt))
        # Another tree has its own budget.
        other = await open_chat(client, "other", cwd=daemon.work)
        fine = await new_task(client, other.chat, prompt)
        assert (await result(client, fine.task)).state == "done"
        listed: m.TaskList = await client.request(m.ListTasks(id=0))
        assert len(listed.tasks) == 3


async def test_daemon_kill_9_before_the_tasks_turn_started_then_it_finishes(
        daemon_factory: DaemonFactory) -> None:
    # The agent takes 3 s to start: the task's prompt is durably queued, not yet running,
    # when the daemon dies; the restart delivers it again and the task finishes.
    daemon = started(f'[agents.slow]\ncommand = ["{sys.executable}", "-m", '
                     '"daemon.echo_agent", "--startup-delay", "3000"]\n', daemon_factory)
    async with daemon.client() as client:
        parent = await open_chat(client, "boss", cwd=daemon.work)
        task = await new_task(client, parent.chat, "after the restart", agent="slow")
    await wait_committed(
        daemon, "SELECT 1 FROM tasks t JOIN prompts p ON p.chat = t.id"
        " WHERE t.id=? AND t.state='running' AND p.state='queued'", (task.task,))
    daemon.kill9()
    daemon.start()
    async with daemon.client() as client:
        done = await result(client, task.task, 60)
        assert (done.state, done.result) == ("done", "after the restart")
        for chat in (parent.chat, task.task):
            turns_end_once(await replay(client, chat))

"""Issue 18 (workflows): the real daemon, real echo agents, the real socket.

A run's steps are tasks under the run's chat; these drive runs through the protocol
(`workflow_run`, `workflow`, `workflows`, `workflow_cancel`, `workflow_resume`) and check
them against the tasks the daemon reports (`tasks`), which are the agents' real turns."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon.client import Client, RequestFailed
from protocol import deltas as d
from protocol import messages as m
from protocol.errors import ErrorCode
from tests.support.harness import (
    DaemonFactory,
    DaemonProcess,
    open_chat,
    replay,
    subscribe,
    turn,
    wait_for_delta,
)

DIAMOND = """\
agent = "echo"

[inputs]
topic = "caching"

[steps.top]
prompt = "plan {{ inputs.topic }}"

[steps.left]
needs = ["top"]
prompt = "left after {{ steps.top.result }}"

[steps.right]
needs = ["top"]
prompt = "right after {{ steps.top.result }}"

[steps.bottom]
needs = ["left", "right"]
prompt = "join {{ steps.left.result }} / {{ steps.right.result }}"
"""

PIPELINE = """\
agent = "echo"

[steps.first]
prompt = "first words"

[steps.second]
needs = ["first"]
prompt = "/sleep 1500"

[steps.third]
needs = ["second"]
prompt = "third after {{ steps.second.result }}"
"""


def write(daemon: DaemonProcess, name: str, text: str) -> Path:
    path = Path(daemon.work) / name
    path.write_text(text)
    return path


async def start_run(client: Client, path: Path, **inputs: str) -> m.WorkflowInfo:
    info: m.WorkflowInfo = await client.request(m.WorkflowRun(
        id=0, workflow=str(path), source=path.read_text(), inputs=inputs,
        cwd=str(path.parent)))
    return info


async def wait_run(client: Client, run: str, until: str = "ended", timeout: float = 60.0
                   ) -> m.WorkflowInfo:
    """The run once it ended (`until="ended"`) or once a unit named `until` is running."""
    info: m.WorkflowInfo = await client.request(m.GetWorkflow(id=0, run=run))
    with trio.fail_after(timeout):
        while True:
            if until == "ended" and info.state != "running":
                return info
            if any(s.unit == until and s.state == "running" and s.task for s in info.steps):
                return info
            info = await client.request(m.GetWorkflow(id=0, run=run, wait=10,
                                                      version=info.version))


def units(info: m.WorkflowInfo) -> dict[str, m.WorkflowStepInfo]:
    return {s.unit: s for s in info.steps}


async def tasks_of(client: Client, info: m.WorkflowInfo) -> list[m.TaskInfo]:
    if info.chat is None:
        return []
    listed: m.TaskList = await client.request(m.ListTasks(id=0, parent=info.chat))
    return listed.tasks


async def test_a_diamond_runs_each_step_once_after_its_needs(daemon: DaemonProcess) -> None:
    path = write(daemon, "diamond.toml", DIAMOND)
    async with daemon.client() as client:
        run = await start_run(client, path)
        done = await wait_run(client, run.run)
        assert done.state == "done", done.reason
        u = units(done)
        assert u["top"].result == "plan caching"
        assert u["left"].result == "left after plan caching"
        assert u["bottom"].result == ("join left after plan caching / right after plan "
                                      "caching")
        assert all(s.state == "done" and s.attempts == 1 for s in done.steps)
        assert (u["bottom"].started_at or 0) >= max(u["left"].ended_at or 0,
                                                    u["right"].ended_at or 0)
        assert (u["left"].started_at or 0) >= (u["top"].ended_at or 0)
        tasks = await tasks_of(client, done)
        assert sorted(t.task for t in tasks) == sorted(s.task or "" for s in done.steps)
        assert all(t.state == "done" and t.cwd == done.cwd for t in tasks)
        assert done.tokens > 0
        listed: m.WorkflowList = await client.request(m.ListWorkflows(id=0))
        assert [r.run for r in listed.runs] == [run.run]
        # The run's chat carries a `workflow` delta at each change, the run's end last.
        assert done.chat is not None
        # The run's last delta is published as it ends and reaches the log (and a replay)
        # once committed, a moment after the run reads as done: wait for it.
        with trio.fail_after(20):
            while True:
                flow = [x.body for x in await replay(client, done.chat)
                        if isinstance(x.body, d.Workflow)]
                if flow and flow[-1].unit is None and flow[-1].state == "done":
                    break
                await trio.sleep(0.05)
        assert all(b.run == run.run for b in flow)
        assert (flow[0].unit, flow[0].state) == (None, "running")
        assert (flow[-1].unit, flow[-1].state, flow[-1].tokens) == (None, "done", done.tokens)
        ended = [(b.unit, b.state) for b in flow if b.state == "done" and b.unit]
        assert ended[0] == ("top", "done")
        assert ended[-1] == ("bottom", "done")
        assert sorted(ended[1:3]) == [("left", "done"), ("right", "done")]


async def test_a_fan_out_of_five_runs_three_at_a_time(daemon: DaemonProcess) -> None:
    path = write(daemon, "fan.toml", """\
agent = "echo"
concurrency = 3

[inputs]
items = { type = "list", default = ["1", "2", "3", "4", "5"] }

[steps.each]
for_each = "inputs.items"
prompt = "/sleep 40{{ item }}"

[steps.sum]
needs = ["each"]
prompt = "got {{ steps.each.result }}"
""")
    async with daemon.client() as client:
        done = await wait_run(client, (await start_run(client, path)).run)
        assert done.state == "done", done.reason
        u = units(done)
        assert [u[f"each[{i}]"].item for i in range(5)] == ["1", "2", "3", "4", "5"]
        assert u["each"].result == "\n\n".join(f"slept 40{i}" for i in range(1, 6))
        assert u["sum"].result.split() == ["got", *" ".join(
            f"slept 40{i}" for i in range(1, 6)).split()]
        tasks = [t for t in await tasks_of(client, done) if "each[" in t.title]
        assert len(tasks) == 5
        spans = sorted((t.started_at or 0, t.ended_at or 0) for t in tasks)
        most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
        assert most == 3, spans
        again = await wait_run(client, (await start_run(client, path)).run)
        assert {s.state for s in again.steps} == {"cached"}
        assert again.chat is None
        assert units(again)["sum"].result == u["sum"].result


async def test_the_worked_example_of_the_docs_runs(daemon: DaemonProcess) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "WORKFLOWS.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    path = write(daemon, "review.toml", example)
    async with daemon.client() as client:
        done = await wait_run(client, (await start_run(client, path)).run)
        assert done.state == "done", done.reason
        assert [s.unit for s in done.steps] == ["plan", "review", "review[0]", "review[1]",
                                                "review[2]", "summary"]
        assert units(done)["summary"].result == (
            "summarize: review store.py for error handling review pool.py for error "
            "handling review hub.py for error handling")
        other = await wait_run(client, (await start_run(
            client, path, files="store.py,router.py")).run)
        assert {s.unit: s.state for s in other.steps} == {
            "plan": "cached", "review": "done", "review[0]": "cached", "review[1]": "done",
            "summary": "done"}


async def test_a_re_run_is_a_full_cache_hit_and_an_edit_reruns_only_its_dependents(
        daemon: DaemonProcess) -> None:
    path = write(daemon, "diamond.toml", DIAMOND)
    async with daemon.client() as client:
        first = await wait_run(client, (await start_run(client, path)).run)
        assert first.state == "done"
        again = await wait_run(client, (await start_run(client, path)).run)
        assert again.state == "done"
        assert {s.state for s in again.steps} == {"cached"}
        assert again.chat is None  # not even a chat: no agent turn at all
        assert [s.result for s in again.steps] == [s.result for s in first.steps]

        path.write_text(DIAMOND.replace("left after", "LEFT after"))
        edited = await wait_run(client, (await start_run(client, path)).run)
        assert edited.state == "done"
        states = {s.unit: s.state for s in edited.steps}
        assert states == {"top": "cached", "left": "done", "right": "cached",
                          "bottom": "done"}
        assert units(edited)["bottom"].result.startswith("join LEFT after plan caching")
        ran = await tasks_of(client, edited)
        assert sorted(t.title for t in ran) == ["diamond bottom", "diamond left"]

        other = await wait_run(client, (await start_run(client, path, topic="x")).run)
        assert {s.state for s in other.steps} == {"done"}  # an input the top step reads


async def test_bad_files_are_refused_naming_file_line_and_key(daemon: DaemonProcess) -> None:
    cycle = write(daemon, "cycle.toml", 'agent = "echo"\n[steps.a]\nneeds = ["b"]\n'
                  'prompt = "x"\n[steps.b]\nneeds = ["a"]\nprompt = "y"\n')
    unknown = write(daemon, "unknown.toml", '[steps.a]\nagent = "nobody"\nprompt = "x"\n')
    template = write(daemon, "template.toml",
                     'agent = "echo"\n[steps.a]\nprompt = "{{ steps.zz.result }}"\n')
    typed = write(daemon, "typed.toml", 'agent = "echo"\nbudget = "lots"\n'
                  '[steps.a]\nprompt = "x"\n')
    async with daemon.client() as client:
        for path, where in ((cycle, ":3: steps.a.needs: a cycle: a -> b -> a"),
                            (unknown, ":2: steps.a.agent: unknown agent 'nobody'"),
                            (template, ":3: steps.a.prompt: bad template"),
                            (typed, ":2: budget: must be an integer")):
            with pytest.raises(RequestFailed) as caught:
                await start_run(client, path)
            assert caught.value.code == ErrorCode.BAD_REQUEST
            assert caught.value.message.startswith(f"{path}{where}"), caught.value.message
        with pytest.raises(RequestFailed, match="unknown input 'nope'"):
            await start_run(client, write(daemon, "d.toml", DIAMOND), nope="1")
        listed: m.WorkflowList = await client.request(m.ListWorkflows(id=0))
        assert listed.runs == []
        chats: m.ChatList = await client.request(m.ListChats(id=0))
        assert chats.chats == []


async def test_budget_exceeded_stops_the_run_with_no_step_left_running(
        daemon: DaemonProcess) -> None:
    path = write(daemon, "budget.toml", """\
agent = "echo"
budget = 5

[steps.quick]
prompt = "one two three four five six seven"

[steps.slow]
prompt = "/sleep 60000"

[steps.after]
needs = ["quick", "slow"]
prompt = "never"
""")
    async with daemon.client() as client:
        done = await wait_run(client, (await start_run(client, path)).run, timeout=30)
        assert done.state == "failed"
        assert done.reason is not None
        assert done.reason.startswith("token budget exceeded: the run used "), done.reason
        assert done.reason.endswith("of its budget of 5")
        states = {s.unit: s.state for s in done.steps}
        assert states == {"quick": "done", "slow": "cancelled", "after": "cancelled"}
        tasks = await tasks_of(client, done)
        assert sorted(t.state for t in tasks) == ["cancelled", "done"]


async def test_a_step_that_fails_is_retried_then_fails_the_run_and_resume_reruns_it(
        daemon: DaemonProcess) -> None:
    path = write(daemon, "retry.toml", """\
agent = "echo"

[steps.ok]
prompt = "fine"

[steps.bad]
prompt = "/error"
retries = 1

[steps.later]
needs = ["bad", "ok"]
prompt = "later"
""")
    async with daemon.client() as client:
        done = await wait_run(client, (await start_run(client, path)).run)
        assert done.state == "failed"
        u = units(done)
        assert (u["ok"].state, u["bad"].state, u["later"].state) == ("done", "failed",
                                                                       "skipped")
        assert u["bad"].attempts == 2
        assert done.reason is not None
        assert done.reason.startswith("step 'bad' failed")
        resumed: m.WorkflowInfo = await client.request(m.WorkflowResume(id=0, run=done.run))
        assert resumed.state == "running"
        again = await wait_run(client, done.run)
        assert again.state == "failed"
        assert units(again)["ok"].task == u["ok"].task  # kept, not run again
        assert units(again)["bad"].attempts == 2


async def test_cancel_stops_a_run_and_its_running_steps(daemon: DaemonProcess) -> None:
    path = write(daemon, "cancel.toml", 'agent = "echo"\n[steps.a]\nprompt = "/sleep 60000"\n'
                 '[steps.b]\nneeds = ["a"]\nprompt = "x"\n')
    async with daemon.client() as client:
        run = await start_run(client, path)
        await wait_run(client, run.run, until="a")
        cancelled: m.WorkflowInfo = await client.request(m.WorkflowCancel(id=0,
                                                                          run=run.run))
        assert cancelled.state == "cancelled"
        assert cancelled.reason == "cancelled"
        assert {s.state for s in (await wait_run(client, run.run)).steps} == {"cancelled"}
        assert [t.state for t in await tasks_of(client, cancelled)] == ["cancelled"]


async def test_kill9_mid_run_resumes_and_finishes_each_step_once(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    daemon.start()
    path = write(daemon, "pipeline.toml", PIPELINE)
    async with daemon.client() as client:
        run = await start_run(client, path)
        before = await wait_run(client, run.run, until="second")
        await subscribe(client, units(before)["second"].task or "", since=0)
        await wait_for_delta(client, lambda x: isinstance(x.body, d.TurnStarted))
    daemon.kill9()  # while the second step's turn runs
    daemon.start()
    async with daemon.client() as client:
        done = await wait_run(client, run.run)
        assert done.state == "done", done.reason
        u = units(done)
        assert u["first"].task == units(before)["first"].task
        assert u["third"].result == "third after slept 1500"
        assert all(s.attempts == 1 for s in done.steps)
        tasks = await tasks_of(client, done)
        finished = Counter(t.title for t in tasks if t.state == "done")
        assert finished == {"pipeline first": 1, "pipeline second": 1, "pipeline third": 1}
        # The daemon reclaims the agent whose turn ran through the kill, so that step runs
        # once; had its turn been cut instead, it would have run again in a new task.
        assert [(t.title, t.state) for t in tasks if t.state != "done"] in (
            [], [("pipeline second", "interrupted")])


async def test_a_stop_mid_step_resumes_running_the_cut_step_again(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    daemon.start()
    path = write(daemon, "pipeline.toml", PIPELINE)
    async with daemon.client() as client:
        run = await start_run(client, path)
        before = await wait_run(client, run.run, until="second")
        await subscribe(client, units(before)["second"].task or "", since=0)
        await wait_for_delta(client, lambda x: isinstance(x.body, d.TurnStarted))
    daemon.stop()  # ends the running turn: its task ends interrupted
    daemon.start()
    async with daemon.client() as client:
        done = await wait_run(client, run.run)
        assert done.state == "done", done.reason
        assert all(s.attempts == 1 for s in done.steps)  # an interruption is no attempt
        tasks = await tasks_of(client, done)
        assert [(t.title, t.state) for t in tasks if t.state != "done"] == [
            ("pipeline second", "interrupted")]
        assert Counter(t.title for t in tasks if t.state == "done") == {
            "pipeline first": 1, "pipeline second": 1, "pipeline third": 1}


def test_the_cli_discovers_runs_follows_and_shows_a_workflow(daemon: DaemonProcess) -> None:
    flows = Path(daemon.work) / ".stoker" / "workflows"
    flows.mkdir(parents=True)
    (flows / "fan.toml").write_text('''\
description = "fan out over items, then sum up"
agent = "echo"

[inputs]
items = { type = "list" }

[steps.plan]
prompt = "plan {{ inputs.items }}"

[steps.each]
needs = ["plan"]
for_each = "inputs.items"
prompt = "do {{ index }} {{ item }}"

[steps.sum]
needs = ["each"]
prompt = "sum {{ steps.each.result }}"
''')
    (flows / "broken.toml").write_text('agent = "echo"\n[steps.a]\nprompt = "{{ nope }}"\n')
    listed = daemon.cli("workflow", "ls", "--available")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:2] == ["broken", "invalid"]
    assert lines[1].split()[:2] == ["fan", "ok"]
    assert lines[1].endswith("fan out over items, then sum up")

    ran = daemon.cli("workflow", "run", "fan", "--input", "items=x,y", "--follow")
    assert ran.returncode == 0, ran.stderr
    out = ran.stdout.splitlines()
    assert "each[1] done" in out, ran.stdout
    dag = out[out.index("sum done") + 1:]
    assert dag[0].startswith("fan ")
    assert dag[0].endswith(f": done, 3/3 steps, {dag[0].split()[-2]} tokens")
    assert [line.split()[:3] for line in dag[1:]] == [
        ["✓", "plan", "done"], ["✓", "each", "done"], ["✓", "each[0]", "x"],
        ["✓", "each[1]", "y"], ["✓", "sum", "done"]]
    run = dag[0].split()[1].rstrip(":")

    shown = daemon.cli("workflow", "show", run, "--results")
    assert shown.returncode == 0, shown.stderr
    assert "--- each\ndo 0 x\n\ndo 1 y\n\n--- sum\nsum do 0 x do 1 y\n" in shown.stdout
    assert daemon.cli("workflow", "ls").stdout.split()[:3] == [run, "fan", "done"]
    as_json = json.loads(daemon.cli("workflow", "show", run, "--json").stdout)
    assert [s["state"] for s in as_json["steps"]] == ["done"] * 5

    again = daemon.cli("workflow", "run", "fan", "--input", "items=x,y")
    assert again.returncode == 0, again.stderr
    assert len(again.stdout.split()) == 1  # just the run id

    bad = daemon.cli("workflow", "run", "broken")
    assert bad.returncode == 1
    assert f"{flows / 'broken.toml'}:3: steps.a.prompt: bad template" in bad.stderr
    missing = daemon.cli("workflow", "run", "fan")
    assert missing.returncode == 1
    assert "input 'items' is required" in missing.stderr


async def test_a_step_over_its_timeout_is_cancelled_and_retried(daemon: DaemonProcess) -> None:
    path = write(daemon, "slow.toml", 'agent = "echo"\n[steps.slow]\nprompt = "/sleep 60000"\n'
                 'timeout = 0.5\nretries = 1\n')
    async with daemon.client() as client:
        done = await wait_run(client, (await start_run(client, path)).run)
        assert done.state == "failed"
        slow = units(done)["slow"]
        assert (slow.state, slow.attempts, slow.error) == ("failed", 2,
                                                           "timed out after 0.5 s")
        tasks = await tasks_of(client, done)
        assert [t.state for t in tasks] == ["cancelled", "cancelled"]
        assert (tasks[1].started_at or 0) - (tasks[0].ended_at or 0) >= 1.0  # the backoff


async def test_a_worktree_step_works_in_a_new_worktree_of_the_project(
        daemon: DaemonProcess) -> None:
    project = Path(daemon.work) / "project"
    project.mkdir()
    env = {**daemon.env(), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for git in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "base"]):
        await trio.run_process(["git", *git], cwd=project, env=env, capture_stdout=True)
    path = project / "wt.toml"
    path.write_text('agent = "echo"\n[steps.write]\nworkspace = "worktree"\n'
                    'prompt = "/write out.txt hello"\n')
    async with daemon.client() as client:
        done = await wait_run(client, (await start_run(client, path)).run)
        assert done.state == "done", done.reason
        [task] = await tasks_of(client, done)
        assert task.workspace is not None
        assert task.cwd != done.cwd
        assert (Path(task.cwd) / "out.txt").read_text() == "hello"
        assert not (project / "out.txt").exists()
        await trio.run_process(["git", "commit", "-q", "--allow-empty", "-m", "next"],
                               cwd=project, env=env)
        moved = await wait_run(client, (await start_run(client, path)).run)
        assert units(moved)["write"].state == "done"  # a new HEAD: a new spec


async def test_an_agent_runs_a_workflow_through_mcp_but_a_step_may_not(
        daemon: DaemonProcess) -> None:
    flows = Path(daemon.work) / ".stoker" / "workflows"
    flows.mkdir(parents=True)
    (flows / "hello.toml").write_text(
        'agent = "echo"\n[inputs]\nwho = "world"\n[steps.greet]\n'
        'prompt = "hello {{ inputs.who }}"\n')
    (flows / "nested.toml").write_text(
        'agent = "echo"\n[steps.inner]\n'
        "prompt = '/mcp run_workflow {\"workflow\": \"hello\"}'\n")

    async def mcp(tool: str, arguments: dict[str, object]) -> dict[str, Any]:
        text = (await turn(client, "boss", f"/mcp {tool} {json.dumps(arguments)}",
                           timeout=90)).text
        assert not text.startswith("error:"), text
        data: dict[str, Any] = json.loads(text)
        return data

    async with daemon.client() as client:
        await open_chat(client, "boss", cwd=daemon.work)
        started = await mcp("run_workflow", {"workflow": "hello", "inputs": {"who": "mcp"}})
        assert started["steps"] == ["greet"]
        result = await mcp("workflow_result", {"run": started["run"], "wait_seconds": 60})
        assert result["state"] == "done"
        assert result["steps"] == [{"step": "greet", "state": "done", "result": "hello mcp"}]
        info: m.WorkflowInfo = await client.request(m.GetWorkflow(id=0, run=started["run"]))
        assert info.origin == "boss"
        assert info.cwd == os.path.realpath(daemon.work)

        nested = await mcp("run_workflow", {"workflow": "nested"})
        outcome = await mcp("workflow_result", {"run": nested["run"], "wait_seconds": 90})
        [inner] = outcome["steps"]
        assert inner["result"].startswith("error:"), inner
        assert "a workflow step may not start workflows" in inner["result"]
        listed: m.WorkflowList = await client.request(m.ListWorkflows(id=0))
        assert len(listed.runs) == 2  # the step started none


async def test_the_daemon_wide_limit_holds_over_runs(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config="[workflows]\nmax_running = 2\n")
    daemon.start()
    path = write(daemon, "pair.toml", 'agent = "echo"\n[inputs]\nn = "1"\n[steps.each]\n'
                 'for_each = ["a", "b"]\nprompt = "/sleep 40{{ inputs.n }} {{ item }}"\n')
    async with daemon.client() as client:
        runs = [await start_run(client, path, n=n) for n in ("1", "2")]
        done = [await wait_run(client, r.run) for r in runs]
        assert [r.state for r in done] == ["done", "done"]
        tasks = [t for r in done for t in await tasks_of(client, r)]
        assert len(tasks) == 4
        spans = sorted((t.started_at or 0, t.ended_at or 0) for t in tasks)
        most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
        assert most == 2, spans


async def test_cancel_ends_a_step_waiting_to_retry_at_once(daemon: DaemonProcess) -> None:
    path = write(daemon, "flaky.toml", 'agent = "echo"\n[steps.a]\nprompt = "/error"\n'
                 'retries = 5\n')
    async with daemon.client() as client:
        run = await start_run(client, path)
        info: m.WorkflowInfo = await client.request(m.GetWorkflow(id=0, run=run.run))
        with trio.fail_after(30):
            while not (units(info)["a"].error or "").endswith("retrying"):
                info = await client.request(m.GetWorkflow(id=0, run=run.run, wait=10,
                                                          version=info.version))
        with trio.fail_after(5):  # well before the backoff of 1, 2, 4, 8 ... seconds ends
            cancelled: m.WorkflowInfo = await client.request(
                m.WorkflowCancel(id=0, run=run.run))
        assert cancelled.state == "cancelled"
        assert units(cancelled)["a"].state == "cancelled"


async def test_a_cancelled_run_resumes_from_its_finished_steps(daemon: DaemonProcess) -> None:
    path = write(daemon, "pipeline.toml", PIPELINE)
    async with daemon.client() as client:
        run = await start_run(client, path)
        before = await wait_run(client, run.run, until="second")
        cancelled: m.WorkflowInfo = await client.request(m.WorkflowCancel(id=0,
                                                                          run=run.run))
        assert [s.state for s in cancelled.steps] == ["done", "cancelled", "cancelled"]
        resumed: m.WorkflowInfo = await client.request(m.WorkflowResume(id=0, run=run.run))
        assert resumed.state == "running"
        done = await wait_run(client, run.run)
        assert done.state == "done", done.reason
        assert units(done)["first"].task == units(before)["first"].task
        assert units(done)["third"].result == "third after slept 1500"
        with pytest.raises(RequestFailed, match="is done; run the workflow again"):
            await client.request(m.WorkflowResume(id=0, run=run.run))


async def test_the_run_s_chat_is_never_prompted_with_its_steps_results(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config='[tasks]\nnotify = "prompt"\nmax_running = 1\n')
    daemon.start()
    path = write(daemon, "diamond.toml", DIAMOND)
    async with daemon.client() as client:
        done = await wait_run(client, (await start_run(client, path)).run)
        assert done.state == "done", done.reason
        assert done.chat is not None
        tasks = await tasks_of(client, done)
        spans = sorted((t.started_at or 0, t.ended_at or 0) for t in tasks)
        assert spans[1][0] < spans[2][1]  # left and right ran together: not max_running
        history = await replay(client, done.chat)
        assert not [x for x in history if isinstance(x.body, d.TurnStarted)]


async def test_the_run_s_policy_answers_its_steps_permission_requests(
        daemon: DaemonProcess) -> None:
    path = write(daemon, "allowed.toml", 'agent = "echo"\npolicy = "allow"\n'
                 '[steps.ask]\nprompt = "/permission"\n')
    async with daemon.client() as client:
        done = await wait_run(client, (await start_run(client, path)).run)
        assert done.state == "done", done.reason
        assert units(done)["ask"].result.startswith("permission: allow")
        [task] = await tasks_of(client, done)
        detail: m.ChatDetail = await client.request(m.Inspect(id=0, chat=task.task))
        assert detail.chat.policy == "allow"


ONE_STEP = 'agent = "echo"\n[steps.only]\nprompt = "kept words"\n'
SLOW_STEP = 'agent = "echo"\n[steps.a]\nprompt = "/sleep 60000"\n'


async def run_ids(client: Client) -> dict[str, str]:
    listed: m.WorkflowList = await client.request(m.ListWorkflows(id=0))
    return {r.run: r.state for r in listed.runs}


async def test_retention_at_start_drops_done_runs_and_the_cache_but_keeps_resumable_ones(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    daemon.start()
    quick = write(daemon, "quick.toml", ONE_STEP)
    slow = write(daemon, "slow.toml", SLOW_STEP)
    async with daemon.client() as client:
        done = await wait_run(client, (await start_run(client, quick)).run)
        assert done.state == "done", done.reason
        stopped = await start_run(client, slow)
        await wait_run(client, stopped.run, until="a")
        cancelled: m.WorkflowInfo = await client.request(m.WorkflowCancel(id=0,
                                                                          run=stopped.run))
        assert cancelled.state == "cancelled"
    daemon.stop()
    daemon.write_config('[workflows]\nrun_retention = "1ms"\ncache_retention = "1ms"\n')
    daemon.start()
    async with daemon.client() as client:
        # Pruned before the daemon answered anything: the done run is gone, the cancelled
        # one (resumable) is kept, and the cache is empty, so the step runs again.
        assert await run_ids(client) == {stopped.run: "cancelled"}
        with pytest.raises(RequestFailed, match="no workflow run"):
            await client.request(m.GetWorkflow(id=0, run=done.run))
        again = await wait_run(client, (await start_run(client, quick)).run)
        assert [(s.state, s.result) for s in again.steps] == [("done", "kept words")]


async def test_retention_while_running_never_drops_a_running_run(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config='[workflows]\nrun_retention = "1s"\n'
                                   'cache_retention = "1s"\n')
    daemon.start()
    quick = write(daemon, "quick.toml", ONE_STEP)
    slow = write(daemon, "slow.toml", SLOW_STEP)
    async with daemon.client() as client:
        done = await wait_run(client, (await start_run(client, quick)).run)
        assert done.state == "done", done.reason
        running = await start_run(client, slow)
        await wait_run(client, running.run, until="a")
        with trio.fail_after(30):  # pruned at its deadline, a second after it ended
            while done.run in await run_ids(client):
                await trio.sleep(0.05)
        assert await run_ids(client) == {running.run: "running"}
        # Its cache entry went in the same pass: the same spec runs again.
        again = await wait_run(client, (await start_run(client, quick)).run)
        assert [s.state for s in again.steps] == ["done"]
        await client.request(m.WorkflowCancel(id=0, run=running.run))


async def test_a_fan_out_s_results_are_read_one_by_one(daemon: DaemonProcess) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "WORKFLOWS.md").read_text()
    section = doc.split("**Reading a fan-out's results one by one**", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = write(daemon, "results.toml", example)
    async with daemon.client() as client:
        done = await wait_run(client, (await start_run(client, path)).run)
        assert done.state == "done", done.reason
        # The echo agent answers the prompt's words (its line break becomes a space).
        assert units(done)["report"].result == (
            'first: review store.py all: ["review store.py", "review pool.py"]')


async def test_a_for_each_fans_out_over_an_earlier_step_s_result_lines(
        daemon: DaemonProcess) -> None:
    path = write(daemon, "lines.toml", """\
agent = "echo"

[steps.list]
prompt = "/lines store.py pool.py hub.py"

[steps.each]
needs = ["list"]
for_each = "steps.list.lines"
prompt = "review {{ item }} ({{ index }})"

[steps.last]
needs = ["each"]
prompt = "then {{ steps.each.results.2 }}"
""")
    async with daemon.client() as client:
        done = await wait_run(client, (await start_run(client, path)).run)
        assert done.state == "done", done.reason
        u = units(done)
        assert u["list"].result == "store.py\npool.py\nhub.py"
        files = ["store.py", "pool.py", "hub.py"]
        assert [(u[f"each[{i}]"].item, u[f"each[{i}]"].result) for i in range(3)] == [
            (f, f"review {f} ({i})") for i, f in enumerate(files)]
        assert "each[3]" not in u
        assert u["last"].result == "then review hub.py (2)"
        again = await wait_run(client, (await start_run(client, path)).run)
        assert {s.state for s in again.steps} == {"cached"}


async def test_a_step_s_budget_cuts_its_turn_on_usage_reported_mid_turn(
        daemon: DaemonProcess) -> None:
    # `/meta-usage 60000` reports 107 tokens at once, then would answer a minute later.
    step = write(daemon, "step_budget.toml", 'agent = "echo"\n[steps.a]\nbudget = 50\n'
                 'prompt = "/meta-usage 60000"\n')
    whole = write(daemon, "run_budget.toml", 'agent = "echo"\nbudget = 50\n[steps.a]\n'
                  'prompt = "/meta-usage 60000"\n')
    async with daemon.client() as client:
        failed = await wait_run(client, (await start_run(client, step)).run, timeout=30)
        assert failed.state == "failed"
        assert failed.reason == ("step 'a' failed: used 107 tokens, over the step's budget "
                                 "of 50")
        assert [t.state for t in await tasks_of(client, failed)] == ["cancelled"]
        stopped = await wait_run(client, (await start_run(client, whole)).run, timeout=30)
        assert stopped.state == "failed"
        assert stopped.reason is not None
        assert stopped.reason.startswith("token budget exceeded: the run used 107 tokens")
        assert [t.state for t in await tasks_of(client, stopped)] == ["cancelled"]

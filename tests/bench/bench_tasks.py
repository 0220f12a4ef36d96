"""Scenario: background tasks (docs/TASKS.md). How long from `task_new` to the task's first
chunk (a new task is a new chat: its echo agent starts cold), from `task_send` to the first
chunk of a follow-up (its agent is warm), and how much the daemon's own memory grows per
task (the task's chat, its channel, its actor record, the task record; agents excluded).

Times are wall clock: the send time here against the `ts` the hub stamped on the task's
first `text` delta (same machine, same clock), read back from the task chat's log once the
task ended, so no subscription races the first chunk.
"""

from __future__ import annotations

import time

from daemon.client import Client
from protocol import deltas as d
from protocol import messages as m
from tests.support.harness import replay

from .common import BenchDaemon, Context, Result, bench_config, median, ms, percentile

PROMPT = "hello there world"


async def _first_chunk(client: Client, chat: str, turn: int, since: float) -> float:
    for delta in await replay(client, chat):
        if delta.turn == turn and isinstance(delta.body, d.Text):
            return delta.ts - since
    raise AssertionError(f"no text in turn {turn} of {chat}")


async def _one(client: Client, parent: str) -> tuple[float, float, float]:
    """(task_new acknowledged, spawn to first chunk, follow-up to first chunk) seconds."""
    sent = time.time()
    info: m.TaskInfo = await client.request(m.TaskNew(id=0, parent=parent, prompt=PROMPT))
    acked = time.time() - sent
    done: m.TaskInfo = await client.request(m.GetTask(id=0, task=info.task, wait=60))
    assert done.state == "done", done
    cold = await _first_chunk(client, info.task, done.turn or 1, sent)
    sent = time.time()
    await client.request(m.TaskSend(id=0, task=info.task, prompt=PROMPT))
    again: m.TaskInfo = await client.request(m.GetTask(id=0, task=info.task, wait=60))
    assert again.state == "done", again
    warm = await _first_chunk(client, info.task, again.turn or 2, sent)
    return acked, cold, warm


async def run(ctx: Context) -> Result:
    result = Result("tasks", "Tasks: spawn to first chunk, daemon memory per task")
    per_run = 8 if ctx.quick else 30
    memory_tasks = 20 if ctx.quick else 100
    daemon = BenchDaemon(config=bench_config(
        max_warm=8, extra="\n[tasks]\nmax_running = 8\nmax_tasks = 100000\n"))
    acks: list[float] = []
    cold: list[float] = []
    warm: list[float] = []
    try:
        daemon.start_bench()
        async with Client.connect(daemon.socket, client="bench") as client:
            parent: m.ChatInfo = await client.request(m.OpenChat(
                id=0, chat="boss", agent="echo", cwd=str(daemon.work)))
            await _one(client, parent.chat)  # warm-up: imports, first agent start
            for run_index in range(ctx.runs):
                for _ in range(per_run):
                    a, c, w = await _one(client, parent.chat)
                    acks.append(a)
                    cold.append(c)
                    warm.append(w)
                ctx.say(f"  run {run_index + 1}: spawn to first chunk p50 "
                        f"{ms(percentile(cold, 50)):.1f} ms, follow-up "
                        f"{ms(percentile(warm, 50)):.1f} ms")
            await daemon.settled_cpu()
            before = daemon.rss()
            made = []
            for _ in range(memory_tasks):
                info: m.TaskInfo = await client.request(m.TaskNew(
                    id=0, parent=parent.chat, prompt=PROMPT))
                made.append(info.task)
            for task in made:
                done: m.TaskInfo = await client.request(m.GetTask(id=0, task=task, wait=120))
                assert done.state == "done", done
            await daemon.settled_cpu()
            grown = daemon.rss() - before
    finally:
        daemon.close()
    result.detail = {"tasks_per_run": per_run, "memory_tasks": memory_tasks,
                     "prompt": PROMPT}
    result.add("task_new acknowledged (durable) p50", ms(median(acks)), "ms")
    result.add("spawn to first chunk p50 (cold agent)", ms(percentile(cold, 50)), "ms")
    result.add("spawn to first chunk p99 (cold agent)", ms(percentile(cold, 99)), "ms")
    result.add("follow-up to first chunk p50 (warm agent)", ms(percentile(warm, 50)), "ms")
    result.add("follow-up to first chunk p99 (warm agent)", ms(percentile(warm, 99)), "ms")
    result.add("daemon RSS growth per task", grown / memory_tasks / 1024, "KiB",
               note=f"{memory_tasks} tasks, agents excluded")
    return result

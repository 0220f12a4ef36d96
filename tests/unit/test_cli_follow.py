"""How `stoker attach` and `stoker log` render deltas for people (daemon/cli/follow.py)."""

from __future__ import annotations

import io

from daemon.cli.follow import Renderer
from protocol import deltas as d


def rendered(*bodies: d.DeltaBody) -> str:
    out = io.StringIO()
    renderer = Renderer(out)
    for seq, body in enumerate(bodies, 1):
        renderer.render(d.Delta(chat="c", seq=seq, ts=1.0, turn=0, body=body))
    renderer.finish()
    return out.getvalue()


def test_task_and_workflow_deltas_say_what_happened() -> None:
    """They were `[task]` and `[workflow]`, nothing else: which task, what happened?"""
    assert rendered(
        d.Task(task="t1", event="spawned", agent="echo", title="do x", state="queued"),
        d.Task(task="t1", event="failed", agent="echo", title="do x", error="it crashed"),
        d.Workflow(run="r1", state="running", unit="review[0]"),
        d.Workflow(run="r1", state="failed", error="step review failed"),
    ) == ("[task t1 spawned (echo: do x)]\n"
          "[task t1 failed (echo: do x): it crashed]\n"
          "[workflow r1 review[0] running]\n"
          "[workflow r1 failed: step review failed]\n")


def test_plan_and_commands_say_how_many() -> None:
    assert rendered(d.Plan(entries=[{"content": "a"}, {"content": "b"}]),
                    d.Commands(commands=[{"name": "x"}])) == (
        "[plan: 2 entries]\n[commands: 1 available]\n")


def test_the_other_deltas_say_what_they_carry() -> None:
    """A user message replayed by the agent, a content block, config options, a session
    title and an unmapped notification were `[user_text]`, `[content]`, ... ."""
    assert rendered(
        d.UserText(text="earlier question"),
        d.Content(role="agent", block={"type": "image", "data": "..."}),
        d.Config(options=[{"id": "model", "currentValue": "m1"}]),
        d.Info(title="Fix the parser"),
        d.Raw(method="qwen/notify/session/mode-update"),
    ) == ("[user] earlier question\n[agent image]\n[config: model = m1]\n"
          "[title: Fix the parser]\n[qwen/notify/session/mode-update]\n")

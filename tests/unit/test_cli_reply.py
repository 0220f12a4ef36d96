"""How `stoker send` renders a turn (daemon/cli/reply.py): tool calls as one line each when
they finish, a failed one with what it said; progress only when asked for."""

from __future__ import annotations

import io

from daemon.cli.reply import Screen, TurnView, Verbosity
from protocol import deltas as d


def delta(body: d.DeltaBody, turn: int = 1, ts: float = 100.0) -> d.Delta:
    return d.Delta(chat="c", seq=1, ts=ts, turn=turn, body=body)


def view(**verbosity: bool) -> tuple[TurnView, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return TurnView("c", 1, Verbosity(**verbosity), Screen(out, err)), out, err


def test_a_failed_tool_call_shows_its_title_and_first_line() -> None:
    v, out, err = view()
    v.show(delta(d.Text(text="I will write it")))
    v.show(delta(d.ToolCall(tool_call_id="t1", title="write_file", status="pending")))
    v.show(delta(d.ToolUpdate(tool_call_id="t1", status="in_progress")))
    v.show(delta(d.ToolUpdate(tool_call_id="t1", status="failed", acp={
        "content": [{"type": "content", "content": {
            "type": "text", "text": "outside the workspace\nmore detail"}}]})))
    v.show(delta(d.Text(text="done")))
    v.screen.end()
    assert err.getvalue() == "[tool write_file: failed: outside the workspace]\n"
    assert out.getvalue() == "I will write it\ndone\n"


def test_a_retitled_tool_and_other_turns() -> None:
    v, _, err = view()
    v.show(delta(d.ToolCall(tool_call_id="t1", title="tool", status="pending")))
    v.show(delta(d.ToolUpdate(tool_call_id="t1", status="completed",
                              acp={"title": "read_file a.txt"})))
    v.show(delta(d.ToolCall(tool_call_id="t2", title="other turn", status="completed"),
                 turn=2))
    v.show(delta(d.ToolUpdate(tool_call_id="unknown", status="completed")))
    assert err.getvalue() == "[tool read_file a.txt: completed]\n"


def test_quiet_shows_no_tools_and_progress_needs_asking() -> None:
    v, _, err = view(quiet=True)
    v.show(delta(d.ToolCall(tool_call_id="t1", title="x", status="completed")))
    v.show(delta(d.Status(agent="qwen", state="starting"), turn=0))
    assert err.getvalue() == ""
    v, _, err = view(progress=True)
    v.show(delta(d.Status(agent="qwen", state="starting"), turn=0, ts=10.0))
    v.resuming("s-1")
    v.show(delta(d.Status(agent="qwen", state="ready"), turn=0, ts=24.25))
    assert err.getvalue() == ("starting qwen...\nresuming session s-1...\nready in 14.2s\n")

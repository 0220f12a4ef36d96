"""`stoker acp` shows a chat's task notices to an editor that takes notices."""

from __future__ import annotations

from daemon.editor.mapping import delta_update
from protocol import deltas as d


def test_task_deltas_become_notices_only_for_editors_that_take_them() -> None:
    done = d.Task(task="t1", event="finished", agent="echo", title="greet", state="done",
                  summary="hello")
    assert delta_update(done, own_client=None, notices=False) is None
    assert delta_update(done, own_client=None, notices=True) == {
        "sessionUpdate": "notice", "severity": "info",
        "title": "task t1 (echo: greet) finished: hello"}
    failed = d.Task(task="t2", event="failed", agent="qwen", title="x", state="failed",
                    error="agent crashed")
    update = delta_update(failed, own_client=None, notices=True)
    assert update is not None
    assert update["severity"] == "error"
    assert update["title"].endswith("failed: agent crashed")

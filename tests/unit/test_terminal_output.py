"""A terminal's output as its live deltas carry it: decoded incrementally, so what the
deltas say adds up to what the retained buffer says."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from daemon.execution.local import LocalExecutor
from daemon.execution.terminals import TerminalManager
from daemon.log import Log
from protocol import deltas as d


async def test_a_character_split_between_reads_reaches_terminal_deltas_whole(
        tmp_path: Path) -> None:
    """A terminal's live `output` deltas decode the stream incrementally: a UTF-8 character
    whose bytes arrive in two reads (a pipe hands over what was written so far) is sent
    whole, not as two U+FFFD, and the deltas agree with the retained buffer."""
    published: list[d.DeltaBody] = []
    manager = TerminalManager(
        executor=LocalExecutor(f"review-{os.getpid()}"), root=str(tmp_path),
        env=dict(os.environ), publish=published.append, on_activity=lambda: None,
        default_limit=1 << 20, max_count=4, actor="review", log=Log("test"))
    async with trio.open_nursery() as nursery:
        manager.attach(nursery)
        # The first byte of "é", a pause (so it is read on its own), then the second.
        terminal = await manager.create("sh", ["-c", r"printf '\303'; sleep 0.3; printf '\251\n'"],
                                        {}, None, None)
        with trio.fail_after(10):
            await manager.wait_for_exit(terminal)
    output = [b.data for b in published if isinstance(b, d.Terminal) and b.event == "output"]
    assert "".join(output) == "é\n"
    assert manager.output(terminal)["output"] == "é\n"

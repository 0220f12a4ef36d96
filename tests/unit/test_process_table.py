"""The process table behind `rss()` of local agents: one scan of /proc answers every agent
of a request (`status`, `ls`, the memory budget), not one scan per agent. Real processes."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest
import trio

from daemon.execution import local
from daemon.execution.local import LocalExecutor, LocalProcess
from daemon.execution.processes import ProcessTable

TREE = [sys.executable, "-c",
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print('up', flush=True); time.sleep(60)"]
"""An agent stand-in with a child: its tree is two processes."""


def test_tree_rss_sums_the_tree_from_one_scan() -> None:
    table = ProcessTable(max_age=60.0)
    leader = subprocess.Popen(TREE, stdout=subprocess.PIPE)
    try:
        assert leader.stdout is not None
        assert leader.stdout.readline() == b"up\n"
        children = psutil.Process(leader.pid).children(recursive=True)
        assert len(children) == 1
        own = psutil.Process(leader.pid).memory_info().rss
        total = table.tree_rss(leader.pid)
        assert total is not None
        assert total > own  # the child's memory is counted too
        assert table.tree_rss(os.getpid()) is not None
        assert table.tree_rss(2**22 + 12345) is None  # no such process
        assert table.statistics().scans == 1
    finally:
        for proc in psutil.Process(leader.pid).children(recursive=True):
            proc.kill()
        leader.kill()
        leader.wait()


def test_table_rescans_once_older_than_max_age() -> None:
    table = ProcessTable(max_age=0.0)
    table.tree_rss(os.getpid())
    table.tree_rss(os.getpid())
    assert table.statistics().scans == 2


async def test_rss_of_many_agents_costs_one_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    table = ProcessTable(max_age=60.0)
    monkeypatch.setattr(local, "PROCESSES", table)
    executor = LocalExecutor("test")
    procs: list[LocalProcess] = []
    try:
        for index in range(8):
            procs.append(await executor.spawn(TREE, env=dict(os.environ), cwd="/",
                                              actor=f"table-{index}"))
        for proc in procs:
            line = await proc.stdout.receive_some(16)
            assert line.startswith(b"up")
        sizes = await trio.to_thread.run_sync(lambda: [p.rss() for p in procs])
        assert all(size is not None and size > 0 for size in sizes), sizes
        assert table.statistics().scans == 1
    finally:
        with trio.CancelScope(shield=True):
            for proc in procs:
                proc.kill()
                await proc.stop(0.0)

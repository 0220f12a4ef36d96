"""`worktrees.diff` against real git, with the clock controlled.

Git decides whether a tracked file changed from its stat data, at one-second resolution on
common builds; an edit that keeps the size within the same second as the index refresh is
caught only by git's "racy index" rule, which compares file times with the index file's own
mtime. The diff runs on a copy of the index, so the copy must keep that mtime. This test
makes the race happen every time: checkout and same-size rewrite in one second, the diff in
a later one.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import trio

from daemon.workspaces.hosts import LocalHost
from daemon.workspaces.worktrees import diff

IDENTITY = ["-c", "user.name=Test", "-c", "user.email=test@example.invalid"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *IDENTITY, *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def at_second_start() -> None:
    """Wait for the start of a wall-clock second, so what follows shares that second."""
    time.sleep(1.0 - (time.time() % 1.0) + 0.01)


async def test_same_size_edit_in_the_checkout_second_is_in_the_diff(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    git(project, "init", "-q", "-b", "main")
    (project / "src.txt").write_text("one\ntwo\n")
    git(project, "add", ".")
    git(project, "commit", "-q", "-m", "initial")
    base = git(project, "rev-parse", "HEAD").strip()
    worktree = tmp_path / "wt"
    await trio.to_thread.run_sync(at_second_start)
    git(project, "worktree", "add", "-q", "-b", "w", str(worktree))
    (worktree / "src.txt").write_text("replaced")  # same size, same second
    checkout_second = int(os.stat(worktree / "src.txt").st_mtime)
    await trio.to_thread.run_sync(at_second_start)
    assert time.time() >= checkout_second + 1
    data = await diff(LocalHost(), str(worktree), base, scratch_dir=str(tmp_path / "scratch"),
                      timeout=30)
    assert [(f.path, f.insertions, f.deletions) for f in data.files] == [("src.txt", 1, 2)]

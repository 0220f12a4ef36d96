"""Workspaces and worktrees: the real daemon, real git repositories in temp dirs, the echo
agent writing and reading files, the reaper driven through its request and its timer."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import trio

from protocol import deltas as d
from protocol import messages as m
from tests.support.harness import (
    DaemonFactory,
    DaemonProcess,
    open_chat,
    replay,
    turn,
    wait_for_delta,
)

IDENTITY = {"GIT_AUTHOR_NAME": "Stoker Tests", "GIT_AUTHOR_EMAIL": "tests@stoker.invalid",
            "GIT_COMMITTER_NAME": "Stoker Tests", "GIT_COMMITTER_EMAIL": "tests@stoker.invalid"}
QUIET_REAPER = '[worktrees]\nreap_interval = "0"\n'


def git(cwd: Path | str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(IDENTITY, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    result = subprocess.run(
        ["git", "-c", "user.name=Stoker Tests", "-c", "user.email=tests@stoker.invalid",
         "-c", "init.defaultBranch=main", *args],
        cwd=str(cwd), env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"git {' '.join(args)} failed: {result.stderr}"
    return result.stdout


def make_project(base: Path, name: str = "project") -> Path:
    """A repository with one pushed commit and an `origin` (a bare repo) with a HEAD."""
    remote = base / f"{name}-remote.git"
    git(base, "init", "-q", "--bare", "-b", "main", str(remote))
    project = base / name
    git(base, "init", "-q", "-b", "main", str(project))
    (project / "README.md").write_text("hello\n")
    (project / "src.txt").write_text("one\ntwo\n")
    git(project, "add", ".")
    git(project, "commit", "-q", "-m", "initial")
    git(project, "remote", "add", "origin", str(remote))
    git(project, "push", "-q", "-u", "origin", "main")
    git(project, "remote", "set-head", "origin", "main")
    return project


def checkout_state(project: Path) -> tuple[str, dict[str, bytes]]:
    """What the user sees: `git status` and every file outside .git."""
    status = git(project, "status", "--porcelain=v2", "-uall", "--branch")
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(project):
        dirnames[:] = [n for n in dirnames if n != ".git"]
        for name in filenames:
            path = Path(dirpath) / name
            files[str(path.relative_to(project))] = path.read_bytes()
    return status, files


def cli_ok(daemon: DaemonProcess, *args: str) -> str:
    result = daemon.cli(*args)
    assert result.returncode == 0, f"stoker {' '.join(args)}: {result.stderr}"
    return result.stdout


def cli_json(daemon: DaemonProcess, *args: str) -> Any:
    return json.loads(cli_ok(daemon, *args, "--json"))


def new_workspace(daemon: DaemonProcess, project: Path, *extra: str) -> tuple[str, Path]:
    info = cli_json(daemon, "workspace", "new", "--project", str(project), *extra)
    return info["workspace"], Path(info["path"])


async def new_workspaces(daemon: DaemonProcess, project: Path, count: int
                         ) -> list[tuple[str, Path]]:
    """`count` workspaces of `project`, made over one connection: the set-up of the reaper's
    tests (a `stoker` process per workspace cost them seconds; `new_workspace` above and
    tests/integration/test_cli.py drive the command)."""
    async with daemon.client() as client:
        made = []
        for _ in range(count):
            info: m.WorkspaceInfo = await client.request(
                m.WorkspaceNew(id=0, project=str(project)))
            made.append((info.workspace, Path(info.path)))
        return made


async def close_workspaces(daemon: DaemonProcess, *ids: str) -> None:
    """Close the workspaces `ids` over one connection (what `stoker workspace close` asks)."""
    async with daemon.client() as client:
        for ws in ids:
            closed: m.WorkspaceInfo = await client.request(m.CloseWorkspace(id=0, workspace=ws))
            assert closed.state == "orphaned", closed


def workspaces(daemon: DaemonProcess) -> dict[str, Any]:
    listing = cli_json(daemon, "workspace", "ls", "--all")
    return {w["workspace"]: w for w in listing["workspaces"]}


def reap(daemon: DaemonProcess, *extra: str) -> dict[str, dict[str, Any]]:
    """The reap report by path."""
    report = cli_json(daemon, "reap", *extra)
    return {e["path"]: e for e in report["entries"]}


def root_of(daemon: DaemonProcess) -> Path:
    return Path(os.path.realpath(daemon.state_dir / "worktrees"))


async def reload(daemon: DaemonProcess, config: str) -> None:
    daemon.write_config(config)
    async with daemon.client() as client:
        await client.request(m.Reload(id=0))


def worktree_paths(project: Path) -> set[str]:
    out = git(project, "worktree", "list", "--porcelain")
    return {line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")}


# ---------------------------------------------------------------------- sharing


async def test_two_chats_share_a_workspace_and_the_checkout_is_untouched(
        daemon: DaemonProcess) -> None:
    project = make_project(daemon.base)
    head = git(project, "rev-parse", "HEAD").strip()
    before = checkout_state(project)
    ws, path = new_workspace(daemon, project)
    assert str(path).startswith(str(root_of(daemon)) + os.sep)
    async with daemon.client() as client:
        a = await open_chat(client, "a", workspace=ws)
        b = await open_chat(client, "b", workspace=ws)
        assert a.cwd == b.cwd == str(path)
        assert a.workspace == b.workspace == ws
        wrote = await turn(client, "a", "/write notes/hello.txt written by a")
        assert wrote.text.startswith("wrote"), wrote.text
        assert (await turn(client, "b", "/read notes/hello.txt")).text == "written by a"
        assert (await turn(client, "b", "/write src.txt changed by b")).text.startswith("wrote")
        assert (await turn(client, "a", "/read src.txt")).text == "changed by b"
    assert checkout_state(project) == before
    assert not (project / "notes").exists()
    assert git(path, "rev-parse", "--abbrev-ref", "HEAD").strip() == f"stoker/{ws}"
    info = workspaces(daemon)[ws]
    assert info["base"] == head
    assert info["state"] == "active"
    assert sorted(info["chats"]) == ["a", "b"]
    assert str(path) in worktree_paths(project)


def test_send_with_project_makes_a_workspace_unless_the_chat_exists(
        daemon: DaemonProcess) -> None:
    project = make_project(daemon.base)
    first = daemon.cli("send", "--project", str(project), "--chat", "s1", "/write f.txt one")
    assert first.returncode == 0, first.stderr
    assert "workspace:" in first.stderr
    again = daemon.cli("send", "--project", str(project), "--chat", "s1", "/read f.txt")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "one"
    other = daemon.cli("send", "--project", str(project), "/read f.txt")
    assert other.returncode == 0, other.stderr
    assert other.stdout.startswith("error"), other.stdout
    assert len(workspaces(daemon)) == 2
    chats = cli_json(daemon, "ls")["chats"]
    s1 = next(c for c in chats if c["chat"] == "s1")
    assert s1["workspace"] in workspaces(daemon)
    assert not (project / "f.txt").exists()


async def test_close_closes_its_chats_and_a_new_chat_reopens_it(
        daemon: DaemonProcess) -> None:
    project = make_project(daemon.base)
    ws, _ = new_workspace(daemon, project)
    async with daemon.client() as client:
        await open_chat(client, "c1", workspace=ws)
        assert (await turn(client, "c1", "hi")).ended.stop_reason == "end_turn"
        closed: m.WorkspaceInfo = await client.request(m.CloseWorkspace(id=0, workspace=ws))
        assert closed.state == "orphaned"
        assert closed.chats == []
        listing: m.ChatList = await client.request(m.ListChats(id=0, include_closed=True))
        assert [c.closed for c in listing.chats if c.chat == "c1"] == [True]
        await open_chat(client, "c2", workspace=ws)
    info = workspaces(daemon)[ws]
    assert info["state"] == "active"
    assert info["chats"] == ["c2"]


def test_workspace_errors_are_clear(daemon: DaemonProcess) -> None:
    plain = daemon.base / "plain"
    plain.mkdir()
    result = daemon.cli("workspace", "new", "--project", str(plain))
    assert result.returncode == 1
    assert "not a git repository" in result.stderr
    project = make_project(daemon.base)
    (project / "staged.txt").write_text("x\n")
    git(project, "add", "staged.txt")
    result = daemon.cli("workspace", "new", "--project", str(project))
    assert result.returncode == 1
    assert "staged changes" in result.stderr
    git(project, "reset", "-q")
    for branch, message in (("main", "already exists"), ("bad..name", "invalid branch")):
        result = daemon.cli("workspace", "new", "--project", str(project), "--branch", branch)
        assert result.returncode == 1
        assert message in result.stderr, result.stderr
    _, path = new_workspace(daemon, project, "--branch", "feature/x")
    assert git(path, "rev-parse", "--abbrev-ref", "HEAD").strip() == "feature/x"
    result = daemon.cli("workspace", "new", "--project", str(project), "--branch", "feature/x")
    assert "already exists" in result.stderr
    for args in (("diff", "nope"), ("workspace", "close", "nope"),
                 ("workspace", "restore", "nope")):
        result = daemon.cli(*args)
        assert result.returncode == 1
        assert "unknown workspace" in result.stderr
    result = daemon.cli("send", "--project", str(project), "--cwd", str(project), "x")
    assert result.returncode == 2
    assert len(workspaces(daemon)) == 1


# ---------------------------------------------------------------------- diff


async def test_diff_cli_and_the_diff_delta(daemon: DaemonProcess) -> None:
    project = make_project(daemon.base)
    before = checkout_state(project)
    ws, path = new_workspace(daemon, project)
    async with daemon.client() as client:
        await open_chat(client, "d", workspace=ws)
        first = await turn(client, "d", "/write added.txt alpha beta")
        delta = await wait_for_delta(client, lambda e: isinstance(e.body, d.Diff))
        assert delta.turn == first.turn
        assert isinstance(delta.body, d.Diff)
        assert (delta.body.workspace, delta.body.files, delta.body.insertions,
                delta.body.deletions) == (ws, 1, 1, 0)
        assert delta.body.stat == "1 file changed, 1 insertion(+)"
        quiet = await turn(client, "d", "nothing changes")
        third = await turn(client, "d", "/write src.txt replaced")
        delta = await wait_for_delta(client, lambda e: isinstance(e.body, d.Diff))
        assert delta.turn == third.turn
        assert isinstance(delta.body, d.Diff)
        assert (delta.body.files, delta.body.insertions, delta.body.deletions) == (2, 2, 2)
    async with daemon.client() as again:
        diffs = [x.turn for x in await replay(again, "d", timeout=10)
                 if isinstance(x.body, d.Diff)]
    assert diffs == [first.turn, third.turn]
    assert quiet.turn not in diffs
    # Committed, uncommitted and untracked changes all count.
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "agent work")
    (path / "README.md").write_text("hello\nworld\n")
    (path / "later.txt").write_text("untracked\n")
    (path / ".gitignore").write_text("ignored.txt\n")
    (path / "ignored.txt").write_text("not in the diff\n")
    patch = cli_ok(daemon, "diff", ws)
    for name in ("added.txt", "later.txt", "README.md", "src.txt", ".gitignore"):
        assert f"+++ b/{name}" in patch, patch
    assert "ignored.txt\n+++" not in patch
    assert "+world" in patch
    stat = cli_ok(daemon, "diff", ws, "--stat")
    assert "5 files changed" in stat
    data = cli_json(daemon, "diff", ws)
    files = {f["path"]: f for f in data["files"]}
    assert set(files) == {"added.txt", "later.txt", "README.md", "src.txt", ".gitignore"}
    assert files["src.txt"]["deletions"] == 2
    assert data["patch"] == ""  # --json: per file, no patch
    # The worktree's own index is untouched (no intent-to-add entries left behind).
    assert git(path, "status", "--porcelain") == " M README.md\n?? .gitignore\n?? later.txt\n"
    assert checkout_state(project) == before


# ---------------------------------------------------------------------- reaper


async def test_reaper_keeps_what_would_be_lost_and_trashes_the_rest(
        daemon_factory: DaemonFactory) -> None:
    config = QUIET_REAPER + 'reap_grace = "1h"\ntrash_retention = "1h"\n'
    daemon = daemon_factory(config=config)
    daemon.start()
    project = make_project(daemon.base)
    names = ("clean", "dirty", "unpushed", "pushed", "picked")
    made = dict(zip(names, await new_workspaces(daemon, project, len(names)), strict=True))
    ids = {name: ws for name, (ws, _) in made.items()}
    paths = {name: path for name, (_, path) in made.items()}
    # "picked": its commit never left the worktree, but an equivalent patch reached
    # origin's default branch (cherry-picked by someone else): nothing would be lost.
    (paths["picked"] / "picked.txt").write_text("same change\n")
    git(paths["picked"], "add", ".")
    git(paths["picked"], "commit", "-q", "-m", "in the workspace")
    other = daemon.base / "other-clone"
    git(daemon.base, "clone", "-q", str(daemon.base / "project-remote.git"), str(other))
    (other / "picked.txt").write_text("same change\n")
    git(other, "add", ".")
    git(other, "commit", "-q", "-m", "the same change, upstream")
    git(other, "push", "-q", "origin", "main")
    git(project, "fetch", "-q", "origin")
    before = checkout_state(project)
    (paths["dirty"] / "scratch.txt").write_text("uncommitted work\n")
    for name in ("unpushed", "pushed"):
        (paths[name] / f"{name}.txt").write_text("committed work\n")
        git(paths[name], "add", ".")
        git(paths[name], "commit", "-q", "-m", name)
    git(paths["pushed"], "push", "-q", "origin", "HEAD")
    await close_workspaces(daemon, *ids.values())

    inside_grace = reap(daemon)
    for path in paths.values():
        assert (inside_grace[str(path)]["action"], inside_grace[str(path)]["reason"]) == (
            "keep", "grace")
        assert path.is_dir()

    await reload(daemon, QUIET_REAPER + 'reap_grace = "0s"\ntrash_retention = "1h"\n')
    dry = reap(daemon, "--dry-run")
    expected = {"clean": ("delete", "clean"), "pushed": ("delete", "clean"),
                "picked": ("delete", "clean"), "dirty": ("keep", "dirty"),
                "unpushed": ("keep", "unpushed")}
    for name, path in paths.items():
        entry = dry[str(path)]
        assert (entry["action"], entry["reason"]) == expected[name], entry
        assert entry.get("done", False) is False
        assert path.is_dir()

    report = reap(daemon)
    for name, path in paths.items():
        entry = report[str(path)]
        assert (entry["action"], entry["reason"]) == expected[name], entry
        gone = expected[name][0] == "delete"
        assert entry.get("done", False) is gone
        assert path.exists() is not gone
    listed = workspaces(daemon)
    assert listed[ids["clean"]]["state"] == "trashed"
    assert listed[ids["dirty"]]["reason"] == "dirty"
    assert listed[ids["unpushed"]]["reason"] == "unpushed"
    human = cli_ok(daemon, "workspace", "ls")
    assert "dirty" in human
    assert "unpushed" in human
    trash = root_of(daemon) / ".trash" / listed[ids["clean"]]["tombstone"]
    assert (trash / ids["clean"] / "README.md").exists()
    assert str(paths["clean"]) not in worktree_paths(project)
    assert str(paths["dirty"]) in worktree_paths(project)

    # Restore before the purge: files back, git knows the worktree, chats can use it.
    cli_ok(daemon, "workspace", "restore", ids["clean"])
    clean = paths["clean"]
    assert (clean / "README.md").read_text() == "hello\n"
    assert git(clean, "status", "--porcelain") == ""
    assert git(clean, "rev-parse", "--abbrev-ref", "HEAD").strip() == f"stoker/{ids['clean']}"
    assert str(clean) in worktree_paths(project)
    assert workspaces(daemon)[ids["clean"]]["state"] == "active"
    async with daemon.client() as client:
        await open_chat(client, "back", workspace=ids["clean"])
        assert (await turn(client, "back", "/read README.md")).text == "hello\n"

    # Closed and reaped again, then purged after the retention: no restore any more.
    await close_workspaces(daemon, ids["clean"])
    assert reap(daemon)[str(clean)]["done"] is True
    await reload(daemon, QUIET_REAPER + 'reap_grace = "0s"\ntrash_retention = "0s"\n')
    purged = [e for e in reap(daemon).values() if e["action"] == "purge"]
    assert len(purged) == 3
    assert all(e["done"] for e in purged)
    assert not any((root_of(daemon) / ".trash").iterdir())
    result = daemon.cli("workspace", "restore", ids["clean"])
    assert result.returncode == 1
    assert "purged" in result.stderr
    assert workspaces(daemon)[ids["clean"]]["state"] == "purged"
    assert checkout_state(project) == before


async def test_strays_under_the_root_and_symlinks_out_of_it(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=QUIET_REAPER + 'reap_grace = "0s"\n')
    daemon.start()
    project = make_project(daemon.base)
    root = root_of(daemon)
    outside = daemon.base / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("never delete me\n")
    # A worktree the store does not know, a plain directory, two symlinks leading out.
    stray = root / "manual" / "wt"
    stray.parent.mkdir(parents=True)
    git(project, "worktree", "add", "-q", "-b", "manual", str(stray))
    (root / "manual" / "plain").mkdir()
    (root / "manual" / "plain" / "notes.txt").write_text("mine\n")
    (root / "evil").symlink_to(outside)
    (root / "manual" / "evil").symlink_to(outside)
    # A workspace holding an ignored symlink that points out of the root.
    (project / ".git" / "info" / "exclude").write_text("escape\n")
    [(ws, path)] = await new_workspaces(daemon, project, 1)
    (path / "escape").symlink_to(outside)
    await close_workspaces(daemon, ws)

    report = reap(daemon)
    assert report[str(stray)]["action"] == "delete"
    assert report[str(stray)]["done"] is True
    assert report[str(stray)]["workspace"] is None
    assert (report[str(root / "manual" / "plain")]["reason"]) == "not-a-worktree"
    for link in (root / "evil", root / "manual" / "evil"):
        assert (report[str(link)]["action"], report[str(link)]["reason"]) == (
            "keep", "symlink")
    assert report[str(path)]["done"] is True

    # A stray comes back by its tombstone id, as a workspace of its own.
    tomb = report[str(stray)]["tombstone"]
    restored = cli_json(daemon, "workspace", "restore", tomb)
    assert restored["state"] == "active"
    assert git(stray, "rev-parse", "--abbrev-ref", "HEAD").strip() == "manual"
    assert str(stray) in worktree_paths(project)

    await reload(daemon, QUIET_REAPER + 'reap_grace = "1h"\ntrash_retention = "0s"\n')
    purged = [e for e in reap(daemon).values() if e["action"] == "purge"]
    assert [e["done"] for e in purged] == [True]
    assert (outside / "precious.txt").read_text() == "never delete me\n"
    assert (root / "evil").is_symlink()
    assert (root / "manual" / "evil").is_symlink()
    assert (root / "manual" / "plain" / "notes.txt").exists()
    assert stray.is_dir()


def test_a_git_timeout_keeps_the_worktree_and_kills_git(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=QUIET_REAPER + 'reap_grace = "0s"\ngit_timeout = "1s"\n')
    daemon.start()
    project = make_project(daemon.base)
    ws, path = new_workspace(daemon, project)
    cli_ok(daemon, "workspace", "close", ws)
    # `git status` asks the fsmonitor hook first; this one never answers in time. (The
    # daemon's teardown check fails the test if the hook's `sleep` outlives the kill.)
    hook = daemon.base / "slow-fsmonitor"
    hook.write_text("#!/bin/sh\nsleep 60\n")
    hook.chmod(0o755)
    git(path, "config", "core.fsmonitor", str(hook))
    started = time.monotonic()
    entry = reap(daemon)[str(path)]
    assert (entry["action"], entry["reason"]) == ("keep", "timeout")
    assert "did not finish within 1s" in entry["detail"]
    assert time.monotonic() - started < 20
    assert path.is_dir()
    assert workspaces(daemon)[ws]["reason"] == "timeout"


async def test_the_periodic_reaper_runs(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config='[worktrees]\nreap_interval = "100ms"\n'
                                   'reap_grace = "0s"\n')
    daemon.start()
    project = make_project(daemon.base)
    ws, path = new_workspace(daemon, project)
    async with daemon.client() as client:
        await client.request(m.CloseWorkspace(id=0, workspace=ws))
        with trio.fail_after(20):
            while True:
                listing: m.WorkspaceList = await client.request(m.ListWorkspaces(id=0))
                states = {w.workspace: w.state for w in listing.workspaces}
                if states[ws] == "trashed":
                    break
                await trio.sleep(0.05)
    assert not path.exists()


def _tombstone(db: Path, tomb: str, ws: str, path: Path, trash: Path, state: str,
               common_dir: Path, branch: str, head: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO tombstones(id, workspace, path, trash, state, created, common_dir,"
            " branch, head) VALUES (?,?,?,?,?,?,?,?,?)",
            (tomb, ws, str(path), str(trash), state, time.time(), str(common_dir), branch,
             head))
        if state == "purging":
            conn.execute("UPDATE workspaces SET state='trashed', tombstone=? WHERE id=?",
                         (tomb, ws))


async def test_interrupted_deletes_finish_at_startup(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=QUIET_REAPER + 'reap_grace = "0s"\n')
    daemon.start()
    project = make_project(daemon.base)
    made = await new_workspaces(daemon, project, 3)
    await close_workspaces(daemon, *(ws for ws, _ in made))
    assert daemon.stop() == 0
    root = root_of(daemon)
    head = git(project, "rev-parse", "HEAD").strip()
    common = project / ".git"
    db = daemon.state_dir / "stoker.db"
    (moved_ws, moved_path), (unmoved_ws, unmoved_path), (purging_ws, purging_path) = made
    # 1. The rename into the trash happened, the daemon died before recording it.
    trash = root / ".trash" / "tmoved00001" / moved_ws
    trash.parent.mkdir(parents=True)
    os.rename(moved_path, trash)
    _tombstone(db, "tmoved00001", moved_ws, moved_path, trash, "moving", common,
               f"stoker/{moved_ws}", head)
    # 2. Journaled, but the daemon died before the rename.
    _tombstone(db, "tunmoved001", unmoved_ws, unmoved_path,
               root / ".trash" / "tunmoved001" / unmoved_ws, "moving", common,
               f"stoker/{unmoved_ws}", head)
    # 3. A purge that stopped half way.
    half = root / ".trash" / "tpurging001" / purging_ws
    half.parent.mkdir(parents=True)
    os.rename(purging_path, half)
    (half / "README.md").unlink()
    _tombstone(db, "tpurging001", purging_ws, purging_path, half, "purging", common,
               f"stoker/{purging_ws}", head)

    daemon.start()
    listed = workspaces(daemon)
    assert listed[moved_ws]["state"] == "trashed"
    assert listed[moved_ws]["tombstone"] == "tmoved00001"
    assert listed[unmoved_ws]["state"] == "trashed"
    assert listed[unmoved_ws]["tombstone"] not in (None, "tunmoved001")
    assert not unmoved_path.exists()
    assert listed[purging_ws]["state"] == "purged"
    assert not half.parent.exists()
    remaining = worktree_paths(project)
    assert str(moved_path) not in remaining
    assert str(unmoved_path) not in remaining
    cli_ok(daemon, "workspace", "restore", moved_ws)
    assert (moved_path / "README.md").read_text() == "hello\n"
    assert git(moved_path, "status", "--porcelain") == ""


async def test_same_size_rewrite_within_the_same_second_is_seen(daemon: DaemonProcess) -> None:
    """Git trusts stat data (seconds) unless the index looks "racy"; the diff works on a copy
    of the index, which must keep the original's mtime or this edit is invisible."""
    project = make_project(daemon.base)
    ws, _path = new_workspace(daemon, project)
    async with daemon.client() as client:
        await open_chat(client, "racy", workspace=ws)
        # src.txt is "one\ntwo\n" (8 bytes) from the checkout a moment ago.
        await turn(client, "racy", "/write src.txt replaced")
        delta = await wait_for_delta(client, lambda e: isinstance(e.body, d.Diff))
        assert isinstance(delta.body, d.Diff)
        assert (delta.body.files, delta.body.insertions, delta.body.deletions) == (1, 1, 2)

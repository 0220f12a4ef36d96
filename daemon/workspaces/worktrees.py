"""Git operations on projects and worktrees, through a `WorktreeHost`.

Each function is one meaningful step (check a project, add a worktree, preflight it for the
reaper, diff it, re-register a restored one) built from argv git calls. They hold no state;
the workspace service (`workspaces.py`) decides when to call them and records the results.

Nothing here writes to the user's checkout: worktrees are added from the project's object
store, diffs run against a scratch copy of the *worktree's* index, and status checks take no
locks (`GIT_OPTIONAL_LOCKS=0`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass

import trio

from daemon.errors import GitError
from daemon.workspaces.git import (
    FileChange,
    GitFailed,
    GitTimeout,
    parse_cherry,
    parse_lines,
    parse_numstat,
    status_is_dirty,
)
from daemon.workspaces.hosts import WorktreeHost
from daemon.workspaces.reaping import Preflight, has_unpushed

UNPUSHED_SCAN_LIMIT = 2000
"""At most this many candidate commits are examined; more counts as unpushed (fail closed)."""

DIFF_FLAGS = ("--no-ext-diff", "--no-textconv", "--no-renames", "--no-color")


@dataclass(frozen=True, slots=True)
class Project:
    toplevel: str
    head: str
    common_dir: str


async def check_project(host: WorktreeHost, path: str, *, timeout: float) -> Project:
    """The repository at `path`, ready to branch from: a work tree with commits and nothing
    staged. Raises `GitError` with a message a user can act on."""
    info = await host.info(path)
    if info.kind == "missing":
        raise GitError(f"project directory does not exist: {path}")
    if info.kind not in ("dir", "symlink"):
        raise GitError(f"not a directory: {path}")
    inside = await host.git(["rev-parse", "--is-inside-work-tree"], cwd=path,
                            timeout=timeout, check=False)
    if not inside.ok or inside.text.strip() != "true":
        if "not a git repository" in inside.stderr or not inside.ok:
            raise GitError(f"not a git repository: {path}")
        raise GitError(f"not a git work tree (a bare repository?): {path}")
    top = await host.git(["rev-parse", "--show-toplevel"], cwd=path, timeout=timeout)
    toplevel = top.text.strip()
    head = await host.git(["rev-parse", "--verify", "-q", "HEAD^{commit}"], cwd=toplevel,
                          timeout=timeout, check=False)
    if not head.ok:
        raise GitError(f"{toplevel} has no commits yet: commit something first")
    staged = await host.git(["diff", "--cached", "--quiet", "--no-ext-diff"], cwd=toplevel,
                            timeout=timeout, check=False)
    if staged.returncode == 1:
        raise GitError(f"the index of {toplevel} has staged changes: commit or unstage them "
                       "first (a workspace starts from HEAD and would not include them)")
    if staged.returncode != 0:
        raise GitError(f"cannot check the index of {toplevel}: {staged.stderr}")
    common = await common_dir_of(host, toplevel, timeout=timeout)
    return Project(toplevel=toplevel, head=head.text.strip(), common_dir=common)


async def check_branch(host: WorktreeHost, project: Project, branch: str, *,
                       timeout: float) -> None:
    valid = await host.git(["check-ref-format", "--branch", branch], cwd=project.toplevel,
                           timeout=timeout, check=False)
    if not valid.ok or branch.startswith("-"):
        raise GitError(f"invalid branch name {branch!r}")
    exists = await host.git(["show-ref", "--verify", "--quiet", f"refs/heads/{branch}"],
                            cwd=project.toplevel, timeout=timeout, check=False)
    if exists.ok:
        raise GitError(f"branch {branch} already exists in {project.toplevel}")


async def add_worktree(host: WorktreeHost, project: Project, path: str, branch: str, *,
                       timeout: float) -> None:
    """`git worktree add -b BRANCH PATH BASE`, from the commit we recorded (HEAD may move)."""
    try:
        await host.git(["worktree", "add", "--quiet", "-b", branch, path, project.head],
                       cwd=project.toplevel, timeout=timeout)
    except GitFailed as exc:
        if "already exists" in exc.stderr and "branch" in exc.stderr:
            raise GitError(f"branch {branch} already exists in {project.toplevel}") from None
        raise


async def head_of(host: WorktreeHost, path: str, *, timeout: float) -> str:
    result = await host.git(["rev-parse", "--verify", "-q", "HEAD"], cwd=path,
                            timeout=timeout, check=False)
    return result.text.strip() if result.ok else ""


async def common_dir_of(host: WorktreeHost, path: str, *, timeout: float) -> str:
    result = await host.git(["rev-parse", "--path-format=absolute", "--git-common-dir"],
                            cwd=path, timeout=timeout)
    return result.text.strip()


async def reference_branch(host: WorktreeHost, path: str, common_dir: str, *,
                           timeout: float) -> str | None:
    """What "the upstream/default branch" is for this worktree: its branch's upstream, else
    the remote's default (`origin/HEAD`), else the branch checked out in the project's main
    work tree. None when there is none (then every local commit counts as unpushed)."""
    upstream = await host.git(["rev-parse", "--verify", "-q", "--symbolic-full-name",
                               "@{upstream}"], cwd=path, timeout=timeout, check=False)
    if upstream.ok and upstream.text.strip():
        return upstream.text.strip()
    origin = await host.git(["rev-parse", "--verify", "-q", "refs/remotes/origin/HEAD"],
                            cwd=path, timeout=timeout, check=False)
    if origin.ok:
        return "refs/remotes/origin/HEAD"
    main = await host.git([f"--git-dir={common_dir}", "symbolic-ref", "-q", "HEAD"],
                          cwd=path, timeout=timeout, check=False)
    ref = main.text.strip()
    if main.ok and ref:
        exists = await host.git(["rev-parse", "--verify", "-q", ref], cwd=path,
                                timeout=timeout, check=False)
        own = await host.git(["symbolic-ref", "-q", "HEAD"], cwd=path, timeout=timeout,
                             check=False)
        if exists.ok and own.text.strip() != ref:
            return ref
    return None


@dataclass(frozen=True, slots=True)
class PreflightResult:
    facts: Preflight
    common_dir: str = ""
    head: str = ""
    branch: str = ""


async def preflight(host: WorktreeHost, path: str, *, timeout: float) -> PreflightResult:
    """Gather what the reaper needs to know from git. Never raises for git trouble: a
    timeout or a failure is a fact (which keeps the worktree)."""
    dotgit = await host.info(os.path.join(path, ".git"))
    if dotgit.kind != "file":
        return PreflightResult(Preflight(is_worktree=False))
    try:
        common = await common_dir_of(host, path, timeout=timeout)
        head = await head_of(host, path, timeout=timeout)
        symbolic = await host.git(["symbolic-ref", "-q", "--short", "HEAD"], cwd=path,
                                  timeout=timeout, check=False)
        branch = symbolic.text.strip() if symbolic.ok else ""
        status = await host.git(["status", "--porcelain=v2", "-uall",
                                 "--ignore-submodules=none"], cwd=path, timeout=timeout)
        if status_is_dirty(status.stdout):
            return PreflightResult(Preflight(is_worktree=True, dirty=True), common, head,
                                   branch)
        if not head:
            raise GitError(f"{path} has no valid HEAD")
        ref = await reference_branch(host, path, common, timeout=timeout)
        listed = await host.git(["rev-list", f"--max-count={UNPUSHED_SCAN_LIMIT}", "HEAD",
                                 "--not", "--remotes", *([ref] if ref else [])],
                                cwd=path, timeout=timeout)
        candidates = parse_lines(listed.stdout)
        capped = len(candidates) >= UNPUSHED_SCAN_LIMIT
        plus: frozenset[str] | None = None
        if candidates and ref is not None and not capped:
            cherry = await host.git(["cherry", ref, "HEAD"], cwd=path, timeout=timeout)
            plus, _ = parse_cherry(cherry.stdout)
        unpushed = has_unpushed(candidates, plus, capped=capped)
        return PreflightResult(Preflight(is_worktree=True, dirty=False, unpushed=unpushed),
                               common, head, branch)
    except GitTimeout as exc:
        return PreflightResult(Preflight(is_worktree=True, timed_out=True,
                                         error=exc.message))
    except GitError as exc:
        return PreflightResult(Preflight(is_worktree=True, error=exc.message))


async def prune(host: WorktreeHost, common_dir: str, *, timeout: float) -> None:
    await host.git([f"--git-dir={common_dir}", "worktree", "prune"], cwd=None,
                   timeout=timeout)


# ---------------------------------------------------------------------- diff


@dataclass(frozen=True, slots=True)
class DiffData:
    files: list[FileChange]
    patch: bytes
    stat: str
    fingerprint: str


def fingerprint(numstat: bytes, patch: bytes) -> str:
    """Identifies a change set: equal fingerprints, equal diffs (blob ids are in the patch
    thanks to `--full-index`, so even binary edits count)."""
    digest = hashlib.sha256()
    digest.update(numstat)
    digest.update(b"\0\0")
    digest.update(patch)
    return digest.hexdigest()


EMPTY_FINGERPRINT = fingerprint(b"", b"")


async def diff(host: WorktreeHost, path: str, base: str, *, scratch_dir: str,
               timeout: float, want_patch: bool = True, want_stat: bool = False) -> DiffData:
    """Everything that changed in the worktree since `base`: commits, staged and unstaged
    edits, and untracked (not ignored) files.

    Untracked files only show in a diff once git knows their paths, so they are added
    "intent to add" to a scratch copy of the worktree's index (`GIT_INDEX_FILE`); the real
    index, and so the agent's view of `git status`, is never touched."""
    index = await host.git(["rev-parse", "--path-format=absolute", "--git-path", "index"],
                           cwd=path, timeout=timeout)
    await host.make_dirs(scratch_dir)
    scratch = os.path.join(scratch_dir, f"diff-{secrets.token_hex(6)}.index")
    env = {"GIT_INDEX_FILE": scratch}
    try:
        real_index = index.text.strip()
        if (await host.info(real_index)).kind == "file":
            await host.copy_file(real_index, scratch)
        else:
            await host.git(["read-tree", "HEAD"], cwd=path, timeout=timeout, env=env)
        await host.git(["add", "--intent-to-add", "--all", "--", "."], cwd=path,
                       timeout=timeout, env=env)
        numstat = await host.git(["diff", *DIFF_FLAGS, "--numstat", "-z", base, "--"],
                                 cwd=path, timeout=timeout, env=env)
        patch = await host.git(["diff", *DIFF_FLAGS, "--full-index", "--binary", base, "--"],
                               cwd=path, timeout=timeout, env=env)
        stat = ""
        if want_stat:
            stat = (await host.git(["diff", *DIFF_FLAGS, "--stat=100", base, "--"],
                                   cwd=path, timeout=timeout, env=env)).text
    finally:
        with trio.CancelScope(shield=True):
            await host.remove_file(scratch)
    files = parse_numstat(numstat.stdout)
    return DiffData(files=files, patch=patch.stdout if want_patch else b"", stat=stat,
                    fingerprint=fingerprint(numstat.stdout, patch.stdout))


# ---------------------------------------------------------------------- restore


async def reregister(host: WorktreeHost, path: str, *, common_dir: str, branch: str,
                     head: str, scratch_dir: str, root: str, timeout: float) -> None:
    """Make git know a worktree directory again after it came back from the trash.

    `git worktree prune` removed its administrative directory, so `repair` alone cannot
    help: a fresh one is made with `worktree add --no-checkout` at a scratch path, its
    `.git` file is moved into the restored directory, `repair` points the new admin entry
    at the real path, and `reset` rebuilds the index from HEAD without touching a file.
    When the admin entry survived (prune had not run yet), `repair` is enough."""
    probe = await host.git(["rev-parse", "--git-dir"], cwd=path, timeout=timeout,
                           check=False)
    if probe.ok:
        await host.git([f"--git-dir={common_dir}", "worktree", "repair", path], cwd=None,
                       timeout=timeout)
        return
    target = ["--detach", head]
    if branch:
        tip = await host.git([f"--git-dir={common_dir}", "rev-parse", "--verify", "-q",
                              f"refs/heads/{branch}"], cwd=None, timeout=timeout,
                             check=False)
        if tip.ok and tip.text.strip() == head:
            target = [branch]
    if not head:
        raise GitError(f"cannot re-register {path}: its HEAD commit is unknown")
    temp = os.path.join(scratch_dir, os.path.basename(path))
    await host.make_dirs(scratch_dir)
    await host.git([f"--git-dir={common_dir}", "worktree", "add", "--quiet", "--no-checkout",
                    temp, *target], cwd=None, timeout=timeout)
    await host.remove_file(os.path.join(path, ".git"))
    await host.move(os.path.join(temp, ".git"), os.path.join(path, ".git"), root=root)
    await host.remove_empty_dir(temp, root=root)
    await host.git([f"--git-dir={common_dir}", "worktree", "repair", path], cwd=None,
                   timeout=timeout)
    await host.git(["reset", "--quiet"], cwd=path, timeout=timeout)

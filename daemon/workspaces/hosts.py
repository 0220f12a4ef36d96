"""The computer a workspace lives on, as the worktree code sees it: git plus the handful of
filesystem operations the reaper needs.

The workspace service never calls `os` or `subprocess` for worktrees directly; it asks a
`WorktreeHost`. `LocalHost` is this machine. An SSH subsystem can register a remote host
(`WorkspaceService.hosts[computer] = ...`) so that a remote computer's
worktrees are created, diffed and reaped by exactly the same code.

The destructive operations (`move`, `remove_tree`) take the worktree root and re-check
containment themselves, after the caller already did: a host must never delete or move
anything whose real path is not strictly under the real path of that root, and never
follow a symlink while doing so. That guard sits as close to the syscall as possible so
that no future caller can skip it.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from daemon.errors import StokerError
from daemon.workspaces.git import GitResult, run_git
from daemon.workspaces.reaping import PathKind, within


class UnsafePath(StokerError):
    """A destructive operation was asked for a path outside the worktree root (a bug or
    tampering): refused."""


@dataclass(frozen=True, slots=True)
class PathInfo:
    kind: PathKind
    mtime: float | None = None


class WorktreeHost(Protocol):
    computer: str | None
    """None for this machine, else the name of a `[computers.NAME]` section."""
    root: str | None
    """The worktree root on that computer; None: `[worktrees] root` of the config."""

    async def git(self, args: Sequence[str], *, cwd: str | None, timeout: float,
                  env: Mapping[str, str] | None = None, check: bool = True) -> GitResult: ...

    async def realpath(self, path: str) -> str: ...

    async def info(self, path: str) -> PathInfo:
        """lstat: never follows a final symlink."""
        ...

    async def list_dir(self, path: str) -> list[str]:
        """Entry names; [] when the directory does not exist."""
        ...

    async def make_dirs(self, path: str) -> None:
        """mkdir -p with mode 0700."""
        ...

    async def move(self, src: str, dst: str, *, root: str) -> None:
        """Rename `src` to `dst` (which must not exist), both strictly under `root`."""
        ...

    async def remove_tree(self, path: str, *, root: str) -> None:
        """Delete a directory tree strictly under `root`, never following symlinks."""
        ...

    async def remove_empty_dir(self, path: str, *, root: str) -> bool: ...

    async def copy_file(self, src: str, dst: str) -> None:
        """Copy content *and timestamps*. Git's "racy index" check compares file times with
        the index file's own mtime: a copy of an index with a fresh mtime makes a same-size
        edit made in the same second as the last refresh look unchanged."""
        ...

    async def remove_file(self, path: str) -> None: ...

    async def write_file(self, path: str, data: bytes) -> None: ...


class LocalHost:
    """This machine."""

    computer: str | None = None
    root: str | None = None

    async def git(self, args: Sequence[str], *, cwd: str | None, timeout: float,
                  env: Mapping[str, str] | None = None, check: bool = True) -> GitResult:
        return await run_git(args, cwd=cwd, timeout=timeout, env=env, check=check)

    async def realpath(self, path: str) -> str:
        return await trio.to_thread.run_sync(os.path.realpath, path)

    async def info(self, path: str) -> PathInfo:
        return await trio.to_thread.run_sync(_info, path)

    async def list_dir(self, path: str) -> list[str]:
        def run() -> list[str]:
            try:
                return sorted(os.listdir(path))
            except (FileNotFoundError, NotADirectoryError):
                return []

        return await trio.to_thread.run_sync(run)

    async def make_dirs(self, path: str) -> None:
        await trio.to_thread.run_sync(lambda: os.makedirs(path, mode=0o700, exist_ok=True))

    async def move(self, src: str, dst: str, *, root: str) -> None:
        await trio.to_thread.run_sync(_move, src, dst, root)

    async def remove_tree(self, path: str, *, root: str) -> None:
        await trio.to_thread.run_sync(_remove_tree, path, root)

    async def remove_empty_dir(self, path: str, *, root: str) -> bool:
        def run() -> bool:
            _check_inside(path, root)
            try:
                os.rmdir(path)
            except OSError:
                return False
            return True

        return await trio.to_thread.run_sync(run)

    async def copy_file(self, src: str, dst: str) -> None:
        await trio.to_thread.run_sync(shutil.copy2, src, dst)

    async def remove_file(self, path: str) -> None:
        def run() -> None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

        await trio.to_thread.run_sync(run)

    async def write_file(self, path: str, data: bytes) -> None:
        def run() -> None:
            with open(path, "wb") as f:
                f.write(data)

        await trio.to_thread.run_sync(run)


def _info(path: str) -> PathInfo:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return PathInfo("missing")
    except NotADirectoryError:
        return PathInfo("missing")
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        kind: PathKind = "symlink"
    elif stat.S_ISDIR(mode):
        kind = "dir"
    elif stat.S_ISREG(mode):
        kind = "file"
    else:
        kind = "other"
    return PathInfo(kind, st.st_mtime)


def _check_inside(path: str, root: str) -> str:
    """The real path of `path` when it is strictly under the real root and not itself a
    symlink; raises `UnsafePath` otherwise."""
    if not os.path.isabs(path):
        raise UnsafePath(f"refusing a relative path: {path!r}")
    real_root = os.path.realpath(root)
    if os.path.islink(path):
        raise UnsafePath(f"refusing to touch a symlink: {path}")
    real = os.path.realpath(path)
    if not within(real, real_root):
        raise UnsafePath(f"refusing {path}: its real path {real} is not under the worktree "
                         f"root {real_root}")
    return real


def _move(src: str, dst: str, root: str) -> None:
    real_src = _check_inside(src, root)
    parent = os.path.dirname(os.path.abspath(dst))
    real_dst = os.path.join(os.path.realpath(parent), os.path.basename(dst))
    if not within(real_dst, os.path.realpath(root)):
        raise UnsafePath(f"refusing to move to {dst}: not under the worktree root")
    if os.path.lexists(real_dst):
        raise FileExistsError(errno.EEXIST, "destination exists", dst)
    # rename(2) is atomic on one filesystem, which a crash must leave either before or
    # after, never half-copied; across filesystems it fails (EXDEV) and nothing moves.
    os.rename(real_src, real_dst)


def _remove_tree(path: str, root: str) -> None:
    real = _check_inside(path, root)
    if not os.path.lexists(real):
        return
    # rmtree unlinks symlinks found inside the tree without following them, and refuses a
    # symlinked top directory (checked above as well).
    shutil.rmtree(real)

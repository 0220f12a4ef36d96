"""`SshWorktreeHost`: worktrees on a remote computer, for the workspace service and reaper.

Registered in the workspace service's `hosts[NAME]` (by `SshService.attach_workspaces`), it
lets the unchanged worktree code create, diff, judge and soft-delete worktrees over SSH. The
worktree root is `<workdir>/worktrees` on that computer.

git runs through the executor's launcher (argv only, in a process group of its own, killed
whole on timeout) with the same fixed environment as locally (`GIT_TERMINAL_PROMPT=0`,
`LC_ALL=C`, `GIT_OPTIONAL_LOCKS=0`, no `GIT_DIR`-style redirections). File operations use
SFTP; `remove_tree` and `copy_file` use `rm -rf` and `cp -p` (which never follow symlinks
inside the tree, and keep timestamps) after the same containment checks as `LocalHost`,
made with the remote realpath.
"""

from __future__ import annotations

import posixpath
import secrets
from collections.abc import Mapping, Sequence

import trio

from daemon.errors import GitError
from daemon.execution.local import ACTOR_VAR, INSTANCE_VAR, SpawnError
from daemon.ssh.computer import Computer
from daemon.ssh.executor import SshExecutor
from daemon.ssh.login import ComputerError
from daemon.ssh.sftp import RemoteFs, kind_of
from daemon.workspaces.git import (
    _REDIRECTING,
    DEFAULT_CONFIG,
    FIXED_ENV,
    GitResult,
    GitTimeout,
    checked,
)
from daemon.workspaces.git import describe as describe_git
from daemon.workspaces.hosts import PathInfo, UnsafePath
from daemon.workspaces.reaping import within

FILE_OP_TIMEOUT = 300.0


class SshWorktreeHost:
    """A `WorktreeHost` for one remote computer."""

    def __init__(self, executor: SshExecutor) -> None:
        self._executor = executor
        self._computer: Computer = executor.computer
        self._fs = RemoteFs(executor.computer)
        self.computer: str | None = executor.name
        self.root: str | None = posixpath.join(self._computer.config.workdir, "worktrees")

    # ------------------------------------------------------------------ running things

    async def _run(self, argv: Sequence[str], *, cwd: str, timeout: float,
                   env: Mapping[str, str], unset: Sequence[str] = ()) -> GitResult:
        """Run `argv` there; (status, stdout, stderr). `GitTimeout` after `timeout` (the
        whole remote group is killed), `GitError` when it cannot start."""
        actor = f"{self._executor.instance}:host:{secrets.token_hex(4)}"
        try:
            proc = await self._executor.start(
                argv, env={**env, INSTANCE_VAR: self._executor.instance, ACTOR_VAR: actor},
                cwd=cwd, actor=actor, unset=unset)
        except SpawnError as exc:
            text = str(exc)
            if "working directory" in text:
                raise GitError(f"directory does not exist on computer "
                               f"{self.computer!r}: {cwd}") from None
            if "command not found" in text:
                raise GitError(f"{argv[0]} is not installed on computer "
                               f"{self.computer!r}") from None
            raise GitError(text) from None
        out: list[bytes] = []
        err: list[bytes] = []

        async def drain(stream: trio.abc.ReceiveStream, into: list[bytes]) -> None:
            while data := await stream.receive_some(65536):
                into.append(bytes(data))

        finished = False
        try:
            with trio.move_on_after(timeout):
                await proc.stdin.aclose()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(drain, proc.stdout, out)
                    nursery.start_soon(drain, proc.stderr, err)
                status = await proc.wait()
                finished = True
        finally:
            if not finished:
                proc.kill()
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await proc.wait()
        if not finished:
            raise GitTimeout(f"{describe_git(list(argv))} did not finish within {timeout:g}s "
                             f"on computer {self.computer!r}; it was stopped")
        if status.code is None:
            raise GitError(f"{describe_git(list(argv))} on computer {self.computer!r} "
                           f"{status.describe()}")
        stderr = b"".join(err).decode("utf-8", errors="replace").strip()
        return GitResult(status.code, b"".join(out), stderr)

    async def git(self, args: Sequence[str], *, cwd: str | None, timeout: float,
                  env: Mapping[str, str] | None = None, check: bool = True) -> GitResult:
        argv = ["git", *DEFAULT_CONFIG, *args]
        result = await self._run(argv, cwd=cwd or "/", timeout=timeout,
                                 env={**FIXED_ENV, **(env or {})}, unset=_REDIRECTING)
        return checked(argv, result) if check else result

    async def _tool(self, argv: Sequence[str]) -> None:
        result = await self._run(argv, cwd="/", timeout=FILE_OP_TIMEOUT, env={"LC_ALL": "C"})
        if result.returncode != 0:
            raise OSError(0, f"{argv[0]} failed on computer {self.computer!r}: "
                          f"{result.stderr or result.returncode}")

    # ------------------------------------------------------------------ file system

    async def realpath(self, path: str) -> str:
        try:
            return await self._fs.realpath(await self._expanded(path))
        except ComputerError as exc:
            raise GitError(str(exc)) from None

    async def _expanded(self, path: str) -> str:
        if path == "~" or path.startswith("~/"):
            await self._fs.ready()
        return self._fs.expand(path)

    async def info(self, path: str) -> PathInfo:
        try:
            attrs = await self._fs.lstat(await self._expanded(path))
        except ComputerError as exc:
            raise GitError(str(exc)) from None
        kind = kind_of(attrs)
        if kind == "missing":
            return PathInfo("missing")
        mtime = getattr(attrs, "mtime", None)
        return PathInfo(kind, float(mtime) if mtime is not None else None)

    async def list_dir(self, path: str) -> list[str]:
        try:
            return await self._fs.listdir(await self._expanded(path))
        except ComputerError as exc:
            raise GitError(str(exc)) from None

    async def make_dirs(self, path: str) -> None:
        try:
            await self._fs.makedirs(await self._expanded(path), mode=0o700)
        except ComputerError as exc:
            raise GitError(str(exc)) from None

    async def _inside(self, path: str, root: str) -> str:
        """The real path of `path` when it is strictly under the real root and not itself
        a symlink; `UnsafePath` otherwise (checked on the remote host)."""
        if not posixpath.isabs(path):
            raise UnsafePath(f"refusing a relative path: {path!r}")
        real_root = await self.realpath(root)
        if (await self.info(path)).kind == "symlink":
            raise UnsafePath(f"refusing to touch a symlink: {path}")
        real = await self.realpath(path)
        if not within(real, real_root):
            raise UnsafePath(f"refusing {path}: its real path {real} is not under the "
                             f"worktree root {real_root}")
        return real

    async def move(self, src: str, dst: str, *, root: str) -> None:
        real_src = await self._inside(src, root)
        parent = posixpath.dirname(posixpath.normpath(dst))
        real_dst = posixpath.join(await self.realpath(parent), posixpath.basename(dst))
        if not within(real_dst, await self.realpath(root)):
            raise UnsafePath(f"refusing to move to {dst}: not under the worktree root")
        if (await self.info(real_dst)).kind != "missing":
            raise FileExistsError(17, "destination exists", dst)
        try:
            await self._fs.rename(real_src, real_dst)
        except ComputerError as exc:
            raise GitError(str(exc)) from None

    async def remove_tree(self, path: str, *, root: str) -> None:
        real = await self._inside(path, root)
        if (await self.info(real)).kind == "missing":
            return
        await self._tool(["rm", "-rf", "--", real])

    async def remove_empty_dir(self, path: str, *, root: str) -> bool:
        real = await self._inside(path, root)
        try:
            await self._fs.rmdir(real)
        except (OSError, ComputerError):
            return False
        return True

    async def copy_file(self, src: str, dst: str) -> None:
        await self._tool(["cp", "-p", "--", src, dst])

    async def remove_file(self, path: str) -> None:
        try:
            await self._fs.remove(path)
        except FileNotFoundError:
            pass
        except ComputerError as exc:
            raise GitError(str(exc)) from None

    async def write_file(self, path: str, data: bytes) -> None:
        try:
            await self._fs.write(path, data)
        except ComputerError as exc:
            raise GitError(str(exc)) from None

"""An agent's `fs/*` requests on a remote computer: SFTP, confined like `daemon/fs.py`.

The rules are the local ones, evaluated on the remote host: every path is resolved there
(SFTP `realpath` of the deepest existing ancestor, the missing rest re-attached) and refused
unless it lies inside the real root; a write creates its parent directories, re-checks them,
and refuses to write through a final symlink. SFTP has no `O_NOFOLLOW`, so a symlink swapped
in between the check and the open is the one race the local implementation closes and this
one cannot (docs/REMOTE.md).

A computer that cannot be reached is a `FileProblem` for reads and writes (the agent gets an
error naming it) and a `ComputerError` for `directory` (whose callers treat it as a failed
start or a refused request). As locally, only regular files are read or written: a FIFO or a
device is refused before it is opened (opening it could block the remote SFTP server).
"""

from __future__ import annotations

import posixpath

from daemon.execution.fs import (
    MAX_READ,
    AccessDenied,
    FileProblem,
    ancestry,
    check_path,
    reattach,
    refuse_irregular,
    require_within,
    text_slice,
)
from daemon.ssh.computer import Computer
from daemon.ssh.login import ComputerError
from daemon.ssh.sftp import RemoteFs, kind_of


class SftpFiles:
    """`Files` for one working directory on a remote computer."""

    max_read = MAX_READ

    def __init__(self, computer: Computer, root: str) -> None:
        self.computer = computer
        self.root = root
        self._fs = RemoteFs(computer)
        self._real_root: str | None = None

    async def _root(self) -> str:
        if self._real_root is None:
            await self._fs.ready()
            self._real_root = await self._fs.realpath(self.root)
        return self._real_root

    async def confine(self, path: str) -> str:
        """The real remote path `path` refers to, if it is inside the real root: the walk of
        `daemon/fs.py`'s `confine`, with SFTP `lstat` and `realpath` run on the remote host."""
        check_path(path)
        root = await self._root()
        for split in ancestry(root, path):
            if await self._fs.lstat(split.head) is not None:
                break
        return reattach(root, await self._fs.realpath(split.head), split.tail, path, self.root)

    async def read_text(self, path: str, line: int | None, limit: int | None) -> str:
        try:
            real = await self.confine(path)
            attrs = await self._fs.stat(real)
            kind = kind_of(attrs)
            if kind == "missing":
                raise FileProblem(f"{path}: no such file")
            if kind == "dir":
                raise FileProblem(f"{path}: is a directory")
            if kind == "other":
                # A FIFO would block the remote SFTP server (and with it every request on
                # this computer's connection) as it blocks a local thread.
                refuse_irregular(path, (attrs.permissions or 0) if attrs is not None else 0)
            if attrs is not None and (attrs.size or 0) > self.max_read:
                raise FileProblem(f"{path}: larger than {self.max_read} bytes")
            data = await self._fs.read(real)
        except ComputerError as exc:
            raise FileProblem(str(exc)) from None
        except FileNotFoundError:
            raise FileProblem(f"{path}: no such file") from None
        except OSError as exc:
            raise FileProblem(f"{path}: {exc.strerror or exc}") from None
        return text_slice(path, data, line, limit)

    async def write_text(self, path: str, content: str) -> None:
        try:
            real = await self.confine(path)
            parent = posixpath.dirname(real)
            await self._fs.makedirs(parent, mode=0o755)
            # Re-check after creating directories: a racing symlink must not redirect us.
            require_within(await self._root(), await self._fs.realpath(parent), path,
                           self.root)
            attrs = await self._fs.lstat(real)
            kind = kind_of(attrs)
            if kind == "symlink":
                raise AccessDenied(f"{path} is a symlink; refusing to follow it")
            if kind == "dir":
                raise FileProblem(f"{path}: is a directory")
            if kind == "other":
                refuse_irregular(path, (attrs.permissions or 0) if attrs is not None else 0)
            await self._fs.write(real, content.encode("utf-8"))
        except ComputerError as exc:
            raise FileProblem(str(exc)) from None
        except OSError as exc:
            raise FileProblem(f"{path}: {exc.strerror or exc}") from None

    async def directory(self, path: str | None) -> str:
        try:
            real = await self.confine(path) if path else await self._root()
            kind = kind_of(await self._fs.stat(real))
        except OSError as exc:
            raise AccessDenied(f"{path or self.root}: {exc.strerror or exc}") from None
        if kind != "dir":
            raise AccessDenied(f"{path or self.root} is not a directory on computer "
                               f"{self.computer.name!r}")
        return real

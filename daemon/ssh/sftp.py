"""File operations on a remote computer over its SFTP channel, with Python's own errors.

SFTP answers with status codes; callers here (agent file access, the worktree host) are
written like their local twins, so the mapping is done once: no such file ->
`FileNotFoundError`, permission -> `PermissionError`, any other refusal -> `OSError`, and a
dead connection -> `ComputerError` (naming the computer). Paths are POSIX; `~` and `~/x`
mean the remote login directory.
"""

from __future__ import annotations

import posixpath
import stat
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from daemon.ssh.bridge import BridgeClosed
from daemon.ssh.computer import Computer
from daemon.ssh.login import ComputerError, describe_error
from daemon.workspaces.reaping import PathKind

T = TypeVar("T")


class RemoteFs:
    def __init__(self, computer: Computer) -> None:
        self.computer = computer

    async def _op(self, make: Callable[[Any], Awaitable[T]], path: str) -> T:
        import asyncssh

        computer = self.computer
        client = await computer.sftp()
        try:
            return await computer.bridge.call(lambda: make(client))
        except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
            raise FileNotFoundError(2, "no such file or directory", path) from None
        except asyncssh.SFTPPermissionDenied:
            raise PermissionError(13, "permission denied", path) from None
        except asyncssh.SFTPConnectionLost as exc:
            raise ComputerError(f"{computer.label}: {describe_error(exc)}") from None
        except asyncssh.SFTPError as exc:
            raise OSError(0, describe_error(exc), path) from None
        except (asyncssh.Error, BridgeClosed, EOFError) as exc:
            raise ComputerError(f"{computer.label}: {describe_error(exc)}") from None
        except OSError as exc:
            raise ComputerError(f"{computer.label}: {describe_error(exc)}") from None

    def expand(self, path: str) -> str:
        return self.computer.expand(path)

    async def ready(self) -> None:
        """Connect (so that `~` can be expanded)."""
        await self.computer.sftp()

    async def lstat(self, path: str) -> Any | None:
        """Attributes without following a final symlink; None when it does not exist."""
        try:
            return await self._op(lambda c: c.lstat(path), path)
        except FileNotFoundError:
            return None

    async def stat(self, path: str) -> Any | None:
        try:
            return await self._op(lambda c: c.stat(path), path)
        except FileNotFoundError:
            return None

    async def realpath(self, path: str) -> str:
        """Like `os.path.realpath`: components that do not exist are kept as they are
        (some servers refuse realpath for a missing path)."""
        path = posixpath.normpath(self.expand(path))
        missing: list[str] = []
        head = path
        while True:
            try:
                real = await self._realpath(head)
                break
            except OSError:
                parent, name = posixpath.split(head)
                if parent == head:
                    raise
                missing.insert(0, name)
                head = parent
        result = str(real)
        return posixpath.normpath(posixpath.join(result, *missing)) if missing else result

    async def _realpath(self, path: str) -> str:
        async def resolve(client: Any) -> str:
            return str(await client.realpath(path))

        return await self._op(resolve, path)

    async def listdir(self, path: str) -> list[str]:
        try:
            names = await self._op(lambda c: c.listdir(path), path)
        except FileNotFoundError:
            return []
        return sorted(str(n) for n in names if n not in (".", ".."))

    async def makedirs(self, path: str, mode: int = 0o700) -> None:
        import asyncssh

        attrs = asyncssh.SFTPAttrs(permissions=mode)
        await self._op(lambda c: c.makedirs(path, attrs=attrs, exist_ok=True), path)

    async def read(self, path: str) -> bytes:
        async def run(client: Any) -> bytes:
            async with client.open(path, "rb") as f:
                return bytes(await f.read())

        return await self._op(run, path)

    async def write(self, path: str, data: bytes) -> None:
        async def run(client: Any) -> None:
            async with client.open(path, "wb") as f:
                await f.write(data)

        await self._op(run, path)

    async def rename(self, src: str, dst: str) -> None:
        """Standard SFTP rename: refuses an existing destination."""
        await self._op(lambda c: c.rename(src, dst), src)

    async def rmdir(self, path: str) -> None:
        await self._op(lambda c: c.rmdir(path), path)

    async def remove(self, path: str) -> None:
        await self._op(lambda c: c.remove(path), path)


def kind_of(attrs: Any | None) -> PathKind:
    """missing, dir, file, symlink or other."""
    if attrs is None:
        return "missing"
    mode = attrs.permissions or 0
    if stat.S_IFMT(mode):
        if stat.S_ISLNK(mode):
            return "symlink"
        if stat.S_ISDIR(mode):
            return "dir"
        if stat.S_ISREG(mode):
            return "file"
        return "other"
    return _TYPES.get(getattr(attrs, "type", 0), "other")  # SFTPv4+ servers


_TYPES: dict[int, PathKind] = {1: "file", 2: "dir", 3: "symlink"}

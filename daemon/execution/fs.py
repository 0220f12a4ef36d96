"""Agent file access, confined to the chat's working directory.

An agent asks for `fs/read_text_file` and `fs/write_text_file` with absolute paths. We resolve
every path with `realpath` (following every symlink, `..` included) and refuse anything whose
real location is outside the real root: traversal (`/ws/../etc/passwd`), absolute escapes
(`/etc/passwd`) and symlinks pointing out (`/ws/link -> /`) all fail the same check. The final
open uses `O_NOFOLLOW`, so a symlink swapped in after the check is refused rather than
followed.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple


class AccessDenied(Exception):
    """The path is outside the workspace (or otherwise not allowed)."""


class FileProblem(Exception):
    """The path is allowed but the operation failed (missing file, not text, ...)."""


MAX_READ = 64 * 1024 * 1024
"""The largest file an agent may read, locally or over SFTP."""


def is_within(root: str, path: str) -> bool:
    """True if `path` is `root` or below it. Both must already be normalised."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_path(path: str) -> None:
    """Refuse a path no check can vouch for: empty, or with a NUL byte (which the OS or the
    SFTP server would cut short, so the path checked would not be the path opened)."""
    if not path:
        raise AccessDenied("empty path")
    if "\x00" in path:
        raise AccessDenied("path contains a NUL byte")


class Split(NamedTuple):
    """A path cut in two: `head`, which may exist, and `tail`, below it, which does not."""

    head: str
    tail: str


def ancestry(real_root: str, path: str) -> Iterator[Split]:
    """The splits of `path` (a relative one taken from `real_root`), normalised, from the
    whole path (`tail` empty) up to `/`.

    Pure, so the local check (`os.path.lexists`) and the remote one (SFTP `lstat`) walk the
    same way: the caller stops at the first `head` that exists, resolves it and hands that and
    `tail` to `reattach`. When nothing exists, the last split (at `/`) is the one to use.
    """
    head = posixpath.normpath(path if posixpath.isabs(path) else posixpath.join(real_root, path))
    tail = ""
    yield Split(head, tail)
    while True:
        parent, name = posixpath.split(head)
        if parent == head:
            return
        tail = posixpath.join(name, tail) if tail else name
        head = parent
        yield Split(head, tail)


def reattach(real_root: str, real_head: str, tail: str, path: str, root: str) -> str:
    """The resolved `real_head` with the missing `tail` put back, if that lies inside
    `real_root`; else AccessDenied naming the agent's `path` and the workspace `root`."""
    resolved = posixpath.normpath(posixpath.join(real_head, tail) if tail else real_head)
    require_within(real_root, resolved, path, root)
    return resolved


def require_within(real_root: str, real: str, path: str, root: str) -> None:
    """AccessDenied unless the real location `real` of the agent's `path` is inside
    `real_root` (the real path of the workspace `root`)."""
    if not is_within(real_root, real):
        raise AccessDenied(f"{path} is outside the workspace {root}")


def text_slice(path: str, data: bytes, line: int | None, limit: int | None) -> str:
    """`data` as UTF-8 text, from 1-based `line` for `limit` lines (all when None), as
    `fs/read_text_file` asks; FileProblem when it is not UTF-8."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileProblem(f"{path}: not UTF-8 text") from None
    if line is None and limit is None:
        return text
    lines = text.splitlines(keepends=True)
    start = max((line or 1) - 1, 0)
    end = len(lines) if limit is None else start + max(limit, 0)
    return "".join(lines[start:end])


def confine(root: str, path: str) -> str:
    """The real path `path` refers to, if that is inside the real `root`; else AccessDenied.

    For a path that does not exist yet (a file to create), the deepest existing ancestor is
    resolved and the rest appended, so a missing directory under a symlink that leaves the
    root is caught too.
    """
    check_path(path)
    real_root = os.path.realpath(root)
    for split in ancestry(real_root, path):
        if os.path.lexists(split.head):
            break
    return reattach(real_root, os.path.realpath(split.head), split.tail, path, root)


@dataclass(frozen=True, slots=True)
class LocalFiles:
    """File services for one working directory on this host (blocking; run in a thread)."""

    root: str
    max_read: int = MAX_READ

    def read_text(self, path: str, line: int | None = None, limit: int | None = None) -> str:
        real = confine(self.root, path)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileProblem(f"{path}: no such file") from None
        except IsADirectoryError:
            raise FileProblem(f"{path}: is a directory") from None
        except OSError as exc:
            raise FileProblem(f"{path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > self.max_read:
                raise FileProblem(f"{path}: larger than {self.max_read} bytes")
            data = fh.read()
        return text_slice(path, data, line, limit)

    def write_text(self, path: str, content: str) -> None:
        real = confine(self.root, path)
        parent = os.path.dirname(real)
        os.makedirs(parent, exist_ok=True)
        # Re-check after creating directories: a racing symlink must not redirect us.
        require_within(os.path.realpath(self.root), os.path.realpath(parent), path, self.root)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(real, flags, 0o644)
        except IsADirectoryError:
            raise FileProblem(f"{path}: is a directory") from None
        except OSError as exc:
            if exc.errno == 40:  # ELOOP: the final component is a symlink
                raise AccessDenied(f"{path} is a symlink; refusing to follow it") from None
            raise FileProblem(f"{path}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(content.encode("utf-8"))

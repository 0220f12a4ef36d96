"""Agent file access, confined to the chat's working directory.

An agent asks for `fs/read_text_file` and `fs/write_text_file` with absolute paths. We resolve
every path with `realpath` (following every symlink, `..` included) and refuse anything whose
real location is outside the real root: traversal (`/ws/../etc/passwd`), absolute escapes
(`/etc/passwd`) and symlinks pointing out (`/ws/link -> /`) all fail the same check. The final
open uses `O_NOFOLLOW`, so a symlink swapped in after the check is refused rather than
followed.

Only regular files are read or written. A FIFO, a socket or a device inside the workspace is
the agent's to create, but opening one can block forever (a FIFO with no writer) in the worker
thread serving the request, and that thread is never given back: the turn never ends and the
daemon cannot stop. So every open is non-blocking and the type is checked on the opened
descriptor (`fstat`, no race with a swap after the check) before a byte moves.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
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


def describe_kind(mode: int) -> str:
    """What a non-regular file is, in words an agent (and its user) can act on."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "not a regular file"


def refuse_irregular(path: str, mode: int) -> None:
    """FileProblem unless `mode` is a regular file's."""
    if not stat.S_ISREG(mode):
        raise FileProblem(f"{path}: is {describe_kind(mode)}; only regular files can be "
                          "read or written")


def open_regular(path: str, real: str, flags: int, mode: int = 0o644) -> int:
    """Open `real` (the confined location of the agent's `path`) with `flags` plus
    `O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC`, and return the descriptor only if it is a regular
    file, with `O_NONBLOCK` cleared again; else FileProblem (AccessDenied for a symlink).

    `O_NONBLOCK` makes opening a FIFO return at once (or fail with ENXIO for a writer with no
    reader) instead of waiting for the other end; the `fstat` of the descriptor then says
    what was really opened.
    """
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise FileProblem(f"{path}: {exc.strerror}") from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise AccessDenied(f"{path} is a symlink; refusing to follow it")
    if st is not None:
        # Not even opened: opening some devices has effects of its own (a tape rewinds).
        refuse_irregular(path, st.st_mode)
    try:
        fd = os.open(real, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileNotFoundError:
        raise FileProblem(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FileProblem(f"{path}: is a directory") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the final component is a symlink (swapped in)
            raise AccessDenied(f"{path} is a symlink; refusing to follow it") from None
        if exc.errno == errno.ENXIO:  # a FIFO (or socket) with no reader, swapped in
            raise FileProblem(f"{path}: is not a regular file") from None
        raise FileProblem(f"{path}: {exc.strerror}") from None
    try:
        refuse_irregular(path, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True, slots=True)
class LocalFiles:
    """File services for one working directory on this host (blocking; run in a thread)."""

    root: str
    max_read: int = MAX_READ

    def read_text(self, path: str, line: int | None = None, limit: int | None = None) -> str:
        real = confine(self.root, path)
        fd = open_regular(path, real, os.O_RDONLY)
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
        # No O_TRUNC: the file is emptied only once it is known to be a regular one.
        fd = open_regular(path, real, os.O_WRONLY | os.O_CREAT)
        with os.fdopen(fd, "wb") as fh:
            fh.truncate(0)
            fh.write(content.encode("utf-8"))

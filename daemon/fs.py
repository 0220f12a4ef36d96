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
from dataclasses import dataclass


class AccessDenied(Exception):
    """The path is outside the workspace (or otherwise not allowed)."""


class FileProblem(Exception):
    """The path is allowed but the operation failed (missing file, not text, ...)."""


def is_within(root: str, path: str) -> bool:
    """True if `path` is `root` or below it. Both must already be normalised."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def confine(root: str, path: str) -> str:
    """The real path `path` refers to, if that is inside the real `root`; else AccessDenied.

    For a path that does not exist yet (a file to create), the deepest existing ancestor is
    resolved and the rest appended, so a missing directory under a symlink that leaves the
    root is caught too.
    """
    if not path:
        raise AccessDenied("empty path")
    if "\x00" in path:
        raise AccessDenied("path contains a NUL byte")
    real_root = os.path.realpath(root)
    candidate = path if os.path.isabs(path) else os.path.join(real_root, path)
    candidate = posixpath.normpath(candidate)
    # Resolve the deepest existing ancestor, then re-attach what does not exist yet.
    head, tail = candidate, ""
    while not os.path.lexists(head):
        parent, name = os.path.split(head)
        if parent == head:
            break
        tail = os.path.join(name, tail) if tail else name
        head = parent
    resolved = os.path.realpath(head)
    if tail:
        resolved = os.path.join(resolved, tail)
    resolved = posixpath.normpath(resolved)
    if not is_within(real_root, resolved):
        raise AccessDenied(f"{path} is outside the workspace {root}")
    return resolved


@dataclass(frozen=True, slots=True)
class LocalFiles:
    """File services for one working directory on this host (blocking; run in a thread)."""

    root: str
    max_read: int = 64 * 1024 * 1024

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

    def write_text(self, path: str, content: str) -> None:
        real = confine(self.root, path)
        parent = os.path.dirname(real)
        os.makedirs(parent, exist_ok=True)
        # Re-check after creating directories: a racing symlink must not redirect us.
        if not is_within(os.path.realpath(self.root), os.path.realpath(parent)):
            raise AccessDenied(f"{path} is outside the workspace {self.root}")
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

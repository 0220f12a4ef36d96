"""Pure decisions of the worktree reaper: what may go, what stays, and why.

The reaper deletes directories, and a worktree may hold the only copy of someone's work, so
every rule here fails closed: a fact that is missing, unknown, timed out or in error keeps
the worktree. The functions take plain data (gathered by `worktrees.py` through a host) and
do no I/O, which is what lets `tests/unit/test_reaping.py` check them exhaustively with
hypothesis: a `DELETE` verdict is only ever possible when every fact is known and clear.

The decision has two stages so that git runs only where it matters: `screen` settles what
the store and the filesystem already tell (not closed, in use, inside the grace, a symlink,
outside the root, gone); only the remaining candidates get a git preflight, and `decide`
combines both.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

PathKind = Literal["missing", "dir", "symlink", "file", "other"]


class Action(enum.StrEnum):
    KEEP = "keep"
    DELETE = "delete"
    """Soft delete: move to the trash, prune git's record, write a tombstone."""
    FORGET = "forget"
    """The directory is already gone: only the records are tidied (nothing is deleted)."""


class Reason(enum.StrEnum):
    ACTIVE = "active"
    """The workspace was not closed."""
    IN_USE = "in-use"
    """Open chats still work in it (e.g. one was reopened after the workspace closed)."""
    GRACE = "grace"
    """Orphaned for less than the grace period (or since an unknown time)."""
    MISSING = "missing"
    SYMLINK = "symlink"
    """The path is a symbolic link: never followed, never deleted."""
    NOT_A_DIRECTORY = "not-a-directory"
    OUTSIDE_ROOT = "outside-root"
    """Its real path is not strictly under the real path of the worktree root."""
    NOT_A_WORKTREE = "not-a-worktree"
    """No `.git` file: a plain directory or a whole repository, not a linked worktree."""
    TIMEOUT = "timeout"
    ERROR = "error"
    DIRTY = "dirty"
    UNPUSHED = "unpushed"
    UNKNOWN = "unknown"
    """The preflight did not establish every fact."""
    CLEAN = "clean"


@dataclass(frozen=True, slots=True)
class Location:
    """What the filesystem says about a candidate path (from lstat and realpath)."""

    kind: PathKind
    inside_root: bool


@dataclass(frozen=True, slots=True)
class Candidate:
    """A worktree the reaper considers: a closed workspace, or a directory under the root
    that the store does not know (`known=False`, which counts as closed)."""

    path: str
    known: bool
    closed: bool
    open_chats: int
    since: float | None
    """When it was orphaned (a workspace) or last modified (an unknown directory)."""
    location: Location


@dataclass(frozen=True, slots=True)
class Preflight:
    """What git says. `None` = not established (the step did not run or failed)."""

    is_worktree: bool | None = None
    dirty: bool | None = None
    unpushed: bool | None = None
    timed_out: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reason: Reason
    detail: str = ""


def within(path_real: str, root_real: str) -> bool:
    """True when `path_real` is strictly below `root_real` (both already realpath'd).

    A string test on normalised absolute paths: `/a/rootx` is not under `/a/root`, and the
    root itself is not under itself."""
    if not os.path.isabs(path_real) or not os.path.isabs(root_real):
        return False
    path = os.path.normpath(path_real)
    root = os.path.normpath(root_real)
    if path == root:
        return False
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path.startswith(prefix)


def past_grace(since: float | None, now: float, grace: float) -> bool:
    """An unknown start is never past the grace; neither is a start in the future."""
    if since is None:
        return False
    return now - since >= grace and since <= now


def screen(c: Candidate, now: float, grace: float) -> Verdict | None:
    """The verdict that needs no git, or None when a git preflight must decide."""
    if c.known and not c.closed:
        return Verdict(Action.KEEP, Reason.ACTIVE)
    if c.open_chats > 0:
        return Verdict(Action.KEEP, Reason.IN_USE, f"{c.open_chats} open chat(s)")
    if not past_grace(c.since, now, grace):
        return Verdict(Action.KEEP, Reason.GRACE)
    kind = c.location.kind
    if kind == "missing":
        if c.known:
            return Verdict(Action.FORGET, Reason.MISSING)
        return Verdict(Action.KEEP, Reason.MISSING)
    if kind == "symlink":
        return Verdict(Action.KEEP, Reason.SYMLINK)
    if kind != "dir":
        return Verdict(Action.KEEP, Reason.NOT_A_DIRECTORY)
    if not c.location.inside_root:
        return Verdict(Action.KEEP, Reason.OUTSIDE_ROOT)
    return None


def decide(c: Candidate, preflight: Preflight | None, now: float, grace: float) -> Verdict:
    """The reaper's verdict for one candidate. `DELETE` only when everything is clear."""
    early = screen(c, now, grace)
    if early is not None:
        return early
    if preflight is None:
        return Verdict(Action.KEEP, Reason.UNKNOWN, "not checked")
    if preflight.timed_out:
        return Verdict(Action.KEEP, Reason.TIMEOUT, preflight.error or "")
    if preflight.error is not None:
        return Verdict(Action.KEEP, Reason.ERROR, preflight.error)
    if preflight.is_worktree is not True:
        if preflight.is_worktree is False:
            return Verdict(Action.KEEP, Reason.NOT_A_WORKTREE)
        return Verdict(Action.KEEP, Reason.UNKNOWN, "worktree not established")
    if preflight.dirty is not False:
        if preflight.dirty:
            return Verdict(Action.KEEP, Reason.DIRTY)
        return Verdict(Action.KEEP, Reason.UNKNOWN, "status not established")
    if preflight.unpushed is not False:
        if preflight.unpushed:
            return Verdict(Action.KEEP, Reason.UNPUSHED)
        return Verdict(Action.KEEP, Reason.UNKNOWN, "unpushed commits not established")
    return Verdict(Action.DELETE, Reason.CLEAN)


def has_unpushed(candidates: Collection[str], cherry_plus: Collection[str] | None, *,
                 capped: bool) -> bool:
    """Whether commits exist that no remote has and the reference branch lacks.

    `candidates`: commits of HEAD reachable neither from a remote-tracking ref nor from the
    reference branch (`rev-list HEAD --not --remotes REF`). `cherry_plus`: the commits `git
    cherry REF HEAD` marks `+` (no patch-equivalent on REF); None when there is no reference
    branch, so every candidate counts. `capped`: the candidate list hit its length limit, so
    some were not seen: assume the worst."""
    if not candidates:
        return capped
    if capped or cherry_plus is None:
        return True
    plus = set(cherry_plus)
    return any(commit in plus for commit in candidates)


def purge_due(trashed_at: float | None, now: float, retention: float) -> bool:
    """Trash is purged once its retention has passed (never when its age is unknown)."""
    if trashed_at is None:
        return False
    return trashed_at <= now and now - trashed_at >= retention

"""Workspace and tombstone records: what the workspace service and the reaper keep in
memory and persist in the `workspaces` and `tombstones` tables.

A tombstone is the journal of one soft delete. Its state moves `moving -> trashed ->
purging -> purged` (or `restoring -> restored`, or `aborted`/`lost`), and it is written and
flushed *before* each step touches the disk, so that whatever a crash interrupts can be
finished at the next start from the tombstone alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.store.sqlite import Store
from protocol import messages as m

# Workspace states.
CREATING = "creating"
ACTIVE = "active"
ORPHANED = "orphaned"
TRASHED = "trashed"
PURGED = "purged"
GONE = "gone"
FAILED = "failed"
LIVE_STATES = frozenset({CREATING, ACTIVE, ORPHANED})
"""Their worktree is (supposed to be) in place."""
LISTED_STATES = frozenset({CREATING, ACTIVE, ORPHANED, TRASHED})
"""Shown by `workspace ls` without `--all`."""

# Tombstone states.
MOVING = "moving"
TRASHED_T = "trashed"
PURGING = "purging"
PURGED_T = "purged"
RESTORING = "restoring"
RESTORED = "restored"
ABORTED = "aborted"
LOST = "lost"


@dataclass(slots=True)
class Workspace:
    id: str
    project: str
    path: str
    branch: str
    base: str
    state: str
    created: float
    updated: float
    computer: str | None = None
    orphaned_at: float | None = None
    reason: str = ""
    detail: str = ""
    common_dir: str = ""
    diff_hash: str = ""
    tombstone: str | None = None


@dataclass(slots=True)
class Tombstone:
    id: str
    workspace: str | None
    path: str
    """Where the worktree was (and goes back to on restore)."""
    trash: str
    """Where it is while in the trash: `<root>/.trash/<tombstone id>/<name>`."""
    state: str
    created: float
    computer: str | None = None
    common_dir: str = ""
    branch: str = ""
    head: str = ""
    reason: str = ""
    trashed_at: float | None = None
    purged_at: float | None = None


_WS_COLUMNS = ("id, project, path, branch, base, state, created, updated, computer, "
               "orphaned_at, reason, detail, common_dir, diff_hash, tombstone")
_TOMB_COLUMNS = ("id, workspace, path, trash, state, created, computer, common_dir, branch, "
                 "head, reason, trashed_at, purged_at")


def save_workspace(store: Store, ws: Workspace) -> None:
    store.execute(
        f"INSERT OR REPLACE INTO workspaces({_WS_COLUMNS}) VALUES "
        "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (ws.id, ws.project, ws.path, ws.branch, ws.base, ws.state, ws.created, ws.updated,
         ws.computer, ws.orphaned_at, ws.reason, ws.detail, ws.common_dir, ws.diff_hash,
         ws.tombstone))


def save_tombstone(store: Store, t: Tombstone) -> None:
    store.execute(
        f"INSERT OR REPLACE INTO tombstones({_TOMB_COLUMNS}) VALUES "
        "(?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (t.id, t.workspace, t.path, t.trash, t.state, t.created, t.computer, t.common_dir,
         t.branch, t.head, t.reason, t.trashed_at, t.purged_at))


async def load(store: Store) -> tuple[dict[str, Workspace], dict[str, Tombstone]]:
    rows: list[tuple[Any, ...]] = await store.query(f"SELECT {_WS_COLUMNS} FROM workspaces")
    workspaces = {str(r[0]): Workspace(*r) for r in rows}
    rows = await store.query(f"SELECT {_TOMB_COLUMNS} FROM tombstones")
    tombstones = {str(r[0]): Tombstone(*r) for r in rows}
    return workspaces, tombstones


def info(ws: Workspace, *, chats: list[str], tomb: Tombstone | None,
         retention: float) -> m.WorkspaceInfo:
    trashed_at = tomb.trashed_at if tomb is not None else None
    return m.WorkspaceInfo(
        workspace=ws.id, project=ws.project, path=ws.path, branch=ws.branch, base=ws.base,
        state=ws.state, created_at=ws.created, computer=ws.computer,
        orphaned_at=ws.orphaned_at, reason=ws.reason, detail=ws.detail, chats=chats,
        tombstone=ws.tombstone, trashed_at=trashed_at,
        purge_after=trashed_at + retention if trashed_at is not None
        and ws.state == TRASHED else None)

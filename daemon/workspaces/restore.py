"""Bringing a trashed worktree back (`workspace restore`), also as crash recovery.

The reaper moves a worktree into the trash and journals it in a tombstone; restoring moves
it back, makes git know it again (`reregister`) and makes its workspace active, adopting a
stray worktree as a new workspace so that it is not reaped again as unknown. Journaled like
the reaper's steps: the tombstone says `restoring` before the move, so that recovery at
startup finishes a restore a crash interrupted (`finish_restore`).
"""

from __future__ import annotations

import os
import time

from daemon.errors import GitError, InvalidState, StokerError, UnknownWorkspace
from daemon.log import Log
from daemon.workspaces import records as rec
from daemon.workspaces.hosts import WorktreeHost
from daemon.workspaces.service import WorkspaceService
from daemon.workspaces.worktrees import reregister

_log = Log("reaper")


def find(svc: WorkspaceService, ident: str) -> tuple[rec.Tombstone, rec.Workspace | None]:
    ws = svc.workspaces.get(ident)
    if ws is not None:
        tomb = svc.tombstones.get(ws.tombstone) if ws.tombstone else None
        if tomb is None:
            raise InvalidState(f"workspace {ws.id} is {ws.state}, not in the trash")
        return tomb, ws
    tomb = svc.tombstones.get(ident)
    if tomb is None:
        raise UnknownWorkspace(f"unknown workspace or tombstone {ident!r}")
    return tomb, svc.workspaces.get(tomb.workspace) if tomb.workspace else None

async def restore(svc: WorkspaceService, ident: str) -> rec.Workspace:
    """Move a trashed worktree back and make git know it again."""
    tomb, _ = find(svc, ident)
    host = svc.host(tomb.computer)
    root = await svc.root(host)
    async with svc.lock:
        if tomb.state != rec.TRASHED_T:
            raise InvalidState(f"cannot restore {ident}: it is {tomb.state}"
                               + (" (the trash was emptied)" if tomb.state in (
                                   rec.PURGED_T, rec.PURGING) else ""))
        if (await host.info(tomb.path)).kind != "missing":
            raise InvalidState(f"cannot restore {ident}: {tomb.path} exists")
        if (await host.info(tomb.trash)).kind != "dir":
            raise InvalidState(f"cannot restore {ident}: its trash copy {tomb.trash} "
                               "is missing")
        tomb.state = rec.RESTORING
        rec.save_tombstone(svc.store, tomb)
        await svc.store.flush()
        await host.make_dirs(os.path.dirname(tomb.path))
        await host.move(tomb.trash, tomb.path, root=root)
    return await finish_restore(svc, host, root, tomb)

async def finish_restore(svc: WorkspaceService, host: WorktreeHost, root: str,
                         tomb: rec.Tombstone) -> rec.Workspace:
    """Put a moved-back worktree on git's books and the workspace back to `active` (also
    what recovery runs for a restore a crash interrupted)."""
    here = await host.info(tomb.path)
    if here.kind == "missing":
        if (await host.info(tomb.trash)).kind == "dir":
            await host.make_dirs(os.path.dirname(tomb.path))
            await host.move(tomb.trash, tomb.path, root=root)
        else:
            tomb.state = rec.LOST
            rec.save_tombstone(svc.store, tomb)
            raise InvalidState(f"tombstone {tomb.id}: the worktree is neither at "
                               f"{tomb.path} nor in the trash")
    tomb_dir = os.path.dirname(tomb.trash)
    problem = ""
    try:
        await reregister(host, tomb.path, common_dir=tomb.common_dir, branch=tomb.branch,
                         head=tomb.head, scratch_dir=os.path.join(tomb_dir, "readd"),
                         root=root, timeout=svc.git_timeout)
    except (GitError, OSError) as exc:
        problem = getattr(exc, "message", None) or str(exc)
        _log.warning("restored worktree not re-registered with git",
                         path=tomb.path, error=problem)
    async with svc.lock:
        tomb.state = rec.RESTORED
        tomb.reason = problem
        rec.save_tombstone(svc.store, tomb)
        ws = svc.workspaces.get(tomb.workspace) if tomb.workspace else None
        if ws is None:
            ws = adopt(svc, tomb)
        ws.state = rec.ACTIVE
        ws.orphaned_at = None
        ws.tombstone = None
        ws.reason = "restored; git could not re-register it" if problem else ""
        ws.detail = problem
        svc.save(ws)
    await svc.store.flush()
    for leftover in (os.path.join(tomb_dir, "readd"), tomb_dir):
        try:
            await host.remove_empty_dir(leftover, root=root)
        except (OSError, StokerError):
            pass
    _log.info("worktree restored", path=tomb.path, workspace=ws.id)
    return ws

def adopt(svc: WorkspaceService, tomb: rec.Tombstone) -> rec.Workspace:
    """A restored stray worktree becomes a workspace, so it is not reaped again as
    unknown and can be closed like any other."""
    common = tomb.common_dir
    project = os.path.dirname(common) if os.path.basename(common) == ".git" else common
    now = time.time()
    ws = rec.Workspace(id=tomb.id, project=project, path=tomb.path, branch=tomb.branch,
                       base=tomb.head, state=rec.ACTIVE, created=now, updated=now,
                       computer=tomb.computer, common_dir=common)
    svc.workspaces[ws.id] = ws
    tomb.workspace = ws.id
    return ws

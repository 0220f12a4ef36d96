"""The workspaces child of the supervision tree: its start and the requests it answers.

Starting loads the records, finishes what a crash interrupted (before any client can see a
half-moved worktree), subscribes to the pool's turn ends (diff deltas) and starts the
reaper's timer. It runs after the pool (the pool's chats are what `open_chats` reads) and
before the listeners accept clients.
"""

from __future__ import annotations

import trio

from daemon.router import Routes
from daemon.workspaces import records as rec
from daemon.workspaces.reaper import Reaper
from daemon.workspaces.service import WorkspaceService
from protocol import messages as m


class Workspaces:
    """The workspace service and its reaper, as one child."""

    def __init__(self, service: WorkspaceService) -> None:
        self.service = service
        self.reaper = Reaper(service)

    async def start(self, nursery: trio.Nursery) -> None:
        """Load the records, finish interrupted deletes, start the reaper."""
        service = self.service
        service.nursery = nursery
        service.workspaces, service.tombstones = await rec.load(service.store)
        try:
            await self.reaper.recover()
        except Exception:
            # A bug here must not keep the daemon (and every chat) down; the tombstones stay
            # and the next start tries again.
            service.log.exception("finishing interrupted worktree operations failed")
        service.pool.turn_listeners.append(service.on_turn_end)
        nursery.start_soon(self.reaper.loop)


ROUTES: Routes[Workspaces] = Routes("workspaces")
"""`open_chat` in a workspace is the core's request; it delegates here (`open_chat`)."""


@ROUTES.handles(m.WorkspaceNew, slow=True)
async def workspace_new(ws: Workspaces, req: m.WorkspaceNew, client: str) -> m.WorkspaceInfo:
    service = ws.service
    return service.info(await service.create(req.project, req.branch, req.computer))


@ROUTES.handles(m.ListWorkspaces)
async def workspace_ls(ws: Workspaces, req: m.ListWorkspaces, client: str
                       ) -> m.WorkspaceList:
    return ws.service.list(req.include_deleted)


@ROUTES.handles(m.CloseWorkspace, slow=True)
async def workspace_close(ws: Workspaces, req: m.CloseWorkspace, client: str
                          ) -> m.WorkspaceInfo:
    service = ws.service
    return service.info(await service.close(req.workspace, reason=f"closed by {client}"))


@ROUTES.handles(m.RestoreWorkspace, slow=True)
async def workspace_restore(ws: Workspaces, req: m.RestoreWorkspace, client: str
                            ) -> m.WorkspaceInfo:
    return ws.service.info(await ws.reaper.restore(req.workspace))


@ROUTES.handles(m.WorkspaceDiff, slow=True)
async def workspace_diff(ws: Workspaces, req: m.WorkspaceDiff, client: str) -> m.DiffResult:
    return await ws.service.diff(req)


@ROUTES.handles(m.Reap, slow=True)
async def reap(ws: Workspaces, req: m.Reap, client: str) -> m.ReapResult:
    return m.ReapResult(dry_run=req.dry_run, entries=await ws.reaper.run(dry_run=req.dry_run))

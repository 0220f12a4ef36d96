"""The orphan-worktree reaper: soft delete, purge, restore, and crash recovery.

A pass looks at every live workspace of every host and at every directory under the
worktree root that the store does not know. The verdict comes from the pure functions of
`reaping.py` (facts from the store, lstat/realpath, and a git preflight). Only a `DELETE`
verdict touches the disk, and even then softly: the worktree is renamed into
`<root>/.trash/<tombstone>/` (atomic, same filesystem), `git worktree prune` drops git's
record of it, and a tombstone remembers where it came from. The trash is purged after
`trash_retention`; until then `workspace restore` brings it back.

Every step is journaled in the tombstone, written and flushed before the step runs, so
that `recover()` (at startup, before clients are accepted) can finish what a crash
interrupted: a move that happened is recorded, one that did not is judged again with fresh
facts, a purge is completed, a restore is completed.

The verdict is made outside the service lock (git may be slow); the final re-check (still
orphaned, still no open chat, still unknown to the store) and the move happen under it, so
a concurrent close, reopen, restore or create cannot be overtaken.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Literal

import trio

from daemon.errors import GitError, InvalidState, StokerError, UnknownComputer
from daemon.log import Log
from daemon.workspaces import records as rec
from daemon.workspaces.hosts import WorktreeHost
from daemon.workspaces.reaping import (
    Action,
    Candidate,
    Location,
    Reason,
    Verdict,
    decide,
    purge_due,
    screen,
    within,
)
from daemon.workspaces.restore import finish_restore, restore
from daemon.workspaces.service import TRASH_DIR, WorkspaceService
from daemon.workspaces.worktrees import PreflightResult, preflight, prune
from protocol import messages as m

ActionName = Literal["keep", "delete", "forget", "purge"]
MIN_INTERVAL = 0.05


class Reaper:
    def __init__(self, service: WorkspaceService) -> None:
        self.service = service
        self.log = Log("reaper")
        self._pass_lock = trio.Lock()
        self.passes = 0

    @property
    def _grace(self) -> float:
        return float(self.service.config.reap_grace)

    # ------------------------------------------------------------------ the loop

    async def loop(self) -> None:
        """Run a pass every `reap_interval` (0 disables the timer; `stoker reap` still
        works). The interval is re-read each time, so a reload applies."""
        while True:
            interval = float(self.service.config.reap_interval)
            if interval <= 0:
                await trio.sleep(60)
                continue
            await trio.sleep(max(interval, MIN_INTERVAL))
            try:
                await self.run(dry_run=False)
            except Exception:
                self.log.exception("reaper pass failed")

    async def run(self, *, dry_run: bool) -> list[m.ReapEntry]:
        """One pass over every host. Returns what went, what stays and why."""
        async with self._pass_lock:
            entries: list[m.ReapEntry] = []
            for computer, host in list(self.service.hosts.items()):
                try:
                    entries.extend(await self._pass(host, dry_run))
                except StokerError as exc:
                    self.log.warning("reaper pass failed", computer=computer,
                                     error=exc.message)
                    entries.append(m.ReapEntry(path="", action="keep", reason="error",
                                               detail=exc.message))
            self.passes += 1
            await self.service.store.flush()
            if not dry_run:
                gone = [e for e in entries if e.done]
                if gone:
                    self.log.info("reaper pass", removed=len(gone), entries=len(entries))
            return entries

    async def _pass(self, host: WorktreeHost, dry_run: bool) -> list[m.ReapEntry]:
        root = await self.service.root(host)
        now = time.time()
        entries: list[m.ReapEntry] = []
        for candidate, ws in await self._candidates(host, root):
            verdict, pre = await self._judge(host, candidate, now)
            entry = m.ReapEntry(path=candidate.path, action=_name(verdict.action),
                                reason=verdict.reason.value, detail=verdict.detail,
                                workspace=ws.id if ws else None)
            if not dry_run:
                await self._apply(host, root, candidate, ws, verdict, pre, entry)
            entries.append(entry)
        entries.extend(await self._purge_due(host, root, now, dry_run))
        return entries

    async def _judge(self, host: WorktreeHost, candidate: Candidate, now: float
                     ) -> tuple[Verdict, PreflightResult | None]:
        grace = self._grace
        verdict = screen(candidate, now, grace)
        if verdict is not None:
            return verdict, None
        pre = await preflight(host, candidate.path, timeout=self.service.git_timeout)
        return decide(candidate, pre.facts, now, grace), pre

    # ------------------------------------------------------------------ candidates

    async def _locate(self, host: WorktreeHost, path: str, root: str
                      ) -> tuple[Location, float | None]:
        info = await host.info(path)
        inside = False
        if info.kind == "dir":
            inside = within(await host.realpath(path), root)
        return Location(info.kind, inside), info.mtime

    async def _candidates(self, host: WorktreeHost, root: str
                          ) -> list[tuple[Candidate, rec.Workspace | None]]:
        svc = self.service
        out: list[tuple[Candidate, rec.Workspace | None]] = []
        mine = [ws for ws in svc.workspaces.values() if ws.computer == host.computer]
        for ws in sorted(mine, key=lambda w: w.created):
            if ws.state not in rec.LIVE_STATES:
                continue
            location, _ = await self._locate(host, ws.path, root)
            out.append((Candidate(path=ws.path, known=True, closed=ws.state == rec.ORPHANED,
                                  open_chats=len(svc.open_chats(ws.id)), since=ws.orphaned_at,
                                  location=location), ws))
        for top in await host.list_dir(root):
            if top.startswith("."):
                continue  # .trash, .tmp: ours, handled separately
            top_path = os.path.join(root, top)
            location, mtime = await self._locate(host, top_path, root)
            if location.kind != "dir":
                out.append((Candidate(path=top_path, known=False, closed=True, open_chats=0,
                                      since=mtime, location=location), None))
                continue
            for name in await host.list_dir(top_path):
                path = os.path.join(top_path, name)
                if self._known(host, path):
                    continue
                location, mtime = await self._locate(host, path, root)
                out.append((Candidate(path=path, known=False, closed=True, open_chats=0,
                                      since=mtime, location=location), None))
        return out

    def _known(self, host: WorktreeHost, path: str) -> bool:
        return any(ws.path == path and ws.computer == host.computer
                   for ws in self.service.workspaces.values())

    def _still(self, host: WorktreeHost, candidate: Candidate,
               ws: rec.Workspace | None) -> bool:
        """Under the lock: is the verdict's premise still true?"""
        if ws is None:
            return not self._known(host, candidate.path)
        return ws.state == rec.ORPHANED and not self.service.open_chats(ws.id)

    # ------------------------------------------------------------------ actions

    async def _apply(self, host: WorktreeHost, root: str, candidate: Candidate,
                     ws: rec.Workspace | None, verdict: Verdict,
                     pre: PreflightResult | None, entry: m.ReapEntry) -> None:
        svc = self.service
        if verdict.action is Action.KEEP:
            if ws is not None and ws.state == rec.ORPHANED and (
                    ws.reason, ws.detail) != (verdict.reason.value, verdict.detail):
                async with svc.lock:
                    ws.reason, ws.detail = verdict.reason.value, verdict.detail
                    svc.save(ws)
            return
        if verdict.action is Action.FORGET:
            assert ws is not None
            async with svc.lock:
                if not self._still(host, candidate, ws) or (
                        await host.info(ws.path)).kind != "missing":
                    _changed(entry)
                    return
                ws.state = rec.GONE
                ws.reason = Reason.MISSING.value
                ws.detail = "its directory had disappeared; nothing was deleted"
                svc.save(ws)
            entry.done = True
            await self._prune(host, ws.common_dir)
            return
        assert pre is not None
        async with svc.lock:
            if not self._still(host, candidate, ws):
                _changed(entry)
                return
            try:
                tomb = await self._trash(host, root, candidate.path, ws, pre)
            except (OSError, StokerError) as exc:
                message = getattr(exc, "message", None) or str(exc)
                self.log.warning("could not move a worktree to the trash",
                                 path=candidate.path, error=message)
                entry.action, entry.reason, entry.detail = "keep", "error", message
                if ws is not None:
                    ws.reason, ws.detail = "error", message
                    svc.save(ws)
                return
        entry.done = True
        entry.tombstone = tomb.id
        self.log.info("worktree moved to the trash", path=candidate.path, tombstone=tomb.id,
                      workspace=ws.id if ws else None)
        await self._after_trash(host, root, tomb)

    async def _trash(self, host: WorktreeHost, root: str, path: str, ws: rec.Workspace | None,
                     pre: PreflightResult) -> rec.Tombstone:
        """Journal, then move. Called with the service lock held."""
        svc = self.service
        tomb_id = "t" + secrets.token_hex(5)
        tomb_dir = os.path.join(root, TRASH_DIR, tomb_id)
        tomb = rec.Tombstone(
            id=tomb_id, workspace=ws.id if ws else None, path=path,
            trash=os.path.join(tomb_dir, os.path.basename(path)), state=rec.MOVING,
            created=time.time(), computer=host.computer,
            common_dir=pre.common_dir or (ws.common_dir if ws else ""),
            branch=pre.branch or (ws.branch if ws else ""), head=pre.head)
        svc.tombstones[tomb.id] = tomb
        rec.save_tombstone(svc.store, tomb)
        await svc.store.flush()
        try:
            await host.make_dirs(tomb_dir)
            await host.move(path, tomb.trash, root=root)
        except Exception as exc:
            tomb.state = rec.ABORTED
            tomb.reason = getattr(exc, "message", None) or str(exc)
            rec.save_tombstone(svc.store, tomb)
            await host.remove_empty_dir(tomb_dir, root=root)
            raise
        self._mark_trashed(tomb, ws)
        await svc.store.flush()
        return tomb

    def _mark_trashed(self, tomb: rec.Tombstone, ws: rec.Workspace | None) -> None:
        svc = self.service
        tomb.state = rec.TRASHED_T
        tomb.trashed_at = time.time()
        rec.save_tombstone(svc.store, tomb)
        if ws is not None:
            ws.state = rec.TRASHED
            ws.tombstone = tomb.id
            ws.reason = Reason.CLEAN.value
            ws.detail = f"in the trash until purged ({tomb.trash})"
            svc.save(ws)

    async def _after_trash(self, host: WorktreeHost, root: str, tomb: rec.Tombstone) -> None:
        await self._prune(host, tomb.common_dir)
        parent = os.path.dirname(tomb.path)
        if parent != root and within(parent, root):
            try:
                await host.remove_empty_dir(parent, root=root)
            except (OSError, StokerError):
                pass

    async def _prune(self, host: WorktreeHost, common_dir: str) -> None:
        """Drop git's record of removed worktrees. Failing is harmless (git lists them as
        prunable) and is retried by the next delete."""
        if not common_dir:
            return
        try:
            await prune(host, common_dir, timeout=self.service.git_timeout)
        except GitError as exc:
            self.log.warning("git worktree prune failed", repo=common_dir, error=exc.message)

    # ------------------------------------------------------------------ purge

    async def _purge_due(self, host: WorktreeHost, root: str, now: float,
                         dry_run: bool) -> list[m.ReapEntry]:
        out: list[m.ReapEntry] = []
        retention = self.service.retention
        for tomb in list(self.service.tombstones.values()):
            if tomb.computer != host.computer:
                continue
            due = tomb.state == rec.PURGING or (
                tomb.state == rec.TRASHED_T and purge_due(tomb.trashed_at, now, retention))
            if not due:
                continue
            entry = m.ReapEntry(path=tomb.trash, action="purge", reason="retention",
                                workspace=tomb.workspace, tombstone=tomb.id)
            if not dry_run:
                try:
                    entry.done = await self._purge(host, root, tomb)
                except (OSError, StokerError) as exc:
                    entry.detail = getattr(exc, "message", None) or str(exc)
                    self.log.warning("purge failed", tombstone=tomb.id, error=entry.detail)
            out.append(entry)
        return out

    async def _purge(self, host: WorktreeHost, root: str, tomb: rec.Tombstone) -> bool:
        svc = self.service
        tomb_dir = os.path.dirname(tomb.trash)
        if (os.path.basename(tomb_dir) != tomb.id
                or os.path.basename(os.path.dirname(tomb_dir)) != TRASH_DIR):
            raise InvalidState(f"tombstone {tomb.id}: unexpected trash path {tomb.trash}")
        async with svc.lock:
            if tomb.state not in (rec.TRASHED_T, rec.PURGING):
                return False
            tomb.state = rec.PURGING
            rec.save_tombstone(svc.store, tomb)
        await svc.store.flush()
        await host.remove_tree(tomb_dir, root=root)
        async with svc.lock:
            tomb.state = rec.PURGED_T
            tomb.purged_at = time.time()
            rec.save_tombstone(svc.store, tomb)
            ws = svc.workspaces.get(tomb.workspace) if tomb.workspace else None
            if ws is not None and ws.tombstone == tomb.id and ws.state == rec.TRASHED:
                ws.state = rec.PURGED
                ws.reason = ws.detail = ""
                svc.save(ws)
        await svc.store.flush()
        self.log.info("trash purged", tombstone=tomb.id, path=tomb.path)
        return True

    # ------------------------------------------------------------------ restore

    async def restore(self, ident: str) -> rec.Workspace:
        """Move a trashed worktree back (see `restore.py`)."""
        return await restore(self.service, ident)

    # ------------------------------------------------------------------ recovery

    async def recover(self) -> None:
        """At startup: finish what a crash interrupted (see the module docstring)."""
        svc = self.service
        now = time.time()
        for ws in svc.workspaces.values():
            if ws.state == rec.CREATING:
                ws.state = rec.ORPHANED
                ws.orphaned_at = now
                ws.reason = "creation interrupted"
                svc.save(ws)
        for tomb in sorted(svc.tombstones.values(), key=lambda t: t.created):
            if tomb.state not in (rec.MOVING, rec.PURGING, rec.RESTORING):
                continue
            try:
                host = svc.host(tomb.computer)
                root = await svc.root(host)
                if tomb.state == rec.MOVING:
                    await self._recover_move(host, root, tomb)
                elif tomb.state == rec.PURGING:
                    await self._purge(host, root, tomb)
                else:
                    await finish_restore(self.service, host, root, tomb)
            except UnknownComputer:
                continue
            except (OSError, StokerError) as exc:
                self.log.error("could not finish an interrupted operation",
                               tombstone=tomb.id, state=tomb.state,
                               error=getattr(exc, "message", None) or str(exc))
        await svc.store.flush()

    async def _recover_move(self, host: WorktreeHost, root: str, tomb: rec.Tombstone) -> None:
        svc = self.service
        ws = svc.workspaces.get(tomb.workspace) if tomb.workspace else None
        src = await host.info(tomb.path)
        dst = await host.info(tomb.trash)
        if src.kind == "missing" and dst.kind != "missing":
            self._mark_trashed(tomb, ws)
            await svc.store.flush()
            self.log.info("finished an interrupted delete", tombstone=tomb.id, path=tomb.path)
            await self._after_trash(host, root, tomb)
            return
        if src.kind == "missing":
            tomb.state = rec.LOST
            tomb.reason = "neither the worktree nor its trash copy exists"
            rec.save_tombstone(svc.store, tomb)
            if ws is not None and ws.state in rec.LIVE_STATES:
                ws.state = rec.GONE
                svc.save(ws)
            return
        tomb.state = rec.ABORTED
        if dst.kind != "missing":
            tomb.reason = "both the worktree and a trash copy exist; nothing was removed"
            rec.save_tombstone(svc.store, tomb)
            return
        # The move never happened: judge it again with fresh facts, and finish if clear.
        tomb.reason = "interrupted before the move; judged again at startup"
        rec.save_tombstone(svc.store, tomb)
        location, mtime = await self._locate(host, tomb.path, root)
        if ws is not None:
            candidate = Candidate(path=tomb.path, known=True, closed=ws.state == rec.ORPHANED,
                                  open_chats=len(svc.open_chats(ws.id)), since=ws.orphaned_at,
                                  location=location)
        else:
            candidate = Candidate(path=tomb.path, known=False, closed=True, open_chats=0,
                                  since=mtime, location=location)
        verdict, pre = await self._judge(host, candidate, time.time())
        entry = m.ReapEntry(path=tomb.path, action=_name(verdict.action),
                            reason=verdict.reason.value, workspace=ws.id if ws else None)
        await self._apply(host, root, candidate, ws, verdict, pre, entry)
        self.log.info("re-judged an interrupted delete", path=tomb.path,
                      action=entry.action, reason=entry.reason, done=entry.done)


def _name(action: Action) -> ActionName:
    return action.value


def _changed(entry: m.ReapEntry) -> None:
    entry.action = "keep"
    entry.reason = "changed"
    entry.detail = "its state changed during the pass"

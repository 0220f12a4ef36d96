"""The workspaces subsystem: one git worktree per workspace, shared by its chats.

Agents never work in the user's checkout. A workspace is a worktree of the user's project
under the worktree root (`[worktrees] root`, default `<state dir>/worktrees`, which is
`$XDG_STATE_HOME/stoker/worktrees` unless the state dir was moved), on a new branch from
the project's HEAD; its chats run their agents with the worktree as cwd, so they see each
other's changes.

Lifecycle: `creating -> active -> orphaned` (by `workspace close`) `-> trashed -> purged`
(by the reaper, see `reaper.py`), `trashed -> active` by `workspace restore`. Closing a
workspace closes its open chats: an agent must not keep writing into a directory the
reaper is about to judge. Closing a chat never touches its workspace. Opening a chat with
`--workspace` of an orphaned workspace makes it active again.

After each turn of a chat in a workspace, the worktree's change set is recomputed (debounced
per workspace) and, when it differs from the last one published, a `diff` delta goes to the
chats whose turns just ended.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from daemon.errors import (
    BadRequest,
    GitError,
    InvalidState,
    UnknownAgent,
    UnknownChat,
    UnknownComputer,
    UnknownWorkspace,
)
from daemon.log import Log
from daemon.workspaces import records as rec
from daemon.workspaces.git import summary_line
from daemon.workspaces.hosts import LocalHost, WorktreeHost
from daemon.workspaces.reaping import within
from daemon.workspaces.worktrees import (
    EMPTY_FINGERPRINT,
    DiffData,
    add_worktree,
    check_branch,
    check_project,
    diff,
)
from protocol import deltas as d
from protocol import messages as m

if TYPE_CHECKING:
    from daemon.actors.pool import Pool
    from daemon.actors.settings import Settings
    from daemon.channels.hub import Hub
    from daemon.store.sqlite import Store

DIFF_DEBOUNCE = 0.2
"""Seconds between a turn's end and the diff check: a burst of turns costs one git run."""

TRASH_DIR = ".trash"
SCRATCH_DIR = ".tmp"


def project_key(toplevel: str) -> str:
    """The `<project-hash>` directory name: stable per project path."""
    return hashlib.sha256(toplevel.encode("utf-8", errors="surrogateescape")).hexdigest()[:16]


class WorkspaceService:
    """The workspaces' records and every change of their state (the reaper's moves aside).

    Holds what it works with, not the daemon: the store, the pool (to open and close the
    chats of a workspace), the hub (for `diff` deltas) and the live settings."""

    def __init__(self, *, store: Store, pool: Pool, hub: Hub, settings: Settings,
                 state_dir: Path) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.store = store
        self.pool = pool
        self.hub = hub
        self.hosts: dict[str | None, WorktreeHost] = {None: LocalHost()}
        """Where worktrees live, by computer (None = this machine)."""
        self.workspaces: dict[str, rec.Workspace] = {}
        self.tombstones: dict[str, rec.Tombstone] = {}
        self.lock = trio.Lock()
        """Held for every change of a workspace's state, so the reaper's final re-check and
        its move cannot interleave with a close, a reopen or a restore."""
        self.log = Log("workspaces")
        self.nursery: trio.Nursery | None = None
        """Where diff checks run; set when the workspaces child starts."""
        self._diff_pending: dict[str, dict[str, int]] = {}
        self._diff_running: set[str] = set()
        self.diff_checks = 0

    # ------------------------------------------------------------------ config and hosts

    @property
    def config(self) -> Any:
        return self.settings.config.worktrees

    @property
    def git_timeout(self) -> float:
        return float(self.config.git_timeout)

    @property
    def retention(self) -> float:
        return float(self.config.trash_retention)

    def host(self, computer: str | None) -> WorktreeHost:
        found = self.hosts.get(computer)
        if found is None:
            raise UnknownComputer(f"no workspaces on computer {computer!r}: unknown computer "
                                  "or no worktree support for it")
        return found

    def configured_root(self, computer: str | None) -> str:
        """The worktree root as configured (not yet resolved)."""
        own = self.host(computer).root
        if own:
            return own
        if computer is not None:
            raise UnknownComputer(f"computer {computer!r} has no worktree root")
        raw = str(self.config.root or "")
        if raw:
            path = os.path.expanduser(raw)
            if not os.path.isabs(path):
                raise BadRequest(f"[worktrees] root must be an absolute path, not {raw!r}")
            return path
        return str(self.state_dir / "worktrees")

    async def root(self, host: WorktreeHost) -> str:
        """The real path of the worktree root (created 0700 if needed)."""
        path = self.configured_root(host.computer)
        await host.make_dirs(path)
        return await host.realpath(path)

    # ------------------------------------------------------------------ lookups

    def get(self, workspace: str) -> rec.Workspace:
        ws = self.workspaces.get(workspace)
        if ws is None:
            raise UnknownWorkspace(f"unknown workspace {workspace!r}")
        return ws

    def open_chats(self, workspace: str) -> list[str]:
        return [c.id for c in self.pool.chats() if c.workspace == workspace]

    def info(self, ws: rec.Workspace) -> m.WorkspaceInfo:
        tomb = self.tombstones.get(ws.tombstone) if ws.tombstone else None
        return rec.info(ws, chats=self.open_chats(ws.id), tomb=tomb, retention=self.retention)

    def save(self, ws: rec.Workspace) -> None:
        ws.updated = time.time()
        rec.save_workspace(self.store, ws)

    def _fresh_id(self) -> str:
        while True:
            candidate = secrets.token_hex(5)
            if candidate not in self.workspaces and not candidate.startswith("t"):
                return candidate

    # ------------------------------------------------------------------ create

    async def create(self, project: str, branch: str | None = None,
                     computer: str | None = None) -> rec.Workspace:
        """A new worktree of `project` on a new branch from its HEAD."""
        if not project or not os.path.isabs(project):
            raise BadRequest(f"project must be an absolute path, not {project!r}")
        host = self.host(computer)
        timeout = self.git_timeout
        found = await check_project(host, project, timeout=timeout)
        root = await self.root(host)
        toplevel = await host.realpath(found.toplevel)
        if toplevel == root or within(toplevel, root) or within(root, toplevel):
            raise BadRequest(f"the project {toplevel} and the worktree root {root} overlap")
        ws_id = self._fresh_id()
        name = branch or f"stoker/{ws_id}"
        await check_branch(host, found, name, timeout=timeout)
        path = os.path.join(root, project_key(toplevel), ws_id)
        now = time.time()
        ws = rec.Workspace(id=ws_id, project=toplevel, path=path, branch=name, base=found.head,
                           state=rec.CREATING, created=now, updated=now, computer=computer,
                           common_dir=found.common_dir, diff_hash=EMPTY_FINGERPRINT)
        # Registered (and durable) before the directory exists, so the reaper never takes
        # it for a stray worktree. Shielded: a client hanging up must not leave it half-made.
        with trio.CancelScope(shield=True):
            async with self.lock:
                self.workspaces[ws.id] = ws
                self.save(ws)
            await self.store.flush()
            await host.make_dirs(os.path.dirname(path))
            try:
                await add_worktree(host, found, path, name, timeout=timeout)
            except Exception as exc:
                await self._creation_failed(host, ws, exc)
                raise
            async with self.lock:
                ws.state = rec.ACTIVE
                self.save(ws)
            await self.store.flush()
        self.log.info("workspace created", workspace=ws.id, project=toplevel, branch=name,
                      path=path, base=found.head)
        return ws

    async def _creation_failed(self, host: WorktreeHost, ws: rec.Workspace,
                               exc: Exception) -> None:
        message = getattr(exc, "message", None) or str(exc)
        left = await host.info(ws.path)
        async with self.lock:
            if left.kind == "missing":
                ws.state = rec.FAILED
            else:
                # Something was created: let the reaper judge it like any orphan.
                ws.state = rec.ORPHANED
                ws.orphaned_at = time.time()
            ws.reason = "creation failed"
            ws.detail = message
            self.save(ws)
        await self.store.flush()

    # ------------------------------------------------------------------ open / close

    async def usable(self, workspace: str) -> rec.Workspace:
        """The workspace, ready for a chat: an orphaned one becomes active again."""
        ws = self.get(workspace)
        if ws.state == rec.ACTIVE:
            return ws
        if ws.state == rec.ORPHANED:
            async with self.lock:
                if ws.state == rec.ORPHANED:
                    ws.state = rec.ACTIVE
                    ws.orphaned_at = None
                    ws.reason = ws.detail = ""
                    self.save(ws)
            await self.store.flush()
            if ws.state == rec.ACTIVE:
                self.log.info("workspace reopened", workspace=ws.id)
                return ws
        if ws.state == rec.TRASHED:
            raise InvalidState(f"workspace {ws.id} was removed by the reaper; bring it back "
                               f"with `stoker workspace restore {ws.id}`")
        raise InvalidState(f"workspace {ws.id} is {ws.state}")

    async def open_chat(self, req: m.OpenChat, client: str) -> m.ChatInfo:
        """`OpenChat` with `workspace` or `project` (delegated by the core `open_chat`)."""
        del client
        if req.workspace is not None and req.project is not None:
            raise BadRequest("give a workspace or a project, not both")
        existing = None
        if req.chat is not None:
            try:
                existing = self.pool.get_chat(req.chat)
            except UnknownChat:
                existing = None
        if existing is not None:
            if req.workspace is not None and existing.workspace != req.workspace:
                where = (f"workspace {existing.workspace}" if existing.workspace
                         else f"{existing.cwd}, in no workspace")
                raise BadRequest(f"chat {existing.id!r} works in {where}, not in workspace "
                                 f"{req.workspace}; a new --chat id starts a chat there")
            if existing.workspace is None:
                raise BadRequest(f"chat {existing.id!r} is not in a workspace")
            await self.usable(existing.workspace)
            return await self.pool.open_chat(
                chat_id=existing.id, agent=req.agent, cwd=None, policy=req.policy,
                title=req.title, mcp=req.mcp_servers)
        if not req.create:
            raise UnknownChat(req.chat or "")
        agents = self.settings.agents
        if req.agent is not None and req.agent not in agents:
            raise UnknownAgent(req.agent, list(agents))
        created = req.workspace is None
        if req.workspace is not None:
            ws = await self.usable(req.workspace)
        else:
            assert req.project is not None
            ws = await self.create(req.project, computer=req.computer)
        try:
            return await self.pool.open_chat(
                chat_id=req.chat, agent=req.agent, cwd=ws.path, workspace=ws.id,
                computer=ws.computer, policy=req.policy, title=req.title,
                mcp=req.mcp_servers)
        except Exception:
            if created:
                await self.close(ws.id, reason="its chat could not be opened")
            raise

    async def close(self, workspace: str, reason: str = "") -> rec.Workspace:
        """Close the workspace's chats and mark it orphaned (idempotent)."""
        ws = self.get(workspace)
        if ws.state not in (rec.ACTIVE, rec.ORPHANED, rec.CREATING):
            raise InvalidState(f"workspace {ws.id} is {ws.state}")
        for chat in self.open_chats(ws.id):
            await self.pool.close(chat, reason=f"workspace {ws.id} closed")
        async with self.lock:
            if ws.state == rec.ACTIVE:
                ws.state = rec.ORPHANED
                ws.orphaned_at = time.time()
                ws.reason = ""
                ws.detail = reason
                self.save(ws)
        await self.store.flush()
        self.log.info("workspace closed", workspace=ws.id, reason=reason)
        return ws

    # ------------------------------------------------------------------ diff

    async def _changes(self, ws: rec.Workspace, *, want_patch: bool,
                       want_stat: bool = False) -> DiffData:
        """The worktree's change set since its base: what `workspace diff` shows and what
        the per-turn check fingerprints, computed the same way (scratch index in the root's
        scratch dir, the configured git timeout)."""
        host = self.host(ws.computer)
        root = await self.root(host)
        return await diff(host, ws.path, ws.base, scratch_dir=os.path.join(root, SCRATCH_DIR),
                          timeout=self.git_timeout, want_patch=want_patch, want_stat=want_stat)

    async def diff(self, req: m.WorkspaceDiff) -> m.DiffResult:
        ws = self.get(req.workspace)
        if ws.state not in rec.LIVE_STATES:
            raise InvalidState(f"workspace {ws.id} is {ws.state}: no worktree to diff")
        data = await self._changes(ws, want_patch=req.patch, want_stat=req.stat)
        limit = max(int(self.settings.config.daemon.max_frame) // 2, 4096)
        patch = data.patch[:limit]
        return m.DiffResult(
            workspace=ws.id, base=ws.base,
            files=[m.DiffFile(path=f.path, insertions=f.insertions, deletions=f.deletions,
                              binary=f.binary) for f in data.files],
            insertions=sum(f.insertions for f in data.files),
            deletions=sum(f.deletions for f in data.files),
            summary=summary_line(data.files).strip(), stat=data.stat,
            patch=patch.decode("utf-8", errors="replace"),
            truncated=len(data.patch) > limit)

    def on_turn_end(self, chat: str, agent: str, turn: int, error: str | None) -> None:
        """Pool turn listener: schedule a (debounced) diff check of the chat's workspace."""
        del agent, error
        try:
            workspace = self.pool.get_chat(chat).workspace
        except UnknownChat:
            return
        if workspace is None or self.nursery is None:
            return
        self._diff_pending.setdefault(workspace, {})[chat] = turn
        if workspace not in self._diff_running:
            self._diff_running.add(workspace)
            self.nursery.start_soon(self._diff_worker, workspace)

    async def _diff_worker(self, workspace: str) -> None:
        try:
            while workspace in self._diff_pending:
                await trio.sleep(DIFF_DEBOUNCE)
                chats = self._diff_pending.pop(workspace)
                try:
                    await self._publish_diff(workspace, chats)
                except GitError as exc:
                    self.log.warning("diff check failed", workspace=workspace,
                                     error=exc.message)
                except Exception:
                    self.log.exception("diff check failed", workspace=workspace)
        finally:
            self._diff_running.discard(workspace)

    async def _publish_diff(self, workspace: str, chats: dict[str, int]) -> None:
        ws = self.workspaces.get(workspace)
        if ws is None or ws.state not in rec.LIVE_STATES:
            return
        data = await self._changes(ws, want_patch=False)
        self.diff_checks += 1
        if data.fingerprint == ws.diff_hash:
            return
        ws.diff_hash = data.fingerprint
        self.save(ws)
        body = d.Diff(workspace=ws.id, files=len(data.files),
                      insertions=sum(f.insertions for f in data.files),
                      deletions=sum(f.deletions for f in data.files),
                      stat=summary_line(data.files).strip())
        for chat, turn in chats.items():
            if self.hub.channel(chat) is not None:
                self.hub.publish(chat, turn, body)

    # ------------------------------------------------------------------ lists

    def list(self, include_deleted: bool) -> m.WorkspaceList:
        items = sorted(self.workspaces.values(), key=lambda w: w.created)
        return m.WorkspaceList(workspaces=[
            self.info(ws) for ws in items if include_deleted or ws.state in rec.LISTED_STATES])

"""CLI commands for workspaces: `workspace new|ls|close|restore`, `diff`, `reap`.

Human output goes to stdout as tables or git's own diff text; `--json` prints the daemon's
typed result instead. `workspace new` prints just the id on stdout so that scripts can
capture it (`ws=$(stoker workspace new --project .)`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from daemon.cli.common import eprint, print_table, show, subcommand
from protocol import messages as m


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ws = sub.add_parser("workspace", help="manage workspaces (git worktrees of a project)",
                        description="Workspaces are git worktrees of a project in which "
                        "chats run their agents; see docs/WORKSPACES.md.")
    wsub = ws.add_subparsers(dest="workspace_command", metavar="ACTION")
    wsub.required = True

    cmd = subcommand

    p = cmd(wsub, "new", cmd_new, "create a workspace: a worktree of PROJECT on a new "
            "branch from its HEAD; prints the workspace id")
    p.add_argument("--project", required=True, help="path inside the project's git "
                   "work tree")
    p.add_argument("--branch", help="name of the new branch (default stoker/<id>)")
    p.add_argument("--computer", metavar="NAME", help="create it on this [computers.NAME] "
                   "over SSH (PROJECT is a path there)")

    p = cmd(wsub, "ls", cmd_ls, "list workspaces with their state and why the reaper "
            "keeps them")
    p.add_argument("--all", action="store_true",
                   help="include purged, forgotten and failed workspaces")

    p = cmd(wsub, "close", cmd_close, "close a workspace's chats and mark it orphaned "
            "(the reaper removes it after the grace period if nothing would be lost)")
    p.add_argument("workspace", help="the workspace id (`stoker workspace ls` lists "
                   "them)")

    p = cmd(wsub, "restore", cmd_restore, "bring a reaped workspace back from the trash "
            "(before it is purged)")
    p.add_argument("workspace", help="workspace id or tombstone id")

    p = cmd(sub, "diff", cmd_diff, "show a workspace's changes since its base commit, "
            "committed or not, untracked files included")
    p.add_argument("workspace", help="the workspace id (`stoker workspace ls` lists "
                   "them)")
    p.add_argument("--stat", action="store_true", help="diffstat instead of the patch")

    p = cmd(sub, "reap", cmd_reap, "run the orphan-worktree reaper now and show what went, "
            "what stays, and why")
    p.add_argument("--dry-run", action="store_true", help="change nothing; only report")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def cmd_new(args: argparse.Namespace) -> int:
    # A remote project path is taken as given: this machine cannot resolve it.
    project = args.project if args.computer else os.path.abspath(args.project)

    def render(info: m.WorkspaceInfo) -> None:
        print(info.workspace, flush=True)
        eprint(f"worktree {info.path} on branch {info.branch} (base {info.base[:12]})")

    return show(args, m.WorkspaceNew(id=0, project=project, branch=args.branch,
                                     computer=args.computer), render)


def cmd_ls(args: argparse.Namespace) -> int:
    def render(result: m.WorkspaceList) -> None:
        rows = [["WORKSPACE", "STATE", "REASON", "BRANCH", "CHATS", "CREATED", "PATH"]]
        for w in result.workspaces:
            reason = w.reason + (f": {w.detail}" if w.detail and w.reason in (
                "error", "timeout", "unknown") else "")
            if w.state == "trashed" and w.purge_after is not None:
                reason = f"purge after {_when(w.purge_after)}"
            rows.append([w.workspace, w.state, reason or "-", w.branch, str(len(w.chats)),
                         _when(w.created_at), w.path])
        print_table(rows)

    return show(args, m.ListWorkspaces(id=0, include_deleted=args.all), render)


def cmd_close(args: argparse.Namespace) -> int:
    def render(info: m.WorkspaceInfo) -> None:
        eprint(f"workspace {info.workspace} closed; its worktree stays until the reaper "
               f"finds it safe to remove ({info.path})")

    return show(args, m.CloseWorkspace(id=0, workspace=args.workspace), render)


def cmd_restore(args: argparse.Namespace) -> int:
    def render(info: m.WorkspaceInfo) -> None:
        eprint(f"workspace {info.workspace} restored at {info.path}")
        if info.reason:
            eprint(f"warning: {info.reason}: {info.detail}")

    return show(args, m.RestoreWorkspace(id=0, workspace=args.workspace), render)


def cmd_diff(args: argparse.Namespace) -> int:
    def render(result: m.DiffResult) -> None:
        text = result.stat if args.stat else result.patch
        sys.stdout.write(text)
        sys.stdout.flush()
        if result.truncated:
            eprint("stoker: the diff was truncated; run git diff in the worktree for all of "
                   "it")

    return show(args, m.WorkspaceDiff(id=0, workspace=args.workspace,
                                      patch=not (args.json or args.stat),
                                      stat=args.stat and not args.json), render)


def cmd_reap(args: argparse.Namespace) -> int:
    def render(result: m.ReapResult) -> None:
        if not result.entries:
            print("nothing to reap")
            return
        rows = [["ACTION", "REASON", "WORKSPACE", "PATH", "DETAIL"]]
        for e in result.entries:
            action: str = e.action
            if e.action != "keep":
                action += "" if e.done else (" (would)" if result.dry_run else " (failed)")
            rows.append([action, e.reason, e.workspace or "-", e.path, e.detail])
        print_table(rows)

    return show(args, m.Reap(id=0, dry_run=args.dry_run), render)

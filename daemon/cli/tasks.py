"""CLI commands for background tasks (docs/TASKS.md): `task new|show|send|cancel` and
`tasks [CHAT]`, the task tree.

`task new` prints just the task id on stdout so that scripts can capture it
(`t=$(stoker task new --parent boss --agent echo "do x")`); `task show --wait S` waits for
the task to end and prints its result, exiting 0 only if it is done (scripts chain on it).
`--json` prints the daemon's typed result instead. A task is a chat: its id may be given by
a unique prefix, like any chat's."""

from __future__ import annotations

import argparse
import sys
import time

from daemon.cli.common import (
    Failure,
    UsageError,
    ask,
    chat_argument,
    eprint,
    out_json,
    resolve_chat,
    run_async,
    show,
    subcommand,
)
from protocol import messages as m


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    task = sub.add_parser("task", help="start and follow background tasks (child chats)",
                          description="A task is a chat with a parent chat: another agent "
                          "works on a prompt and its result comes back to the parent; see "
                          "docs/TASKS.md.")
    tsub = task.add_subparsers(dest="task_command", metavar="ACTION")
    tsub.required = True

    cmd = subcommand

    p = cmd(tsub, "new", cmd_new, "start a task under a parent chat; prints the task id")
    p.add_argument("--parent", required=True, metavar="CHAT", help="the parent chat (an "
                   "id, or a unique prefix of it)")
    p.add_argument("--agent", help="agent of the task (default: the parent's)")
    p.add_argument("--title", help="a short title (default: the start of the prompt)")
    p.add_argument("--workspace", metavar="WHERE", help="'parent' (default), 'worktree' "
                   "(a new worktree of the parent's project) or a directory inside the "
                   "parent's")
    p.add_argument("text", nargs="+", help="the task's prompt")

    p = cmd(tsub, "show", cmd_show, "a task's state and, once it ended, its result")
    chat_argument(p, "the task id, or a unique prefix of it (`stoker tasks` lists them)",
                  metavar="task")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for the task to end; then exit 0 only if it is "
                   "done (1: failed, cancelled, or still running)")

    p = cmd(tsub, "send", cmd_send, "a follow-up prompt for a finished task")
    chat_argument(p, "the task id, or a unique prefix of it (`stoker tasks` lists them)",
                  metavar="task")
    p.add_argument("text", nargs="+")

    p = cmd(tsub, "cancel", cmd_cancel, "cancel a task (and the tasks it started)")
    chat_argument(p, "the task id, or a unique prefix of it (`stoker tasks` lists them)",
                  metavar="task")

    p = cmd(sub, "tasks", cmd_tree, "the task tree: every task, or those below CHAT")
    chat_argument(p, "show only the tasks below this chat (an id, or a unique prefix of "
                  "it)", optional=True)


def cmd_new(args: argparse.Namespace) -> int:
    text = " ".join(args.text).strip()
    if not text:
        raise UsageError("the prompt is empty")

    parent = run_async(lambda: resolve_chat(args, args.parent))

    def render(info: m.TaskInfo) -> None:
        print(info.task, flush=True)
        eprint(f"task {info.task} on {info.agent}: {info.state} (parent {info.parent}, "
               f"depth {info.depth}, in {info.cwd})")

    return show(args, m.TaskNew(id=0, parent=parent, prompt=text, agent=args.agent,
                                title=args.title, workspace=args.workspace), render)


def _render_one(info: m.TaskInfo) -> None:
    line = f"{info.task}  {info.state}  {info.agent}  {info.title}"
    if info.error:
        line += f"  ({info.error})"
    print(line)
    if info.files_changed:
        print("files changed: " + ", ".join(info.files_changed))
    if info.state not in ("queued", "running") and info.result:
        print()
        print(info.result)
    sys.stdout.flush()


def cmd_show(args: argparse.Namespace) -> int:
    async def main() -> int:
        info: m.TaskInfo = await ask(args, m.GetTask(id=0, task=args.chat,
                                                     wait=max(0.0, args.wait)))
        if args.json:
            out_json(info)
        else:
            _render_one(info)
        if args.wait <= 0 or info.state == "done":
            return 0
        # Asked to wait for the end, a script goes on only after a task that succeeded
        # (like `stoker wait`).
        if info.state in ("queued", "running"):
            eprint(f"stoker: task {info.task} is still {info.state} after {args.wait:g}s")
        return 1

    return run_async(main)


def cmd_send(args: argparse.Namespace) -> int:
    return show(args, m.TaskSend(id=0, task=args.chat, prompt=" ".join(args.text)),
                _render_one)


def cmd_cancel(args: argparse.Namespace) -> int:
    return show(args, m.TaskCancel(id=0, task=args.chat), _render_one)


def tree_lines(tasks: list[m.TaskInfo], root: str | None, now: float) -> list[str]:
    """The tree of `tasks` as text lines: under `root` (its tasks), or under every parent
    that is not itself a task. Pure, for tests."""
    children: dict[str, list[m.TaskInfo]] = {}
    for info in tasks:
        children.setdefault(info.parent, []).append(info)
    ids = {info.task for info in tasks}
    roots = [root] if root is not None else [p for p in children if p not in ids]
    lines: list[str] = []

    def walk(parent: str, prefix: str) -> None:
        kids = children.get(parent, [])
        for i, info in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{_label(info, now)}")
            walk(info.task, prefix + ("    " if last else "│   "))

    for parent in roots:
        lines.append(parent)
        walk(parent, "")
    return lines


def _label(info: m.TaskInfo, now: float) -> str:
    label = f"{info.task} [{info.state}] {info.agent}: {info.title}"
    if info.state == "running" and info.started_at is not None:
        label += f" ({now - info.started_at:.0f}s)"
    if info.error:
        label += f" ({info.error})"
    return label


def cmd_tree(args: argparse.Namespace) -> int:
    def render(listed: m.TaskList) -> None:
        if not listed.tasks:
            print("no tasks", file=sys.stderr)
            return
        for line in tree_lines(listed.tasks, args.chat, time.time()):
            print(line)
        sys.stdout.flush()

    async def main() -> int:
        listed: m.TaskList = await ask(args, m.ListTasks(id=0, parent=args.chat,
                                                         recursive=True))
        if args.chat is not None and not listed.tasks:
            # No tasks below it, or no such chat: the daemon answers both alike.
            chats: m.ChatList = await ask(args, m.ListChats(id=0, include_closed=True))
            if all(c.chat != args.chat for c in chats.chats):
                raise Failure(f"unknown chat {args.chat!r}", "unknown_chat")
        if args.json:
            out_json(listed)
        else:
            render(listed)
        return 0

    return run_async(main)

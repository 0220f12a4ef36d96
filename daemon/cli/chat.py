"""CLI commands for the daemon and its chats: daemon, status, agents, send, ls, inspect,
cancel, close, permit, policy, mode, config, auth, attach, log, reload, echo-agent.

`send` (in `send`), `attach`/`log` (in `follow`) and `reload` (in `ops`) live apart; this
module registers them with the rest so that `stoker --help` keeps one order."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import msgspec

from daemon.actors.lifecycle import State
from daemon.cli.common import (
    Failure,
    UsageError,
    add_common,
    ask,
    chat_argument,
    eprint,
    out_json,
    paths_from,
    print_table,
    resolve_chat,
    run_async,
    show,
)
from daemon.cli.follow import cmd_attach, cmd_log
from daemon.cli.ops import cmd_reload
from daemon.cli.send import cmd_send
from protocol import deltas as d
from protocol import messages as m

CHAT_STATES = [state.value for state in State]
"""What `stoker ls` shows in STATE: the chat's agent's state (`closed` for a closed chat)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def cmd(name: str, handler: Callable[[argparse.Namespace], int], help_text: str,
            *, json_flag: bool = True, chat: bool = False) -> argparse.ArgumentParser:
        """`chat`: the command names an existing chat (positional CHAT), which may be given
        by a unique prefix of its id."""
        parser = sub.add_parser(name, help=help_text, description=help_text)
        add_common(parser, json_flag=json_flag)
        parser.set_defaults(handler=handler)
        if chat:
            chat_argument(parser)
        return parser

    p = cmd("daemon", cmd_daemon, "run the daemon in the foreground (--json: when it stops, "
            "one object with its exit status; errors as JSON)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="override [daemon] log_level")

    p = cmd("status", cmd_status, "show the daemon's pid, uptime, version and actor counts")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait up to SECONDS for the "
                   "daemon to answer (it is starting) instead of failing at once")
    cmd("agents", cmd_agents, "list the agents the daemon can run")

    p = cmd("send", cmd_send, "send a prompt to a chat and stream the reply")
    p.add_argument("--chat", help="chat id (created when it does not exist)")
    p.add_argument("--agent", help="agent name (default: the chat's agent, or the "
                   "configured default)")
    p.add_argument("--cwd", help="working directory for a new chat (default: here)")
    p.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="attach an image (repeatable)")
    p.add_argument("--file", action="append", default=[], metavar="PATH",
                   help="embed a text file's content (repeatable)")
    p.add_argument("--link", action="append", default=[], metavar="PATH",
                   help="attach a link to a file (repeatable)")
    p.add_argument("--policy", choices=["ask", "allow", "deny"],
                   help="permission policy of the chat (an existing one's changes)")
    p.add_argument("--project", metavar="PATH", help="run a new chat in a new workspace "
                   "(a git worktree) of this project; see `stoker workspace`")
    p.add_argument("--workspace", metavar="ID", help="run a new chat in this workspace")
    p.add_argument("--computer", metavar="NAME", help="run a new chat's agent on this "
                   "[computers.NAME] over SSH (--cwd is a path there; default: its home)")
    p.add_argument("-d", "--detach", action="store_true", help="print the chat and the turn "
                   "and return once the prompt is queued (see `stoker wait`)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the reply and "
                   "errors (no chat id, progress, tool calls or notices)")
    p.add_argument("text", nargs="*", help="the prompt (default: read stdin)")

    p = cmd("ls", cmd_ls, "list chats with their agent state")
    p.add_argument("--all", action="store_true", help="include closed chats")
    p.add_argument("--state", action="append", metavar="STATE", choices=CHAT_STATES,
                   help="only chats whose agent is in this state (repeatable): "
                   + ", ".join(CHAT_STATES))
    p.add_argument("--agent", action="append", metavar="NAME",
                   help="only chats of this agent (repeatable)")
    p.add_argument("--tree", action="store_true",
                   help="show tasks under the chats that started them (docs/TASKS.md)")

    p = cmd("inspect", cmd_inspect, "show a chat's agent: state, pid, session, capabilities",
            chat=True)

    p = cmd("cancel", cmd_cancel, "cancel the running turn of a chat", chat=True)
    p.add_argument("--queued", action="store_true", help="also drop the queued prompts")

    p = cmd("close", cmd_close, "close a chat and stop its agent", chat=True)

    p = cmd("permit", cmd_permit, "answer a permission request; `stoker permit ls [CHAT]` "
            "lists the requests waiting for an answer")
    p.add_argument("chat", help="chat id, or a unique prefix of it (or `ls`)")
    p.add_argument("request", nargs="?", help="request id (`stoker permit ls` lists them)")
    p.add_argument("option", nargs="?", help="option id (omit with --cancel)")
    p.add_argument("--cancel", action="store_true", help="answer `cancelled`")

    p = cmd("wait", cmd_wait, "wait until a turn of a chat has ended (default: its latest); "
            "exit 0 if it ended normally (end_turn), 1 otherwise", chat=True)
    p.add_argument("--turn", type=int, metavar="N", help="the turn to wait for")

    p = cmd("policy", cmd_policy, "set a chat's permission policy", chat=True)
    p.add_argument("policy", choices=["ask", "allow", "deny"], help="ask: every request waits "
                   "for `stoker permit`; allow / deny: answered at once")

    p = cmd("mode", cmd_mode, "set the session mode of a chat's agent", chat=True)
    p.add_argument("mode", help="a mode id (`stoker inspect CHAT` lists them)")

    p = cmd("config", cmd_config, "set a session config option (e.g. model)", chat=True)
    p.add_argument("option", help="an option id (`stoker inspect CHAT` lists them)")
    p.add_argument("value", help="its new value (true / false for a boolean)")

    p = cmd("auth", cmd_auth, "authenticate a chat's agent with one of its methods", chat=True)
    p.add_argument("method", help="an auth method id (`stoker inspect CHAT` lists them)")

    p = cmd("attach", cmd_attach, "follow a chat's deltas live, reconnecting as needed", chat=True)
    p.add_argument("--since", type=int, help="replay everything after this seq first "
                   "(0: all retained)")
    p.add_argument("--tail", type=int, metavar="N", help="replay the last N deltas first")

    p = cmd("log", cmd_log, "print a chat's retained deltas and exit", chat=True)
    p.add_argument("--since", type=int, default=0, help="only deltas after this seq")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N deltas")

    cmd("reload", cmd_reload, "make the daemon re-read its config (like SIGHUP)")

    p = sub.add_parser("echo-agent", help="run the built-in echo ACP agent on stdio",
                       add_help=False)
    p.set_defaults(handler=lambda a: 0)


# ---------------------------------------------------------------------- helpers


def _simple(args: argparse.Namespace, request: Any, done: str | None = None) -> int:
    async def main() -> int:
        result = await ask(args, request)
        if getattr(args, "json", False):
            out_json(result)
        elif done:
            eprint(done)
        return 0

    return run_async(main)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"


# ---------------------------------------------------------------------- commands


def cmd_daemon(args: argparse.Namespace) -> int:
    import trio

    from daemon import log as log_setup
    from daemon.config import file as config_mod
    from daemon.errors import ConfigError
    from daemon.listeners.unix import DaemonAlreadyRunning
    from daemon.service.root import StartupFailed, serve
    from daemon.store.faults import DatabaseUnusable

    paths = paths_from(args)
    try:
        config = config_mod.load(paths.config, must_exist=paths.config_explicit)
    except ConfigError as exc:
        raise Failure(f"invalid config: {exc.message}", "config") from None
    log_setup.setup(args.log_level or config.daemon.log_level,
                    pinned=args.log_level is not None)
    try:
        status = trio.run(serve, paths, config)
    except DaemonAlreadyRunning as exc:
        raise Failure(str(exc), "already_running") from None
    except StartupFailed as exc:
        raise Failure(str(exc), "startup") from None
    except PermissionError as exc:
        raise Failure(f"{exc}", "permission") from None
    except DatabaseUnusable as exc:
        raise Failure(str(exc), "database") from None
    if args.json:
        out_json({"stopped": True, "pid": os.getpid(), "status": status})
    return status


def cmd_status(args: argparse.Namespace) -> int:
    def render(result: m.StatusResult) -> None:
        counts = result.actors
        states = ", ".join(f"{k} {v}" for k, v in sorted(counts.by_state.items())) or "none"
        lines = [
            ("pid", str(result.pid)),
            ("version", result.version),
            ("uptime", _age(result.uptime)),
            ("socket", result.socket),
            ("state dir", result.state_dir),
            ("config", result.config),
            ("chats", str(result.chats)),
            ("agents", f"{counts.warm} warm, {counts.busy} busy ({states})"),
            ("agent memory", _size(result.memory_rss)),
            ("daemon memory", _size(result.daemon_rss)),
            ("restarts (1h)", str(result.restarts_last_hour)),
        ]
        if result.websocket:
            lines.append(("websocket", result.websocket))
        if result.mcp_http:
            lines.append(("mcp (http)", result.mcp_http))
        for key, value in lines:
            print(f"{key + ':':15} {value}")

    if args.wait is None:
        return show(args, m.GetStatus(id=0), render)

    async def main() -> int:
        import trio

        from daemon.client import DaemonNotRunning

        # Nothing announces a daemon that is starting to a client: its socket answering is
        # the event, so it is asked again (every 0.1 s) until the deadline.
        deadline = trio.current_time() + args.wait
        while True:
            try:
                result = await ask(args, m.GetStatus(id=0))
                break
            except DaemonNotRunning:
                if trio.current_time() >= deadline:
                    raise
                await trio.sleep(0.1)
        if args.json:
            out_json(result)
        else:
            render(result)
        return 0

    return run_async(main)


def cmd_agents(args: argparse.Namespace) -> int:
    def render(result: m.AgentsResult) -> None:
        rows = [["NAME", "AVAILABLE", "SOURCE", "PROCESS", "COMMAND"]]
        for a in result.agents:
            mark = "yes" if a.available else f"no ({a.reason})"
            name = f"{a.name}*" if a.name == result.default else a.name
            rows.append([name, mark, a.source, a.process, " ".join(a.command)])
        print_table(rows)

    return show(args, m.ListAgents(id=0), render)


def tree_order(chats: list[m.ChatSummary], parents: dict[str, str]
               ) -> list[tuple[int, m.ChatSummary]]:
    """`chats` with each task right under the chat that started it: (depth, chat). A task
    whose parent is not listed is shown as a root."""
    listed = {c.chat for c in chats}
    children: dict[str, list[m.ChatSummary]] = {}
    roots: list[m.ChatSummary] = []
    for c in chats:
        parent = parents.get(c.chat)
        if parent is not None and parent in listed and parent != c.chat:
            children.setdefault(parent, []).append(c)
        else:
            roots.append(c)
    out: list[tuple[int, m.ChatSummary]] = []
    seen: set[str] = set()

    def walk(chat: m.ChatSummary, depth: int) -> None:
        if chat.chat in seen:
            return
        seen.add(chat.chat)
        out.append((depth, chat))
        for child in children.get(chat.chat, []):
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return out


def cmd_ls(args: argparse.Namespace) -> int:
    def render(result: m.ChatList, parents: dict[str, str]) -> None:
        rows = [["CHAT", "AGENT", "STATE", "PID", "GEN", "RSS", "IDLE", "TURNS", "CWD"]]
        ordered = (tree_order(result.chats, parents) if args.tree
                   else [(0, c) for c in result.chats])
        for depth, c in ordered:
            name = ("  " * (depth - 1) + "└─ " if depth else "") + c.chat
            pid = str(c.pid or "-") + ("*" if c.process is not None else "")
            rows.append([name, c.agent, c.state, pid, str(c.generation),
                         _size(c.rss), _age(c.idle), str(c.turns), c.cwd])
        print_table(rows)
        if any(c.process is not None for _, c in ordered):
            print("* a shared agent process: RSS is the chat's share (docs/SHARED_PROCESSES.md)")

    async def main() -> int:
        closed = args.all or "closed" in (args.state or [])
        result: m.ChatList = await ask(args, m.ListChats(id=0, include_closed=closed))
        result.chats = [c for c in result.chats
                        if (not args.state or c.state in args.state)
                        and (not args.agent or c.agent in args.agent)]
        parents: dict[str, str] = {}
        if args.tree:
            tasks: m.TaskList = await ask(args, m.ListTasks(id=0))
            parents = {t.task: t.parent for t in tasks.tasks}
        if args.json:
            out_json(result)
        else:
            render(result, parents)
        return 0

    return run_async(main)


def cmd_inspect(args: argparse.Namespace) -> int:
    def render(result: m.ChatDetail) -> None:
        chat = result.chat
        print(f"chat:        {chat.chat}" + (" (closed)" if chat.closed else ""))
        print(f"agent:       {chat.agent}")
        print(f"cwd:         {chat.cwd}")
        print(f"policy:      {chat.policy}")
        print(f"head seq:    {chat.head_seq} (epoch {chat.epoch})")
        if result.parent:
            print(f"parent:      {result.parent} (this chat is a task; docs/TASKS.md)")
        if result.tasks:
            print(f"tasks:       {', '.join(result.tasks)}")
        for a in result.actors:
            print(f"\n[{a.agent}]")
            print(f"  state:       {a.state}" + (f" ({a.reason})" if a.reason else ""))
            print(f"  pid:         {a.pid or '-'}  generation {a.generation}")
            print(f"  session:     {a.session_id or '-'}")
            last = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a.last_activity))
                    if a.last_activity else "-")
            print(f"  activity:    {last}")
            print(f"  turns:       {a.turns}" + (f", {a.queued} queued" if a.queued else ""))
            if a.process is not None:
                print(f"  process:     shared {a.process.id} (pid {a.process.pid or '-'}, "
                      f"{a.process.sessions} sessions)")
            if a.mcp is not None:
                print(f"  mcp:         Stoker's server {a.mcp}")
            if a.rss is not None:
                share = " (this chat's share)" if a.process is not None else ""
                print(f"  rss:         {_size(a.rss)}{share}")
            info = a.agent_info
            if info:
                print(f"  agent:       {info.get('name', '?')} {info.get('version', '')}")
            caps = a.capabilities
            if caps:
                print(f"  capabilities: {msgspec.json.encode(caps).decode()}")
            if a.auth_methods:
                print("  auth:        " + ", ".join(
                    f"{x.get('id')} ({x.get('name')})" if x.get("name") else str(x.get("id"))
                    for x in a.auth_methods) + "  (`stoker auth CHAT METHOD`)")
            if a.modes:
                print(f"  mode:        {a.modes.get('currentModeId')} (available: "
                      + ", ".join(str(x.get('id')) for x in a.modes.get('availableModes', []))
                      + ")")
            for option in a.config_options:
                value = option.get("currentValue")
                shown = msgspec.json.encode(value).decode() if isinstance(value, bool) else value
                print(f"  config:      {option.get('id')} = {shown}")
            if a.models:
                available = ", ".join(str(x.get("modelId"))
                                      for x in a.models.get("availableModels", []))
                print(f"  model:       {a.models.get('currentModelId')} (available: "
                      f"{available})")
            u = a.usage
            if u.total_tokens or u.input_tokens or u.context_used is not None or u.cost:
                print(f"  usage:       in {u.input_tokens}, out {u.output_tokens}, cached "
                      f"{u.cached_tokens}, cost {u.cost:g} {u.currency or ''}".rstrip()
                      + (f", context {u.context_used}/{u.context_size}"
                         if u.context_used is not None else ""))
            if a.pending_permissions:
                print(f"  permissions: {', '.join(a.pending_permissions)}")
            if a.terminals:
                print(f"  terminals:   {', '.join(a.terminals)}")

    return show(args, m.Inspect(id=0, chat=args.chat), render)


def cmd_cancel(args: argparse.Namespace) -> int:
    return _simple(args, m.Cancel(id=0, chat=args.chat, queued=args.queued))


def cmd_close(args: argparse.Namespace) -> int:
    return _simple(args, m.CloseChat(id=0, chat=args.chat))


def cmd_permit(args: argparse.Namespace) -> int:
    if args.chat == "ls":
        if args.option is not None or args.cancel:
            raise UsageError("usage: stoker permit ls [CHAT]")
        return _permit_ls(args, args.request)
    if args.request is None:
        raise UsageError("give the REQUEST id (`stoker permit ls` lists them)")
    if args.cancel == (args.option is not None):
        raise UsageError("give an OPTION or --cancel (not both)")

    async def main() -> int:
        chat = await resolve_chat(args, args.chat)
        result = await ask(args, m.Permit(id=0, chat=chat, request=args.request,
                                          option=None if args.cancel else args.option))
        if args.json:
            out_json(result)
        return 0

    return run_async(main)


def _permit_ls(args: argparse.Namespace, only: str | None) -> int:
    """The permission requests waiting for an answer, from each open chat's snapshot (what
    a subscriber is given first: no history is read)."""
    from daemon.client import Client

    async def main() -> int:
        pending: list[dict[str, Any]] = []
        async with Client.connect(paths_from(args).socket, client="cli") as client:
            if only is not None:
                chats = [await resolve_chat(args, only)]
            else:
                listed: m.ChatList = await client.request(m.ListChats(id=0))
                chats = [c.chat for c in listed.chats]
            for chat in chats:
                sub: m.Subscribed = await client.request(m.Subscribe(id=0, chat=chat))
                await client.request(m.Unsubscribe(id=0, chat=chat))
                pending.extend({"chat": chat, **msgspec.to_builtins(p)}
                               for p in sub.snapshot.pending_permissions)
        if args.json:
            out_json({"permissions": pending})
            return 0
        if not pending:
            eprint("no permission requests are waiting")
            return 0
        rows = [["CHAT", "REQUEST", "AGENT", "TOOL", "OPTIONS"]]
        for p in pending:
            options = ", ".join(str(o.get("optionId")) for o in p["options"])
            rows.append([p["chat"], p["request"], p["agent"],
                         str(p["tool_call"].get("title", "?")), options])
        print_table(rows)
        return 0

    return run_async(main)


def cmd_wait(args: argparse.Namespace) -> int:
    """Replays the chat from its start (a turn's end may be long past) and follows it live
    until the turn's turn_ended."""
    from daemon.client import Client

    async def main() -> int:
        async with Client.connect(paths_from(args).socket, client="cli-wait") as client:
            sub: m.Subscribed = await client.request(
                m.Subscribe(id=0, chat=args.chat, since=m.Cursor(seq=0)))
            turn = args.turn if args.turn is not None else sub.snapshot.last_turn
            if sub.snapshot.last_turn == 0:
                raise UsageError(f"chat {args.chat} has had no turn yet: nothing to wait for")
            if turn < 1 or turn > sub.snapshot.last_turn:
                raise UsageError(f"chat {args.chat} has no turn {turn} (its latest is "
                                 f"{sub.snapshot.last_turn})")
            open_turns = sub.snapshot.turn
            async for event in client.events():
                if (isinstance(event, d.Delta) and event.turn == turn
                        and isinstance(event.body, d.TurnEnded)):
                    return _turn_outcome(args, turn, event.body)
                if (isinstance(event, m.ReplayComplete) and event.request is not None
                        and (open_turns is None or open_turns > turn)):
                    # Ended before the oldest delta still retained: its outcome is gone.
                    return _turn_outcome(args, turn, None)
        raise Failure("the connection to the daemon was lost before the turn ended",
                      "connection")

    return run_async(main)


def _turn_outcome(args: argparse.Namespace, turn: int, ended: d.TurnEnded | None) -> int:
    if ended is None:
        outcome = "ended (its outcome is no longer retained)"
        status = 0
    elif ended.error is not None:
        outcome, status = f"failed: {ended.error}", 1
    else:
        outcome = ended.stop_reason or "ended"
        status = 0 if ended.stop_reason == "end_turn" else 1
    if args.json:
        out_json({"chat": args.chat, "turn": turn,
                  "stop_reason": ended.stop_reason if ended else None,
                  "error": ended.error if ended else None})
    else:
        print(f"turn {turn}: {outcome}", flush=True)
    return status


def cmd_policy(args: argparse.Namespace) -> int:
    return _simple(args, m.SetPolicy(id=0, chat=args.chat, policy=args.policy))


def cmd_mode(args: argparse.Namespace) -> int:
    return _simple(args, m.SetMode(id=0, chat=args.chat, mode=args.mode))


def cmd_config(args: argparse.Namespace) -> int:
    value: str | bool = args.value
    if args.value.lower() in ("true", "false"):
        value = args.value.lower() == "true"
    return _simple(args, m.SetConfig(id=0, chat=args.chat, option=args.option, value=value))


def cmd_auth(args: argparse.Namespace) -> int:
    return _simple(args, m.Authenticate(id=0, chat=args.chat, method=args.method),
                   done="authenticated")

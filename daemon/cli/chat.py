"""CLI commands for the daemon and its chats: daemon, status, agents, send, ls, inspect,
cancel, close, permit, policy, mode, config, auth, attach, log, reload, echo-agent."""

from __future__ import annotations

import argparse
import base64
import mimetypes
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import msgspec

from daemon.cli.main import (
    Failure,
    UsageError,
    add_common,
    ask,
    eprint,
    out_json,
    paths_from,
    print_table,
    run_async,
    show,
)
from protocol import deltas as d
from protocol import messages as m


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def cmd(name: str, handler: Callable[[argparse.Namespace], int], help_text: str,
            *, json_flag: bool = True) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        add_common(parser, json_flag=json_flag)
        parser.set_defaults(handler=handler)
        return parser

    p = cmd("daemon", cmd_daemon, "run the daemon in the foreground", json_flag=False)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="override [daemon] log_level")

    cmd("status", cmd_status, "show the daemon's pid, uptime, version and actor counts")
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
                   help="permission policy for a new chat")
    p.add_argument("--project", metavar="PATH", help="run a new chat in a new workspace "
                   "(a git worktree) of this project; see `stoker workspace`")
    p.add_argument("--workspace", metavar="ID", help="run a new chat in this workspace")
    p.add_argument("--computer", metavar="NAME", help="run a new chat's agent on this "
                   "[computers.NAME] over SSH (--cwd is a path there; default: its home)")
    p.add_argument("text", nargs="*", help="the prompt (default: read stdin)")

    p = cmd("ls", cmd_ls, "list chats with their agent state")
    p.add_argument("--all", action="store_true", help="include closed chats")

    p = cmd("inspect", cmd_inspect, "show a chat's agent: state, pid, session, capabilities")
    p.add_argument("chat")

    p = cmd("cancel", cmd_cancel, "cancel the running turn of a chat")
    p.add_argument("chat")
    p.add_argument("--queued", action="store_true", help="also drop the queued prompts")

    p = cmd("close", cmd_close, "close a chat and stop its agent")
    p.add_argument("chat")

    p = cmd("permit", cmd_permit, "answer a permission request")
    p.add_argument("chat")
    p.add_argument("request", help="request id from the permission_request delta")
    p.add_argument("option", nargs="?", help="option id (omit with --cancel)")
    p.add_argument("--cancel", action="store_true", help="answer `cancelled`")

    p = cmd("policy", cmd_policy, "set a chat's permission policy")
    p.add_argument("chat")
    p.add_argument("policy", choices=["ask", "allow", "deny"])

    p = cmd("mode", cmd_mode, "set the session mode of a chat's agent")
    p.add_argument("chat")
    p.add_argument("mode")

    p = cmd("config", cmd_config, "set a session config option (e.g. model)")
    p.add_argument("chat")
    p.add_argument("option")
    p.add_argument("value")

    p = cmd("auth", cmd_auth, "authenticate a chat's agent with one of its methods")
    p.add_argument("chat")
    p.add_argument("method")

    p = cmd("attach", cmd_attach, "follow a chat's deltas live, reconnecting as needed")
    p.add_argument("chat")
    p.add_argument("--since", type=int, help="replay everything after this seq first "
                   "(0: all retained)")

    p = cmd("log", cmd_log, "print a chat's retained deltas and exit")
    p.add_argument("chat")
    p.add_argument("--since", type=int, default=0, help="only deltas after this seq")

    cmd("reload", cmd_reload, "make the daemon re-read its config (like SIGHUP)",
        json_flag=False)

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
    from daemon.service.root import serve
    from daemon.store.sqlite import DatabaseUnusable

    paths = paths_from(args)
    try:
        config = config_mod.load(paths.config, must_exist=paths.config_explicit)
    except ConfigError as exc:
        raise Failure(f"invalid config: {exc.message}") from None
    log_setup.setup(args.log_level or config.daemon.log_level,
                    pinned=args.log_level is not None)
    try:
        return trio.run(serve, paths, config)
    except DaemonAlreadyRunning as exc:
        raise Failure(str(exc)) from None
    except PermissionError as exc:
        raise Failure(f"{exc}") from None
    except DatabaseUnusable as exc:
        raise Failure(str(exc)) from None


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
            ("chats", str(result.chats)),
            ("agents", f"{counts.warm} warm, {counts.busy} busy ({states})"),
            ("agent memory", _size(result.memory_rss)),
            ("daemon memory", _size(result.daemon_rss)),
            ("restarts (1h)", str(result.restarts_last_hour)),
        ]
        if result.websocket:
            lines.append(("websocket", result.websocket))
        for key, value in lines:
            print(f"{key + ':':15} {value}")

    return show(args, m.GetStatus(id=0), render)


def cmd_agents(args: argparse.Namespace) -> int:
    def render(result: m.AgentsResult) -> None:
        rows = [["NAME", "AVAILABLE", "SOURCE", "COMMAND"]]
        for a in result.agents:
            mark = "yes" if a.available else f"no ({a.reason})"
            name = f"{a.name}*" if a.name == result.default else a.name
            rows.append([name, mark, a.source, " ".join(a.command)])
        print_table(rows)

    return show(args, m.ListAgents(id=0), render)


def _prompt_content(args: argparse.Namespace) -> list[Any]:
    text = " ".join(args.text)
    if not text and not sys.stdin.isatty() and not (args.image or args.file or args.link):
        text = sys.stdin.read()
    content: list[Any] = []
    for image in args.image:
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise Failure(f"cannot read image {image}: {exc.strerror}") from None
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if not mime.startswith("image/"):
            raise UsageError(f"{image} does not look like an image ({mime})")
        content.append(m.ImageBlock(data=base64.b64encode(data).decode(), mime_type=mime))
    for name in args.file:
        path = Path(name).resolve()
        try:
            body = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise Failure(f"{name} is not UTF-8 text; attach it with --link") from None
        except OSError as exc:
            raise Failure(f"cannot read {name}: {exc.strerror}") from None
        resource: dict[str, str] = {"uri": path.as_uri(), "text": body}
        file_mime = mimetypes.guess_type(path.name)[0]
        if file_mime:
            resource["mimeType"] = file_mime
        content.append(m.ResourceBlock(resource=resource))
    for name in args.link:
        path = Path(name).resolve()
        content.append(m.ResourceLinkBlock(uri=path.as_uri(), name=path.name,
                                           mime_type=mimetypes.guess_type(path.name)[0]))
    if text.strip():
        content.insert(0, m.TextBlock(text=text))
    if not content:
        raise UsageError("nothing to send: give the prompt as arguments or on stdin")
    return content


def cmd_send(args: argparse.Namespace) -> int:
    import trio

    from daemon.client import Client, ClientError, RequestFailed

    content = _prompt_content(args)
    paths = paths_from(args)
    cwd: str | None = os.path.abspath(args.cwd) if args.cwd else os.getcwd()
    project = os.path.abspath(args.project) if args.project else None
    if args.computer:
        # Paths on another computer are taken as given (this machine cannot resolve them).
        cwd = args.cwd
        project = args.project
    if sum(x is not None for x in (args.cwd, project, args.workspace)) > 1:
        raise UsageError("give at most one of --cwd, --project, --workspace")

    async def main() -> int:
        async with Client.connect(paths.socket, client="cli") as client:
            info: m.ChatInfo = await client.request(m.OpenChat(
                id=0, chat=args.chat, agent=args.agent, cwd=cwd,
                require_cwd=args.cwd is not None, policy=args.policy,
                workspace=args.workspace, project=project, computer=args.computer))
            if info.created and args.chat is None:
                eprint(f"chat: {info.chat}")
            if info.created and project is not None:
                eprint(f"workspace: {info.workspace} ({info.cwd})")
            await client.request(m.Subscribe(id=0, chat=info.chat, since=m.Cursor(
                seq=info.head_seq, epoch=info.epoch)))
            accepted: m.PromptAccepted = await client.request(m.Prompt(
                id=0, chat=info.chat, content=content, agent=args.agent))
            if accepted.queued and not args.json:
                eprint(f"queued behind {accepted.queued} turn(s)")
            return await _follow_turn(client, info.chat, accepted.turn, args.json)

    async def guarded() -> int:
        async with trio.open_nursery() as nursery:
            result: list[int] = []

            async def run() -> None:
                try:
                    result.append(await main())
                except RequestFailed as exc:
                    eprint(f"stoker: {exc.message}")
                    result.append(1)
                except ClientError as exc:
                    eprint(f"stoker: {exc}")
                    result.append(1)
                nursery.cancel_scope.cancel()

            async def interrupts() -> None:
                with trio.open_signal_receiver(signal.SIGINT) as signals:
                    count = 0
                    async for _ in signals:
                        count += 1
                        if count == 1:
                            eprint("stoker: cancelling the turn (Ctrl-C again to leave it "
                                   "running)")
                            nursery.start_soon(_cancel_chat, args, paths)
                        else:
                            result.append(130)
                            nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            nursery.start_soon(interrupts)
        return result[0] if result else 1

    return trio.run(guarded)


async def _cancel_chat(args: argparse.Namespace, paths: Any) -> None:
    from daemon.client import Client

    if args.chat is None:
        return
    async with Client.connect(paths.socket, client="cli") as client:
        await client.request(m.Cancel(id=0, chat=args.chat))


async def _follow_turn(client: Any, chat: str, turn: int, as_json: bool) -> int:
    """Stream one turn's reply until its turn_ended. Exit 0 on end_turn, 1 otherwise."""
    wrote_text = False
    async for event in client.events():
        if isinstance(event, m.Goodbye):
            eprint(f"stoker: the daemon closed the connection ({event.reason})")
            return 1
        if not isinstance(event, d.Delta) or event.chat != chat:
            continue
        body = event.body
        if as_json:
            out_json(event)
        if event.turn != turn and event.turn != 0:
            continue
        if isinstance(body, d.Text) and not as_json:
            sys.stdout.write(body.text)
            sys.stdout.flush()
            wrote_text = True
        elif isinstance(body, d.PermissionRequest) and not as_json and body.policy == "ask":
            options = ", ".join(f"{o.get('optionId')} ({o.get('kind')})" for o in body.options)
            eprint(f"\npermission requested [{body.request}]: "
                   f"{body.tool_call.get('title', 'tool call')}\n"
                   f"  answer with: stoker permit {chat} {body.request} OPTION   "
                   f"options: {options}")
        elif isinstance(body, d.Notice) and not as_json:
            eprint(f"[{body.level}] {body.message}")
        elif isinstance(body, d.TurnEnded) and event.turn == turn:
            if wrote_text and not as_json:
                sys.stdout.write("\n")
                sys.stdout.flush()
            if body.error is not None:
                if not as_json:
                    eprint(f"stoker: turn {turn} failed: {body.error}")
                return 1
            if body.stop_reason != "end_turn":
                if not as_json:
                    eprint(f"stoker: turn {turn} ended: {body.stop_reason}")
                return 1
            return 0
    eprint("stoker: the connection to the daemon was lost before the turn ended")
    return 1


def cmd_ls(args: argparse.Namespace) -> int:
    def render(result: m.ChatList) -> None:
        rows = [["CHAT", "AGENT", "STATE", "PID", "GEN", "RSS", "IDLE", "TURNS", "CWD"]]
        for c in result.chats:
            rows.append([c.chat, c.agent, c.state, str(c.pid or "-"), str(c.generation),
                         _size(c.rss), _age(c.idle), str(c.turns), c.cwd])
        print_table(rows)

    return show(args, m.ListChats(id=0, include_closed=args.all), render)


def cmd_inspect(args: argparse.Namespace) -> int:
    def render(result: m.ChatDetail) -> None:
        chat = result.chat
        print(f"chat:        {chat.chat}")
        print(f"agent:       {chat.agent}")
        print(f"cwd:         {chat.cwd}")
        print(f"policy:      {chat.policy}")
        print(f"head seq:    {chat.head_seq} (epoch {chat.epoch})")
        for a in result.actors:
            print(f"\n[{a.agent}]")
            print(f"  state:       {a.state}" + (f" ({a.reason})" if a.reason else ""))
            print(f"  pid:         {a.pid or '-'}  generation {a.generation}")
            print(f"  session:     {a.session_id or '-'}")
            last = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a.last_activity))
                    if a.last_activity else "-")
            print(f"  activity:    {last}")
            print(f"  turns:       {a.turns}" + (f", {a.queued} queued" if a.queued else ""))
            if a.rss is not None:
                print(f"  rss:         {_size(a.rss)}")
            info = a.agent_info
            if info:
                print(f"  agent:       {info.get('name', '?')} {info.get('version', '')}")
            caps = a.capabilities
            if caps:
                print(f"  capabilities: {msgspec.json.encode(caps).decode()}")
            if a.modes:
                print(f"  mode:        {a.modes.get('currentModeId')} (available: "
                      + ", ".join(str(x.get('id')) for x in a.modes.get('availableModes', []))
                      + ")")
            for option in a.config_options:
                print(f"  config:      {option.get('id')} = {option.get('currentValue')}")
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
    if args.cancel == (args.option is not None):
        raise UsageError("give an OPTION or --cancel (not both)")
    return _simple(args, m.Permit(id=0, chat=args.chat, request=args.request,
                                  option=None if args.cancel else args.option))


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


def cmd_reload(args: argparse.Namespace) -> int:
    return _simple(args, m.Reload(id=0), done="config reloaded")


# ---------------------------------------------------------------------- attach / log


class Renderer:
    """Human-readable rendering of deltas (and control messages) for attach and log.

    Streamed text is written as it comes; everything else is one bracketed line, started on
    a fresh line (the renderer remembers whether the last write ended one)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.at_line_start = True

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.at_line_start = text.endswith("\n")

    def line(self, text: str) -> None:
        if not self.at_line_start:
            self._write("\n")
        self._write(text + "\n")

    def finish(self) -> None:
        if not self.at_line_start:
            self._write("\n")
        self.out.flush()

    def render(self, event: Any) -> None:
        self._render(event)
        self.out.flush()

    def _render(self, event: Any) -> None:
        if isinstance(event, m.ResyncRequired):
            self.line(f"[resync: {event.reason}; continuing from seq {event.seq}]")
            snap = event.snapshot
            if snap.turn is not None:
                self.line(f">>> [turn {snap.turn}] {snap.turn_prompt or ''}")
                self._write(snap.turn_text)
            return
        if isinstance(event, m.Lagged):
            self.line(f"[lagged: replaying {event.missed} deltas]")
            return
        if not isinstance(event, d.Delta):
            return
        body = event.body
        if isinstance(body, d.Text):
            self._write(body.text)
        elif isinstance(body, d.Reasoning):
            self._write(f"\x1b[2m{body.text}\x1b[0m" if self.out.isatty() else body.text)
        elif isinstance(body, d.TurnStarted):
            self.line(f">>> [turn {event.turn} · {body.agent}] {body.prompt}")
        elif isinstance(body, d.TurnEnded):
            self.line(f"<<< [turn {event.turn}] {body.stop_reason or f'error: {body.error}'}")
        elif isinstance(body, d.Status):
            reason = f" ({body.reason})" if body.reason else ""
            self.line(f"[{body.agent} {body.state}{reason}]")
        elif isinstance(body, d.PermissionRequest):
            options = ", ".join(str(o.get("optionId")) for o in body.options)
            self.line(f"[permission {body.request}: {body.tool_call.get('title', '?')} — "
                      f"{options}]")
        elif isinstance(body, d.PermissionResolved):
            self.line(f"[permission {body.request}: {body.option or body.outcome} "
                      f"by {body.by}]")
        elif isinstance(body, d.ToolCall):
            self.line(f"[tool {body.title} ({body.status})]")
        elif isinstance(body, d.ToolUpdate):
            if body.status:
                self.line(f"[tool {body.tool_call_id} {body.status}]")
        elif isinstance(body, d.Notice):
            self.line(f"[{body.level}: {body.message}]")
        elif isinstance(body, d.Terminal):
            if body.event == "output":
                self._write(body.data)
            else:
                self.line(f"[terminal {body.terminal} {body.event}]")
        elif isinstance(body, d.Usage):
            if body.input_tokens is not None or body.output_tokens is not None:
                self.line(f"[usage: {body.input_tokens or 0} in, {body.output_tokens or 0} out]")
        elif isinstance(body, d.Diff):
            self.line(f"[diff {body.workspace}: {body.stat or f'{body.files} files'}]")
        elif isinstance(body, d.Mode):
            self.line(f"[mode {body.mode}]")
        else:
            self.line(f"[{type(body).__struct_config__.tag}]")


_renderer: Renderer | None = None


def _emit(event: Any, as_json: bool) -> None:
    global _renderer
    if as_json:
        if isinstance(event, d.Delta | m.ResyncRequired | m.Lagged):
            out_json(event)
    else:
        if _renderer is None:
            _renderer = Renderer(sys.stdout)
        _renderer.render(event)


def cmd_log(args: argparse.Namespace) -> int:
    from daemon.client import Client

    paths = paths_from(args)

    async def main() -> int:
        async with Client.connect(paths.socket, client="cli-log") as client:
            await client.request(m.Subscribe(id=0, chat=args.chat,
                                             since=m.Cursor(seq=max(args.since, 0)),
                                             live=False))
            async for event in client.events():
                if isinstance(event, m.ReplayComplete):
                    if _renderer is not None:
                        _renderer.finish()
                    return 0
                _emit(event, args.json)
        return 1

    return run_async(main)


def cmd_attach(args: argparse.Namespace) -> int:
    import trio

    from daemon.client import Client, ClientError, RequestFailed

    paths = paths_from(args)

    async def main() -> int:
        last: int | None = args.since
        epoch: str | None = None
        backoff = 0.2
        announced = False
        while True:
            try:
                async with Client.connect(paths.socket, client="cli-attach") as client:
                    since = None if last is None else m.Cursor(seq=last, epoch=epoch)
                    sub: m.Subscribed = await client.request(
                        m.Subscribe(id=0, chat=args.chat, since=since))
                    if announced:
                        eprint("stoker: reconnected")
                        announced = False
                    backoff = 0.2
                    if last is None:
                        last = sub.head_seq
                        snap = sub.snapshot
                        if snap.turn is not None and not args.json:
                            sys.stdout.write(f">>> [turn {snap.turn}] {snap.turn_prompt}\n"
                                             f"{snap.turn_text}")
                            sys.stdout.flush()
                    epoch = sub.epoch
                    async for event in client.events():
                        if isinstance(event, m.Goodbye):
                            break
                        if isinstance(event, d.Delta):
                            if event.chat != args.chat or (last is not None
                                                           and event.seq <= last):
                                continue
                            last = event.seq
                        elif isinstance(event, m.ResyncRequired):
                            last = event.seq
                            epoch = event.epoch
                        _emit(event, args.json)
            except RequestFailed as exc:
                raise Failure(exc.message) from None
            except ClientError as exc:
                if not announced:
                    eprint(f"stoker: {exc}; reconnecting")
                    announced = True
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    return run_async(main)

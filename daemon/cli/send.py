"""`stoker send`: open (or find) a chat, send it one prompt and stream the reply until the
turn ends. The first Ctrl-C cancels the turn this command started (another client's turn in
the same chat runs on), the second leaves it running; either way the exit status is 130.
"""

from __future__ import annotations

import argparse
import base64
import mimetypes
import os
import signal
import sys
from pathlib import Path
from typing import Any

from daemon.cli.common import Failure, UsageError, eprint, out_json, paths_from
from daemon.cli.reply import TurnView, Verbosity
from protocol import deltas as d
from protocol import messages as m


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


INSTALL_HINTS = {
    "qwen": "npm install -g @qwen-code/qwen-code",
    "gemini": "npm install -g @google/gemini-cli",
    "opencode": "npm install -g opencode-ai",
}
"""How to install the built-in agents whose package is well known (the rest: their docs)."""


async def _check_agent(client: Any, args: argparse.Namespace, paths: Any) -> None:
    """Before a chat is created or switched: the agent it would run must exist and be
    installed, or nothing is created and the error says how to fix it."""
    name = args.agent
    if name is None:
        if args.chat is not None:
            chats: m.ChatList = await client.request(m.ListChats(id=0, include_closed=True))
            if any(c.chat == args.chat for c in chats.chats):
                return  # an existing chat keeps its agent: the daemon reports on it
        agents: m.AgentsResult = await client.request(m.ListAgents(id=0))
        name = agents.default
    else:
        agents = await client.request(m.ListAgents(id=0))
    known = {a.name: a for a in agents.agents}
    agent = known.get(name)
    if agent is None and args.agent is None:
        raise Failure(f"the default agent {name!r} ([daemon] default_agent) is not an "
                      f"agent; the agents are {', '.join(sorted(known))} (`stoker agents`): "
                      f"give one with --agent, or set default_agent in {paths.config} to "
                      "one of them and `stoker reload`", "unknown_agent")
    if agent is None:
        raise Failure(f"no agent is called {name!r}; the agents are "
                      f"{', '.join(sorted(known))} (`stoker agents`), and others are added "
                      f"as [agents.NAME] in {paths.config}", "unknown_agent")
    if agent.available:
        return
    how = INSTALL_HINTS.get(name) if agent.source == "builtin" else None
    install = f"install it (`{how}`)" if how else "install it"
    raise Failure(f"agent {name} is not available: {agent.reason}. To use it, {install} so "
                  f"that `{agent.command[0]}` is on the daemon's PATH, or set its command "
                  f"in [agents.{name}] in {paths.config}; `stoker doctor` checks it. Nothing "
                  "was created.", "agent_unavailable")


class _Interrupts:
    """What Ctrl-C has asked of `send` so far: the first one cancels the turn this command
    started (or, before the prompt was sent, sends nothing); the second leaves the turn
    running. Either way the command exits 130."""

    def __init__(self) -> None:
        self.count = 0
        self.chat: str | None = None
        self.turn: int | None = None

    def interrupted(self) -> bool:
        """Asked afresh each time: the signal task changes `count` between awaits."""
        return self.count > 0


def cmd_send(args: argparse.Namespace) -> int:
    import trio

    from daemon.client import Client, ClientError

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
    interrupts = _Interrupts()

    async def main(cancel_turn: trio.Event) -> int:
        async with Client.connect(paths.socket, client="cli") as client:
            await _check_agent(client, args, paths)
            info: m.ChatInfo = await client.request(m.OpenChat(
                id=0, chat=args.chat, agent=args.agent, cwd=cwd,
                require_cwd=args.cwd is not None, policy=args.policy,
                workspace=args.workspace, project=project, computer=args.computer))
            if info.created and args.chat is None and not args.quiet:
                eprint(f"chat: {info.chat}")
            if info.created and project is not None and not args.quiet:
                eprint(f"workspace: {info.workspace} ({info.cwd})")
            if interrupts.interrupted():
                return 130  # interrupted before the prompt went out: nothing to cancel
            if args.detach:
                return await _detach(client, info.chat, content, args)
            await client.request(m.Subscribe(id=0, chat=info.chat, since=m.Cursor(
                seq=info.head_seq, epoch=info.epoch)))
            accepted: m.PromptAccepted = await client.request(m.Prompt(
                id=0, chat=info.chat, content=content, agent=args.agent))
            interrupts.chat, interrupts.turn = info.chat, accepted.turn
            if interrupts.interrupted():
                cancel_turn.set()
            if accepted.queued and not (args.json or args.quiet):
                eprint(f"queued behind {accepted.queued} turn(s)")
            status = await _follow_turn(client, info.chat, accepted.turn, args)
            return 130 if interrupts.interrupted() else status

    async def guarded() -> int:
        result: list[int] = []
        failed: list[ClientError] = []
        cancel_turn = trio.Event()
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                try:
                    result.append(await main(cancel_turn))
                except ClientError as exc:  # raised below, outside the nursery, for `main`
                    failed.append(exc)
                nursery.cancel_scope.cancel()

            async def cancel_when_asked() -> None:
                await cancel_turn.wait()
                assert interrupts.chat is not None
                with trio.move_on_after(10):
                    async with Client.connect(paths.socket, client="cli") as client:
                        await client.request(m.Cancel(id=0, chat=interrupts.chat,
                                                      turn=interrupts.turn))

            async def on_sigint() -> None:
                with trio.open_signal_receiver(signal.SIGINT) as signals:
                    async for _ in signals:
                        interrupts.count += 1
                        if interrupts.count == 1:
                            if interrupts.turn is None:
                                eprint("stoker: interrupted; not sending the prompt")
                            else:
                                eprint(f"stoker: cancelling turn {interrupts.turn} (Ctrl-C "
                                       "again to leave it running)")
                                cancel_turn.set()
                        else:
                            if interrupts.turn is not None:
                                eprint(f"stoker: leaving turn {interrupts.turn} running; "
                                       f"follow it with `stoker attach {interrupts.chat}`")
                            result.append(130)
                            nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            nursery.start_soon(on_sigint)
            nursery.start_soon(cancel_when_asked)
        if failed and not result:
            raise failed[0]
        return result[0] if result else 1

    return trio.run(guarded)


async def _detach(client: Any, chat: str, content: list[Any],
                  args: argparse.Namespace) -> int:
    """`send --detach`: queue the prompt, print where it went, return."""
    accepted: m.PromptAccepted = await client.request(m.Prompt(
        id=0, chat=chat, content=content, agent=args.agent))
    if args.json:
        out_json(accepted)
    else:
        print(f"{chat} {accepted.turn}", flush=True)
        if not args.quiet:
            eprint(f"turn {accepted.turn} queued; `stoker wait {chat} --turn {accepted.turn}` "
                   f"waits for it, `stoker attach {chat}` follows it")
    return 0


async def _follow_turn(client: Any, chat: str, turn: int, args: argparse.Namespace) -> int:
    """Stream one turn's reply until its turn_ended. Exit 0 on end_turn, 1 otherwise."""
    as_json = args.json
    view = TurnView(chat, turn, Verbosity(
        quiet=args.quiet, progress=not args.quiet and sys.stderr.isatty()))
    async for event in client.events():
        if isinstance(event, m.Goodbye):
            view.screen.end()
            raise Failure(f"the daemon closed the connection ({event.reason}) before turn "
                          f"{turn} ended; `stoker wait {chat} --turn {turn}` tells how it "
                          "ends", "connection")
        if not isinstance(event, d.Delta) or event.chat != chat:
            continue
        body = event.body
        if as_json:
            out_json(event)
        else:
            view.show(event)
            if (isinstance(body, d.Status) and body.state == "starting"
                    and view.verbosity.progress):
                await _say_resuming(client, chat, body.agent, view)
        if isinstance(body, d.TurnEnded) and event.turn == turn:
            if not as_json:
                view.screen.end()
            if body.error is not None:
                if not as_json:
                    eprint(f"stoker: turn {turn} failed: {body.error}")
                return 1
            if body.stop_reason != "end_turn":
                if not as_json:
                    eprint(f"stoker: turn {turn} ended: {body.stop_reason}")
                return 1
            return 0
    view.screen.end()
    raise Failure(f"the connection to the daemon was lost before turn {turn} ended; `stoker "
                  f"wait {chat} --turn {turn}` tells how it ends", "connection")


async def _say_resuming(client: Any, chat: str, agent: str, view: TurnView) -> None:
    """An agent starting for a chat that has a recorded session resumes it: say so."""
    from daemon.client import ClientError

    try:
        detail: m.ChatDetail = await client.request(m.Inspect(id=0, chat=chat))
    except ClientError:
        return
    for actor in detail.actors:
        if actor.agent == agent and actor.session_id:
            view.resuming(actor.session_id)

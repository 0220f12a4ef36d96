"""`stoker attach` and `stoker log`: a chat's deltas, live (reconnecting as needed) or as
retained, printed as JSON lines or rendered for people.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO, assert_never

from daemon.cli.common import Failure, UsageError, eprint, out_json, paths_from, run_async
from protocol import deltas as d
from protocol import messages as m


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
        elif isinstance(body, d.Task):
            title = f": {body.title}" if body.title else ""
            error = f": {body.error}" if body.error else ""
            self.line(f"[task {body.task} {body.event} ({body.agent}{title}){error}]")
        elif isinstance(body, d.Workflow):
            unit = f" {body.unit}" if body.unit else ""
            error = f": {body.error}" if body.error else ""
            self.line(f"[workflow {body.run}{unit} {body.state}{error}]")
        elif isinstance(body, d.Plan):
            self.line(f"[plan: {len(body.entries)} entries]")
        elif isinstance(body, d.Commands):
            self.line(f"[commands: {len(body.commands)} available]")
        elif isinstance(body, d.UserText):
            self.line(f"[user] {body.text}")
        elif isinstance(body, d.Content):
            self.line(f"[{body.role} {body.block.get('type', 'content')}]")
        elif isinstance(body, d.Config):
            self.line("[config: " + ", ".join(f"{o.get('id')} = {o.get('currentValue')}"
                                              for o in body.options) + "]")
        elif isinstance(body, d.Info):
            self.line(f"[title: {body.title}]" if body.title else "[session info]")
        elif isinstance(body, d.Raw):
            self.line(f"[{body.method}]")
        else:  # every kind of delta has its line above; mypy says when one has none
            assert_never(body)


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


async def _tail_start(client: Any, chat: str, tail: int) -> int:
    """The seq after which the last `tail` deltas of `chat` begin."""
    detail: m.ChatDetail = await client.request(m.Inspect(id=0, chat=chat))
    return max(detail.chat.head_seq - tail, 0)


def cmd_log(args: argparse.Namespace) -> int:
    from daemon.client import Client

    paths = paths_from(args)
    if args.tail is not None and args.tail < 0:
        raise UsageError("--tail takes a count of deltas (0 or more)")
    if args.since < 0:
        raise UsageError("--since takes a seq (0 or more)")

    async def main() -> int:
        async with Client.connect(paths.socket, client="cli-log") as client:
            since: int = args.since
            if args.tail is not None:
                since = max(since, await _tail_start(client, args.chat, args.tail))
            await client.request(m.Subscribe(id=0, chat=args.chat,
                                             since=m.Cursor(seq=since), live=False))
            async for event in client.events():
                if isinstance(event, m.ReplayComplete):
                    if _renderer is not None:
                        _renderer.finish()
                    return 0
                _emit(event, args.json)
        return 1

    return run_async(main)


def _header(chat: str, sub: m.Subscribed, since: int | None) -> str:
    """`attach`'s first line on stderr, so that a quiet chat does not look like a hang."""
    snap = sub.snapshot
    start = sub.head_seq if since is None else since
    agent = f"{snap.agent} {snap.state}" if snap.agent else "no agent started yet"
    running = f", turn {snap.turn} running" if snap.turn is not None else ""
    return f"following {chat} from seq {start}, {agent}{running}"


def cmd_attach(args: argparse.Namespace) -> int:
    import trio

    from daemon.client import Client, ClientError, RequestFailed

    paths = paths_from(args)
    if args.tail is not None and (args.tail < 0 or args.since is not None):
        raise UsageError("--tail takes a count of deltas (0 or more), without --since")
    if args.since is not None and args.since < 0:
        raise UsageError("--since takes a seq (0 or more)")

    async def main() -> int:
        last: int | None = args.since
        epoch: str | None = None
        backoff = 0.2
        announced = False
        while True:
            try:
                async with Client.connect(paths.socket, client="cli-attach") as client:
                    if last is None and args.tail is not None:
                        last = await _tail_start(client, args.chat, args.tail)
                    since = None if last is None else m.Cursor(seq=last, epoch=epoch)
                    sub: m.Subscribed = await client.request(
                        m.Subscribe(id=0, chat=args.chat, since=since))
                    if announced:
                        eprint("stoker: reconnected")
                        announced = False
                    elif epoch is None and not args.json:
                        eprint(_header(args.chat, sub, last))
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
                raise Failure(exc.message, str(exc.code)) from None
            except ClientError as exc:
                if not announced:
                    eprint(f"stoker: {exc}; reconnecting")
                    announced = True
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    return run_async(main)

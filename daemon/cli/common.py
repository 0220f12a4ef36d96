"""What every `stoker` command module shares: the two errors `main` maps to exit statuses,
the daemon-location flags, and the ways a command asks the daemon and prints the answer.

The command modules and `main` import this module; it imports none of them, so the parser
can list the command modules without a cycle.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


class UsageError(Exception):
    """Wrong arguments detected after parsing: exit status 2."""


class Failure(Exception):
    """The command failed: message on stderr (under `--json`, an error object on stdout
    with `code`), exit status 1."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


def add_common(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """The daemon-location flags every client command takes, and `--json` unless told not to."""
    group = parser.add_argument_group("daemon location")
    group.add_argument("--socket", help="daemon socket (default: $STOKER_SOCKET or "
                       "$XDG_RUNTIME_DIR/stoker/stoker.sock)")
    group.add_argument("--state-dir", help="state directory (default: $STOKER_STATE_DIR or "
                       "$XDG_STATE_HOME/stoker)")
    group.add_argument("--config", help="config file (default: $STOKER_CONFIG or "
                       "$XDG_CONFIG_HOME/stoker/config.toml)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="machine-readable output")


def chat_argument(parser: argparse.ArgumentParser, help_text: str = "chat id, or a unique "
                  "prefix of it", *, optional: bool = False, metavar: str = "chat") -> None:
    """The positional CHAT of a command that names an existing chat (`args.chat`, shown as
    `metavar`: a task is a chat too): completed from the daemon's chats, and taken by any
    unique prefix of an id (`resolve_chat_arg`)."""
    arg = parser.add_argument("chat", nargs="?" if optional else None, help=help_text,
                              metavar=metavar)
    arg.completer = chat_ids  # type: ignore[attr-defined]
    parser.set_defaults(chat_prefix=True)


def subcommand(parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
               handler: Callable[[argparse.Namespace], int], help_text: str
               ) -> argparse.ArgumentParser:
    """One action of a command group (`stoker workspace new`, `stoker task ls`): its parser,
    with the daemon-location flags and `--json`, calling `handler`."""
    parser = parent.add_parser(name, help=help_text, description=help_text)
    add_common(parser)
    parser.set_defaults(handler=handler)
    return parser


def paths_from(args: argparse.Namespace) -> Any:
    """The daemon's paths as the daemon itself resolves them, from these flags first."""
    from daemon.config.paths import resolve

    return resolve(socket=getattr(args, "socket", None),
                   state_dir=getattr(args, "state_dir", None),
                   config=getattr(args, "config", None))


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run an async command body under trio (imported here: not every command needs it)."""
    import trio

    return trio.run(fn)


def eprint(*parts: object) -> None:
    """A line on stderr, flushed: messages for people never mix into stdout's data."""
    print(*parts, file=sys.stderr, flush=True)


def out_json(obj: Any) -> None:
    """What `--json` prints: one JSON document per line, flushed (a reader of `attach
    --json` sees each delta as it comes). A result has every field, those at their default
    too (the wire leaves them out): `stoker tasks --json | jq '.tasks[]'` must not fail
    because there are none. msgspec is imported here, not at the top: `stoker echo-agent`
    goes through `main` and must start fast."""
    import msgspec

    sys.stdout.write(msgspec.json.encode(complete_result(obj)).decode() + "\n")
    sys.stdout.flush()


def complete_result(obj: Any) -> Any:
    """`obj` with each result struct (protocol.results) made a dict of all its fields, at
    any depth; anything else (deltas, content blocks, plain values) as it is."""
    import msgspec

    from protocol.results import Struct as ResultStruct

    if isinstance(obj, ResultStruct):
        return {f.encode_name: complete_result(getattr(obj, f.name))
                for f in msgspec.structs.fields(obj)}
    if isinstance(obj, list):
        return [complete_result(x) for x in obj]
    if isinstance(obj, dict):
        return {k: complete_result(v) for k, v in obj.items()}
    return obj


def print_table(rows: list[list[str]], out: TextIO | None = None) -> None:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    out = out or sys.stdout
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")
    out.flush()


async def ask(args: argparse.Namespace, request: Any, *, client: str = "cli") -> Any:
    """One request to the daemon on a connection of its own; its typed result."""
    from daemon.client import Client

    async with Client.connect(paths_from(args).socket, client=client) as conn:
        return await conn.request(request)


def show(args: argparse.Namespace, request: Any, render: Callable[[Any], None]) -> int:
    """The shape of most client commands: ask, then print the result as JSON under
    `--json`, else `render` it for people. Exit 0."""

    async def main() -> int:
        result = await ask(args, request)
        if args.json:
            out_json(result)
        else:
            render(result)
        return 0

    return run_async(main)


async def resolve_chat(args: argparse.Namespace, given: str) -> str:
    """The chat id that `given` names: itself when a chat has exactly that id, else the one
    chat whose id starts with it (closed chats included). Several matches are a usage
    error that lists them; none leaves `given` as it is, for the daemon to answer
    `unknown_chat`."""
    result = await ask(args, _list_all_chats())
    ids: list[str] = [c.chat for c in result.chats]
    if given in ids:
        return given
    matches = sorted(i for i in ids if i.startswith(given))
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        shown = ", ".join(matches[:8]) + (", ..." if len(matches) > 8 else "")
        raise UsageError(f"chat {given!r} is ambiguous: it begins {len(matches)} chat ids "
                         f"({shown})")
    return given


def _list_all_chats() -> Any:
    from protocol import messages as m

    return m.ListChats(id=0, include_closed=True)


def resolve_chat_arg(args: argparse.Namespace) -> None:
    """For the commands that name an existing chat (`set_defaults(chat_prefix=True)`):
    replace `args.chat` by the chat it is a unique prefix of, before the command runs."""
    if getattr(args, "chat_prefix", False) and getattr(args, "chat", None):
        args.chat = run_async(lambda: _resolve_if_answered(args, args.chat))


async def _resolve_if_answered(args: argparse.Namespace, given: str) -> str:
    """No daemon (yet): the id stays as given, and the command says what it says then
    (`attach` waits for the daemon; the others report it is not running)."""
    from daemon.client import DaemonNotRunning

    try:
        return await resolve_chat(args, given)
    except DaemonNotRunning:
        return given


def chat_ids(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Completer of a CHAT argument: the ids of the daemon's chats (none if it does not
    answer within a second: completing must never hang a shell)."""
    import trio

    from daemon.client import Client, ClientError
    from protocol import messages as m

    async def ask() -> list[str]:
        with trio.move_on_after(1.0):
            try:
                async with Client.connect(paths_from(parsed_args).socket,
                                          client="completion") as client:
                    listed: m.ChatList = await client.request(m.ListChats(id=0))
                    return [c.chat for c in listed.chats if c.chat.startswith(prefix)]
            except ClientError:
                pass
        return []

    return trio.run(ask)

"""`stoker`: the command line.

Exit status: 0 success, 1 failure (the message is on stderr), 2 usage error. Every command
that prints something takes `--json` for machine output. Client commands find the daemon's
socket the way the daemon chose it (flag, then STOKER_SOCKET, then the XDG default) and say
so in one line when no daemon answers.

Commands live in small modules (`cli_chat`, ...); each exposes `register(subparsers)` and is
listed in `COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

COMMAND_MODULES = [
    "daemon.cli.chat",
    "daemon.cli.websocket",
    "daemon.cli.acp",
    "daemon.cli.workspace",
    "daemon.cli.ops",
    "daemon.cli.computers",
]


class UsageError(Exception):
    """Wrong arguments detected after parsing: exit status 2."""


class Failure(Exception):
    """The command failed: message on stderr, exit status 1."""


def add_common(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    group = parser.add_argument_group("daemon location")
    group.add_argument("--socket", help="daemon socket (default: $STOKER_SOCKET or "
                       "$XDG_RUNTIME_DIR/stoker/stoker.sock)")
    group.add_argument("--state-dir", help="state directory (default: $STOKER_STATE_DIR or "
                       "$XDG_STATE_HOME/stoker)")
    group.add_argument("--config", help="config file (default: $STOKER_CONFIG or "
                       "$XDG_CONFIG_HOME/stoker/config.toml)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stoker",
        description="Stoker keeps ACP coding agents warm, supervised and safe.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def paths_from(args: argparse.Namespace) -> Any:
    from daemon.config.paths import resolve

    return resolve(socket=getattr(args, "socket", None),
                   state_dir=getattr(args, "state_dir", None),
                   config=getattr(args, "config", None))


def run_async(fn: Callable[[], Awaitable[int]]) -> int:
    import trio

    return trio.run(fn)


def eprint(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def out_json(obj: Any) -> None:
    """What `--json` prints: one JSON document per line, flushed (a reader of `attach
    --json` sees each delta as it comes). msgspec is imported here, not at the top: `stoker
    echo-agent` goes through this module and must start fast."""
    import msgspec

    sys.stdout.write(msgspec.json.encode(obj).decode() + "\n")
    sys.stdout.flush()


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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The echo agent must start fast and speak only ACP on stdout: no argparse, no trio.
    if argv[:1] == ["echo-agent"]:
        from daemon.echo_agent.agent import main as echo_main

        return echo_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        eprint(f"stoker {args.command}: error: {exc}")
        return 2
    except Failure as exc:
        eprint(f"stoker: {exc}")
        return 1
    except KeyboardInterrupt:
        eprint("stoker: interrupted")
        return 130
    except BrokenPipeError:
        # `stoker log CHAT | head`: the reader went away; that is not our failure.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return 0
    except Exception as exc:
        from daemon.client import ClientError, RequestFailed

        if isinstance(exc, RequestFailed):
            eprint(f"stoker: {exc.message}")
            return 1
        if isinstance(exc, ClientError):
            eprint(f"stoker: {exc}")
            return 1
        raise

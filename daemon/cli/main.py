"""`stoker`: the command line.

Exit status: 0 success, 1 failure (the message is on stderr), 2 usage error. Every command
that prints something takes `--json` for machine output. Client commands find the daemon's
socket the way the daemon chose it (flag, then STOKER_SOCKET, then the XDG default) and say
so in one line when no daemon answers.

Commands live in small modules; each one listed in `COMMAND_MODULES` exposes
`register(subparsers)` (`chat` also registers the commands of `send` and `follow`, in the
order `stoker --help` shows them). The helpers they share are in `common`, which imports
none of them: `main` imports the command modules, never the other way round.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from daemon.cli.common import Failure, UsageError, eprint

COMMAND_MODULES = [
    "daemon.cli.chat",
    "daemon.cli.websocket",
    "daemon.cli.acp",
    "daemon.cli.workspace",
    "daemon.cli.ops",
    "daemon.cli.computers",
    "daemon.cli.web",
]


def build_parser() -> argparse.ArgumentParser:
    """The whole `stoker` parser: every command module registers its subcommands."""
    parser = argparse.ArgumentParser(
        prog="stoker",
        description="Stoker keeps ACP coding agents warm, supervised and safe.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`stoker`'s entry point: run the command, map its errors to the exit status."""
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

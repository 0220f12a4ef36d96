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
import faulthandler
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from daemon.cli.common import Failure, UsageError, eprint, out_json, resolve_chat_arg

COMMAND_MODULES = [
    "daemon.cli.chat",
    "daemon.cli.websocket",
    "daemon.cli.acp",
    "daemon.cli.workspace",
    "daemon.cli.ops",
    "daemon.cli.computers",
    "daemon.cli.trace",
    "daemon.cli.completion",
    "daemon.cli.mcp",
    "daemon.cli.tasks",
    "daemon.cli.web",
    "daemon.cli.workflow",
]


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage error under `--json` is a JSON error object on stdout
    (exit 2 still). Subcommand parsers are made of the same class (argparse's default)."""

    json_errors = False
    """Set by `main` when `--json` is among the arguments: parsing may fail before any
    Namespace exists to say so."""

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        # The innermost parser that ran (`stoker workspace new`, not `stoker`): its usage
        # is the one a usage error shows. Subparsers finish first, so the first one wins.
        if not hasattr(parsed, USAGE_PARSER):
            setattr(parsed, USAGE_PARSER, self)
        return parsed, extras

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = usage_parser(parsed, self)
            takes_text = any(a.dest == "text" for a in command._actions)
            hint = (f" (text that starts with '-' goes after `--`: {command.prog} -- "
                    f"{extras[0]} ...)" if takes_text and extras[0].startswith("-") else "")
            command.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return parsed

    def error(self, message: str) -> NoReturn:
        if Parser.json_errors:
            out_json({"error": {"code": "usage", "message": f"{self.prog}: {message}"}})
            self.exit(2)
        super().error(message)


USAGE_PARSER = "_usage_parser"


def usage_parser(args: argparse.Namespace, default: argparse.ArgumentParser
                 ) -> argparse.ArgumentParser:
    """The parser of the (sub)command `args` were parsed by, whose usage fits them."""
    found = getattr(args, USAGE_PARSER, None)
    return found if isinstance(found, argparse.ArgumentParser) else default


GLOBAL_FLAGS = {"--json": False, "--socket": True, "--state-dir": True, "--config": True}
"""The options every client command takes (flag: whether it takes a value), which people
also write before the command (`stoker --json ls`, like `git -C DIR status`)."""


def hoist_global_flags(argv: list[str]) -> list[str]:
    """`argv` with the global flags written before the command moved after it: at the end,
    or before `--` when there is one (what follows `--` is text, never an option). The
    command's own parser then takes them, or says it does not."""
    leading: list[str] = []
    rest = list(argv)
    while rest:
        name = rest[0].split("=", 1)[0]
        if name not in GLOBAL_FLAGS:
            break
        takes_value = GLOBAL_FLAGS[name] and "=" not in rest[0]
        count = 2 if takes_value and len(rest) > 1 else 1
        leading += rest[:count]
        rest = rest[count:]
    if not leading:
        return rest
    at = rest.index("--") if "--" in rest else len(rest)
    return rest[:at] + leading + rest[at:]


def build_parser() -> argparse.ArgumentParser:
    """The whole `stoker` parser: every command module registers its subcommands."""
    from daemon.version import VERSION

    parser = Parser(
        prog="stoker",
        description="Stoker keeps ACP coding agents warm, supervised and safe.",
        epilog="Every client command takes --json (machine output), --socket, --state-dir "
        "and --config, before or after its name (`stoker --json ls`). `stoker COMMAND "
        "--help` shows a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"stoker {VERSION}")
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
    # `kill -USR1 PID` prints every thread's Python stack on stderr (the journal, for the
    # daemon): what a stuck process is doing, without a debugger (docs/OPERATIONS.md).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    Parser.json_errors = "--json" in argv
    parser = build_parser()
    argv = hoist_global_flags(argv)
    if not argv and "_ARGCOMPLETE" not in os.environ:
        # `stoker` alone: what it can do, rather than "the following arguments are
        # required: COMMAND". Still a usage error (exit 2).
        parser.print_help(sys.stderr)
        return 2
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (stoker completion)
        from daemon.cli.completion import complete

        complete(parser)
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    as_json = bool(getattr(args, "json", False))
    try:
        try:
            resolve_chat_arg(args)
            return handler(args)
        except BaseExceptionGroup as group:
            # A failure inside a trio nursery arrives wrapped; one lone error is mapped
            # like the same error raised directly.
            raise _lone(group) from None
    except BrokenPipeError:
        # `stoker send ... | head -c 60`: the reader went away, which is not our failure.
        # Exit quietly like a Unix tool; stdout's descriptor is pointed at /dev/null so
        # that the interpreter's last flush at exit has nowhere to fail.
        _quiet_stdout()
        return 0
    except Exception as exc:
        mapped = _map_error(exc)
        if mapped is None:
            raise
        status, code, message = mapped
    except KeyboardInterrupt:
        status, code, message = 130, "interrupted", "interrupted"
    if as_json:
        out_json({"error": {"code": code, "message": message}})
    elif status == 2:
        command = usage_parser(args, parser)
        command.print_usage(sys.stderr)
        eprint(f"{command.prog}: error: {message}")
    else:
        eprint(f"stoker: {message}")
    return status


def _map_error(exc: Exception) -> tuple[int, str, str] | None:
    """(exit status, error code, message) of a command's failure; None for a bug."""
    from daemon.client import ClientError, DaemonNotRunning, RequestFailed

    if isinstance(exc, UsageError):
        return 2, "usage", str(exc)
    if isinstance(exc, Failure):
        return 1, exc.code, str(exc)
    if isinstance(exc, RequestFailed):
        return 1, str(exc.code), exc.message
    if isinstance(exc, DaemonNotRunning):
        return 1, "daemon_not_running", str(exc)
    if isinstance(exc, ClientError):
        return 1, "connection", str(exc)
    return None


def _quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _lone(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside nested single-member groups, else the group itself."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc

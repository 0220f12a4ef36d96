"""`stoker token [--rotate]`: the WebSocket bearer token.

Works on the state dir directly, with no daemon running: the token is a file, and the
daemon reads that file on every WebSocket handshake, so a rotation here takes effect for the
next connection at once (open connections stay open).
"""

from __future__ import annotations

import argparse

from daemon.cli.common import Failure, add_common, out_json, paths_from
from daemon.listeners.websocket.token import TokenFileError, ensure_token, rotate_token


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    help_text = ("print the WebSocket bearer token (created on first use; "
                 "--rotate replaces it)")
    parser = sub.add_parser("token", help=help_text, description=help_text)
    add_common(parser)
    parser.add_argument("--rotate", action="store_true",
                        help="replace the token; the running daemon refuses the old one "
                        "from its next handshake on")
    parser.set_defaults(handler=cmd_token)


def cmd_token(args: argparse.Namespace) -> int:
    path = paths_from(args).token_file
    try:
        token = rotate_token(path) if args.rotate else ensure_token(path)
    except (TokenFileError, OSError) as exc:
        raise Failure(str(exc)) from None
    if args.json:
        out_json({"token": token, "file": str(path)})
    else:
        print(token)
    return 0

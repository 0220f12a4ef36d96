"""`stoker acp`: the command an editor runs as its ACP agent (see daemon/acp_agent.py and
docs/EDITORS.md). Only ACP goes to stdout; logs go to stderr."""

from __future__ import annotations

import argparse
import os

from daemon.cli.common import add_common, paths_from


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    help_text = ("speak ACP on stdio (for editors such as Zed), backed by a warm agent "
                 "in the daemon")
    parser = sub.add_parser("acp", help=help_text, description=help_text)
    add_common(parser, json_flag=False)
    parser.add_argument("--agent", help="agent of new sessions (default: the daemon's "
                        "default agent)")
    place = parser.add_mutually_exclusive_group()
    place.add_argument("--workspace", metavar="ID",
                       help="open new sessions in this workspace")
    place.add_argument("--project", metavar="PATH",
                       help="open new sessions in a new workspace of this project")
    parser.add_argument("--policy", choices=["ask", "allow", "deny"],
                        help="permission policy of new sessions (default: the daemon's)")
    parser.add_argument("--spawn-daemon", action="store_true",
                        help="start the daemon if it is not running")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"],
                        help="log level (logs go to stderr; default: warning)")
    parser.set_defaults(handler=cmd_acp)


def cmd_acp(args: argparse.Namespace) -> int:
    import trio

    from daemon import log as log_setup
    from daemon.editor.bridge import Bridge, BridgeOptions
    from daemon.editor.stdio import editor_streams, take_stdio, wait_reader_gone

    log_setup.setup(args.log_level)
    paths = paths_from(args)
    project = os.path.abspath(args.project) if args.project else None
    options = BridgeOptions(agent=args.agent, workspace=args.workspace, project=project,
                            policy=args.policy, spawn_daemon=args.spawn_daemon)
    receive_fd, send_fd = take_stdio()

    async def main() -> int:
        receive, send = editor_streams(receive_fd, send_fd, os.environ)
        try:
            await Bridge(options, paths).serve(
                receive, send, reader_gone=lambda: wait_reader_gone(send_fd))
        finally:
            with trio.CancelScope(shield=True):
                await send.aclose()
                await receive.aclose()
        return 0

    return trio.run(main)

"""`stoker mcp --chat ID`: Stoker's MCP server (stdio), which the daemon offers to every
agent session it opens (daemon/mcp/offer.py). Its tools let the agent of chat ID delegate
work to other warm agents: each is a thin call of a task request on the daemon's socket
(docs/TASKS.md), carrying the chat's credential from `STOKER_MCP_CREDENTIAL`, so the daemon
lets it touch only that chat's own tasks. A refusal comes back as a tool error the model
can read, never a hang.

Built on the official MCP SDK (`mcp.server.mcpserver.MCPServer`), run by anyio on trio like
the rest of Stoker; the server and the tools' bodies (daemon/mcp/server.py, tools.py) are
the ones the daemon serves over HTTP to agents that advertise it. Only MCP goes to stdout.
Once the agent got past the MCP handshake, it tells the daemon so (daemon/mcp/stdio.py).
"""

from __future__ import annotations

import argparse
import os

from daemon.cli.common import add_common, paths_from


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    help_text = "Stoker's MCP server for an agent's chat (stdio; the daemon offers it)"
    parser = sub.add_parser("mcp", help=help_text, description=help_text)
    add_common(parser, json_flag=False)
    parser.add_argument("--chat", required=True, help="the chat this server acts for")
    parser.set_defaults(handler=cmd_mcp)


def cmd_mcp(args: argparse.Namespace) -> int:
    import anyio

    from daemon.mcp.credentials import ENV_CREDENTIAL
    from daemon.mcp.offer import ENV_AGENT
    from daemon.mcp.stdio import serve

    anyio.run(serve, str(paths_from(args).socket), args.chat,
              os.environ.get(ENV_CREDENTIAL) or None, os.environ.get(ENV_AGENT) or None,
              backend="trio")
    return 0

"""`stoker web [--open]`: a link to the web console with a one-time login code.

The code is signed with the bearer token (which this command reads from the state dir, as
`stoker token` does) and works once, within two minutes; the daemon exchanges it for a
session cookie and redirects to `/`, so the token itself never sits in a URL or in the
browser's history. The console is served on the WebSocket's port: `[websocket] enabled`
must be on (docs/WEB.md).
"""

from __future__ import annotations

import argparse
import time

from daemon.cli.common import Failure, add_common, ask, out_json, paths_from, run_async
from daemon.listeners.http.sessions import CODE_TTL, mint_code
from daemon.listeners.websocket.token import TokenFileError, ensure_token


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    help_text = "print a one-time login link to the web console (--open: open it)"
    parser = sub.add_parser("web", help=help_text, description=help_text)
    add_common(parser)
    parser.add_argument("--open", action="store_true",
                        help="open the link in the default browser")
    parser.set_defaults(handler=cmd_web)


def login_url(base: str, token: str, now: float) -> str:
    """The console's login link for a daemon whose WebSocket URL is `base`."""
    http = base.replace("ws://", "http://", 1).replace("wss://", "https://", 1).rstrip("/")
    # A wildcard bind is reached on loopback from this machine.
    http = http.replace("//0.0.0.0:", "//127.0.0.1:", 1).replace("//[::]:", "//[::1]:", 1)
    return f"{http}/login?code={mint_code(token, now)}"


def cmd_web(args: argparse.Namespace) -> int:
    from protocol import messages as m

    async def status() -> int:
        result: m.StatusResult = await ask(args, m.GetStatus(id=0))
        urls.append(result.websocket or "")
        return 0

    urls: list[str] = []
    run_async(status)
    if not urls[0]:
        raise Failure("the web console needs the daemon's TCP listener: set [websocket] "
                      "enabled = true in the config and restart the daemon (a reload does "
                      "not start the listener; docs/WEB.md)")
    try:
        token = ensure_token(paths_from(args).token_file)
    except (TokenFileError, OSError) as exc:
        raise Failure(str(exc)) from None
    url = login_url(urls[0], token, time.time())
    if args.json:
        out_json({"url": url, "expires_in": CODE_TTL})
    else:
        print(url)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    return 0

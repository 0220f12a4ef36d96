"""The echo agent's knobs: command-line flags, falling back to environment variables, then
defaults (the package docstring lists them). Standard library only, so `stoker echo-agent`
starts fast.
"""

from __future__ import annotations

import argparse
import os


class Options:
    """The agent's knobs (see the package docstring)."""

    def __init__(
        self,
        *,
        state_dir: str,
        load: bool = True,
        resume: bool = True,
        close: bool = True,
        image: bool = True,
        require_auth: bool = False,
        fail_initialize: bool = False,
        startup_delay_ms: int = 0,
        linger: bool = False,
        models_only: bool = False,
        mcp_http: bool = False,
    ) -> None:
        self.mcp_http = mcp_http
        self.linger = linger
        self.models_only = models_only
        self.state_dir = state_dir
        self.load = load
        self.resume = resume
        self.close = close
        self.image = image
        self.require_auth = require_auth
        self.fail_initialize = fail_initialize
        self.startup_delay_ms = startup_delay_ms


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _default_state_dir() -> str:
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "stoker-echo")


def parse_options(argv: list[str] | None = None) -> Options:
    """Command-line flags, falling back to the environment variables, then defaults."""
    parser = argparse.ArgumentParser(
        prog="stoker echo-agent",
        description="Stoker's reference ACP agent (JSON-RPC on stdin/stdout). "
        "See the daemon.echo_agent module docstring for the prompt language.",
    )
    parser.add_argument("--state-dir", help="session files directory (env STOKER_ECHO_STATE)")
    parser.add_argument("--no-load", action="store_true", help="do not support session/load")
    parser.add_argument("--no-resume", action="store_true", help="do not support session/resume")
    parser.add_argument("--no-close", action="store_true", help="do not support session/close")
    parser.add_argument("--no-image", action="store_true", help="no image/embedded context")
    parser.add_argument(
        "--require-auth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="require authenticate(echo-login) first (env STOKER_ECHO_REQUIRE_AUTH=1)",
    )
    parser.add_argument(
        "--fail-initialize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="exit 4 on initialize (env STOKER_ECHO_FAIL_INIT=1)",
    )
    parser.add_argument("--models-only", action="store_true",
                        help="models state + session/set_model instead of configOptions")
    parser.add_argument(
        "--linger",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep running after stdin EOF (env STOKER_ECHO_LINGER=1)",
    )
    parser.add_argument(
        "--startup-delay",
        metavar="MS",
        type=int,
        default=None,
        help="sleep MS ms before reading stdin (env STOKER_ECHO_STARTUP_DELAY_MS)",
    )
    parser.add_argument(
        "--mcp-http",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="advertise mcpCapabilities.http (env STOKER_ECHO_MCP_HTTP=1)",
    )
    args = parser.parse_args(argv)
    delay: int | None = args.startup_delay
    if delay is None:
        raw = os.environ.get("STOKER_ECHO_STARTUP_DELAY_MS", "").strip()
        try:
            delay = int(raw) if raw else 0
        except ValueError:
            parser.error(f"STOKER_ECHO_STARTUP_DELAY_MS must be an integer, not {raw!r}")
    if delay < 0:
        parser.error("the startup delay must be >= 0")
    require_auth: bool | None = args.require_auth
    fail_initialize: bool | None = args.fail_initialize
    return Options(
        state_dir=args.state_dir or os.environ.get("STOKER_ECHO_STATE") or _default_state_dir(),
        load=not args.no_load,
        resume=not args.no_resume,
        close=not args.no_close,
        image=not args.no_image,
        require_auth=(
            require_auth if require_auth is not None else _env_flag("STOKER_ECHO_REQUIRE_AUTH")
        ),
        fail_initialize=(
            fail_initialize if fail_initialize is not None else _env_flag("STOKER_ECHO_FAIL_INIT")
        ),
        startup_delay_ms=delay,
        linger=args.linger if args.linger is not None else _env_flag("STOKER_ECHO_LINGER"),
        models_only=args.models_only,
        mcp_http=args.mcp_http if args.mcp_http is not None else _env_flag("STOKER_ECHO_MCP_HTTP"),
    )

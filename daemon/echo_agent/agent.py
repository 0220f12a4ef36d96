"""The echo agent's reader loop: one line of stdin at a time, dispatched to the JSON-RPC
methods, to the response a prompt worker waits for, or to session/cancel; and :func:`main`,
the entry point of ``python -m daemon.echo_agent`` and ``stoker echo-agent``. The package
docstring says what the agent does.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import IO

from daemon.echo_agent.client_calls import ClientCalls
from daemon.echo_agent.client_commands import ClientCommands
from daemon.echo_agent.commands import LocalCommands
from daemon.echo_agent.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RpcError,
)
from daemon.echo_agent.mcp_commands import McpCommands
from daemon.echo_agent.methods import SessionMethods
from daemon.echo_agent.options import Options, parse_options
from daemon.echo_agent.state import AgentState
from daemon.echo_agent.turns import TurnRunner
from daemon.echo_agent.wire import EXIT_JOIN_S, Wire, hang_forever

__all__ = ["EchoAgent", "Options", "main", "parse_options"]


class EchoAgent:
    """The agent proper: :meth:`serve` reads requests until EOF."""

    def __init__(
        self, options: Options, stdin: IO[bytes], stdout: IO[bytes], stderr: IO[str]
    ) -> None:
        self.options = options
        self._in = stdin
        self._wire = Wire(stdout, stderr)
        self._state = AgentState(options, self._wire)
        self._calls = ClientCalls(self._state)
        commands = {
            **LocalCommands(self._state).table(),
            **ClientCommands(self._state, self._calls).table(),
            **McpCommands(self._state).table(),
        }
        # The handlers get the runner as a callable: they do not depend on the prompt language.
        turns = TurnRunner(self._state, commands)
        self._methods = SessionMethods(self._state, turns.run).table()

    def serve(self) -> int:
        """Read and dispatch messages until stdin EOF; returns the exit status."""
        if self.options.startup_delay_ms > 0:
            time.sleep(self.options.startup_delay_ms / 1000)
        hung = self._state.hung
        while True:
            if hung.is_set():
                hang_forever()
            try:
                line = self._in.readline()
            except (OSError, ValueError):
                line = b""
            if hung.is_set():
                hang_forever()
            if not line:
                return self._shutdown()
            line = line.strip()
            if line:
                self._handle_line(line)

    def _shutdown(self) -> int:
        """Stdin EOF: cancel every running turn, give the workers EXIT_JOIN_S to answer, then
        exit 0 (at once if one is stuck). With ``--linger``, never."""
        if self.options.linger:
            hang_forever()
        state = self._state
        with state.cond:
            state.eof = True
            for session in state.sessions.values():
                if session.turn is not None:
                    session.turn.cancel.set()
            state.cond.notify_all()
            workers = list(state.workers)
        deadline = time.monotonic() + EXIT_JOIN_S
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if any(w.is_alive() for w in workers):
            self._wire.exit_now(0)
        return 0

    def _handle_line(self, line: bytes) -> None:
        """One message: a request is answered (now, or by a prompt worker), a response goes
        to the worker waiting for it, a notification other than session/cancel is ignored."""
        wire = self._wire
        try:
            message = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            wire.respond_error(None, RpcError(PARSE_ERROR, f"Parse error: {exc}"))
            return
        if not isinstance(message, dict):
            wire.respond_error(
                None, RpcError(INVALID_REQUEST, "Invalid Request: not a JSON object")
            )
            return
        request_id = message.get("id")
        if request_id is not None and not isinstance(request_id, (str, int)):
            wire.respond_error(None, RpcError(INVALID_REQUEST, "Invalid Request: bad id"))
            return
        method = message.get("method")
        if method is None:
            if "id" in message and ("result" in message or "error" in message):
                self._calls.handle_response(message)
            else:
                wire.respond_error(
                    request_id, RpcError(INVALID_REQUEST, "Invalid Request: no method")
                )
            return
        if not isinstance(method, str):
            wire.respond_error(
                request_id, RpcError(INVALID_REQUEST, "Invalid Request: method must be a string")
            )
            return
        params = message.get("params")
        if params is None:
            params = {}
        if "id" not in message:
            if method == "session/cancel" and isinstance(params, dict):
                self._state.cancel(params.get("sessionId"))
            return  # other notifications are ignored
        handler = self._methods.get(method)
        if handler is None:
            wire.respond_error(
                request_id, RpcError(METHOD_NOT_FOUND, "Method not found", {"method": method})
            )
            return
        try:
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params must be an object")
            result = handler(request_id, params)
        except RpcError as exc:
            wire.respond_error(request_id, exc)
            return
        except Exception as exc:  # a bug: say so, keep serving
            wire.log(f"{method} failed: {exc!r}")
            wire.respond_error(request_id, RpcError(INTERNAL_ERROR, f"Internal error: {exc}"))
            return
        if result is not None:
            wire.respond(request_id, result)


def main(argv: list[str] | None = None) -> int:
    """Run the echo agent on this process's stdin/stdout; returns the exit status."""
    options = parse_options(argv)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # not the main thread: leave signals alone
        pass
    agent = EchoAgent(options, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)
    try:
        return agent.serve()
    except KeyboardInterrupt:
        return 130

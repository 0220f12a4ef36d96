"""The echo agent's prompt commands that make requests to the client: ``/write`` and
``/read`` (fs/*), ``/permission`` (session/request_permission), ``/terminal`` (terminal/*)
and ``/ask`` (any method). A command refuses, with an ``error: ...`` chunk, what the client
did not advertise in initialize.
"""

from __future__ import annotations

import json
import os
from typing import Final

from daemon.echo_agent.client_calls import ClientCalls, error_text
from daemon.echo_agent.commands import Command, Usage
from daemon.echo_agent.jsonrpc import JsonObj
from daemon.echo_agent.sessions import Turn
from daemon.echo_agent.state import AgentState

OUTPUT_BYTE_LIMIT: Final = 65536


class ClientCommands:
    """The commands answered by asking the client."""

    def __init__(self, state: AgentState, calls: ClientCalls) -> None:
        self._state = state
        self._wire = state.wire
        self._calls = calls

    def table(self) -> dict[str, Command]:
        """Command word -> handler."""
        return {
            "/write": self._cmd_write,
            "/read": self._cmd_read,
            "/permission": self._cmd_permission,
            "/terminal": self._cmd_terminal,
            "/ask": self._cmd_ask,
        }

    @staticmethod
    def _abs_path(turn: Turn, path: str) -> str:
        return os.path.normpath(os.path.join(turn.session.cwd, os.path.expanduser(path)))

    def _cmd_write(self, turn: Turn, arg: str) -> None:
        if not self._state.can_write:
            self._wire.chunk(turn, "error: the client did not advertise fs.writeTextFile")
            return
        parts = arg.split(None, 1)
        if not parts:
            raise Usage("usage: /write PATH TEXT")
        path = self._abs_path(turn, parts[0])
        ok, _ = self._calls.ask(turn, "fs/write_text_file", {
            "sessionId": turn.session.session_id,
            "path": path,
            "content": parts[1] if len(parts) > 1 else "",
        })
        if ok:
            self._wire.chunk(turn, f"wrote {path}")

    def _cmd_read(self, turn: Turn, arg: str) -> None:
        if not self._state.can_read:
            self._wire.chunk(turn, "error: the client did not advertise fs.readTextFile")
            return
        if not arg:
            raise Usage("usage: /read PATH")
        ok, result = self._calls.ask(
            turn, "fs/read_text_file",
            {"sessionId": turn.session.session_id, "path": self._abs_path(turn, arg)})
        if not ok:
            return
        content = result.get("content") if isinstance(result, dict) else None
        if not isinstance(content, str):
            self._wire.chunk(turn, "error: fs/read_text_file answered without content")
            return
        self._wire.chunk(turn, content)

    def _cmd_permission(self, turn: Turn, arg: str) -> None:
        sid = turn.session.session_id
        tool_call: JsonObj = {
            "toolCallId": self._state.new_tool_call_id(),
            "title": "echo wants permission",
            "kind": "edit",
            "status": "pending",
        }
        self._wire.update(sid, {"sessionUpdate": "tool_call", **tool_call})
        response = self._calls.call(
            turn,
            "session/request_permission",
            {
                "sessionId": sid,
                "toolCall": tool_call,
                "options": [
                    {"optionId": "allow", "name": "Allow", "kind": "allow_once"},
                    {"optionId": "always", "name": "Always allow", "kind": "allow_always"},
                    {"optionId": "reject", "name": "Reject", "kind": "reject_once"},
                ],
            },
        )
        if response is None:
            if turn.cancel.is_set():
                self._wire.chunk(turn, "permission: cancelled")
            else:
                self._calls.no_answer(turn, "session/request_permission")
            return
        error = error_text(response)
        if error is not None:
            self._wire.chunk(turn, f"error: {error}")
            return
        result = response.get("result")
        outcome = result.get("outcome") if isinstance(result, dict) else None
        if isinstance(outcome, dict) and outcome.get("outcome") == "selected":
            self._wire.chunk(turn, f"permission: {outcome.get('optionId')}")
        elif isinstance(outcome, dict) and outcome.get("outcome") == "cancelled":
            self._wire.chunk(turn, "permission: cancelled")
        else:
            self._wire.chunk(turn, f"error: unexpected permission outcome {json.dumps(outcome)}")

    def _cmd_terminal(self, turn: Turn, arg: str) -> None:
        if not self._state.can_terminal:
            self._wire.chunk(turn, "error: the client did not advertise terminal")
            return
        import shlex

        try:
            argv = shlex.split(arg)
        except ValueError:
            argv = arg.split()
        if not argv:
            raise Usage("usage: /terminal CMD ARGS...")
        sid = turn.session.session_id
        ok, result = self._calls.ask(turn, "terminal/create", {
            "sessionId": sid,
            "command": argv[0],
            "args": argv[1:],
            "cwd": turn.session.cwd,
            "outputByteLimit": OUTPUT_BYTE_LIMIT,
        })
        if not ok:
            return
        terminal_id = result.get("terminalId") if isinstance(result, dict) else None
        if not isinstance(terminal_id, str):
            self._wire.chunk(turn, "error: terminal/create answered without terminalId")
            return
        ids = {"sessionId": sid, "terminalId": terminal_id}
        try:
            ok, exit_status = self._calls.ask(turn, "terminal/wait_for_exit", ids,
                                               stop_on_cancel=True)
            if not ok:
                return
            ok, out_result = self._calls.ask(turn, "terminal/output", ids)
            if not ok:
                return
            text = out_result.get("output") if isinstance(out_result, dict) else None
            exit_status = exit_status if isinstance(exit_status, dict) else {}
            if isinstance(exit_status.get("exitCode"), int):
                status = f"[exit {exit_status['exitCode']}]"
            elif exit_status.get("signal") is not None:
                status = f"[signal {exit_status['signal']}]"
            else:
                status = "[exit unknown]"
            self._wire.chunk(turn, (text if isinstance(text, str) else "") + status)
        finally:
            if not self._state.eof:
                self._calls.call(turn, "terminal/release", ids)

    def _cmd_ask(self, turn: Turn, arg: str) -> None:
        if not arg:
            raise Usage("usage: /ask METHOD")
        response = self._calls.call(turn, arg.split()[0], {"sessionId": turn.session.session_id})
        if response is None:
            self._calls.no_answer(turn, arg)
            return
        error = response.get("error")
        if isinstance(error, dict):
            self._wire.chunk(turn, f"error {error.get('code')}: {error.get('message')}")
        else:
            self._wire.chunk(turn, f"result {json.dumps(response.get('result'))}")


"""The requests the echo agent sends to its client (fs/*, terminal/*, permission, ``/ask``)
and the matching of the client's responses to them.

A prompt worker sends a request and waits on the shared condition; the reader thread files
the response and notifies. A cancelled turn or stdin EOF also wakes the worker, so no wait
outlives the client.
"""

from __future__ import annotations

import json
from typing import Any, Final

from daemon.echo_agent.jsonrpc import JsonObj
from daemon.echo_agent.sessions import Turn
from daemon.echo_agent.state import AgentState

CANCEL_GRACE_S: Final = 5.0


class _Pending:
    """A request this agent sent to the client, waiting for its response."""

    __slots__ = ("response",)

    def __init__(self) -> None:
        self.response: JsonObj | None = None


def error_text(response: JsonObj) -> str | None:
    """``None`` for a success response, else the client's error message."""
    if "error" not in response:
        return None
    error = response["error"]
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return json.dumps(error)


class ClientCalls:
    """Requests to the client, by id, until their responses come back."""

    def __init__(self, state: AgentState) -> None:
        self._state = state
        self._wire = state.wire
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0

    def call(
        self, turn: Turn, method: str, params: JsonObj, *, stop_on_cancel: bool = False
    ) -> JsonObj | None:
        """Send a request to the client and wait for its response message.

        Returns None when there is no answer: stdin reached EOF, or the turn was cancelled and
        either ``stop_on_cancel`` is set or the client did not answer within CANCEL_GRACE_S.
        """
        state = self._state
        with state.cond:
            request_id = self._next_id
            self._next_id += 1
            pending = _Pending()
            self._pending[request_id] = pending
        try:
            self._wire.send(
                {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
            )
            with state.cond:
                state.cond.wait_for(
                    lambda: pending.response is not None or state.eof or turn.cancel.is_set()
                )
                if pending.response is None and not state.eof and not stop_on_cancel:
                    state.cond.wait_for(
                        lambda: pending.response is not None or state.eof, CANCEL_GRACE_S
                    )
                return pending.response
        finally:
            with state.cond:
                self._pending.pop(request_id, None)

    def handle_response(self, message: JsonObj) -> None:
        """The reader thread's part: file a response for the worker waiting on it (responses
        to ids nobody waits for are dropped)."""
        with self._state.cond:
            pending = self._pending.get(message["id"])
            if pending is not None:
                pending.response = message
                self._state.cond.notify_all()

    def no_answer(self, turn: Turn, what: str) -> None:
        """Tell the turn the client never answered, unless the turn was cancelled."""
        if not turn.cancel.is_set():
            self._wire.chunk(turn, f"error: no answer from the client to {what}")

    def ask(self, turn: Turn, method: str, params: JsonObj, *,
            stop_on_cancel: bool = False) -> tuple[bool, Any]:
        """(True, the result) of a request to the client; (False, None) once its failure (no
        answer, or an error answer) has been told to the turn as an ``error: ...`` chunk."""
        response = self.call(turn, method, params, stop_on_cancel=stop_on_cancel)
        if response is None:
            self.no_answer(turn, method)
            return False, None
        error = error_text(response)
        if error is not None:
            self._wire.chunk(turn, f"error: {error}")
            return False, None
        return True, response.get("result")

"""What the reader thread and the prompt workers share, and the operations both sides use.

Invariant: ``cond`` (a condition over a re-entrant lock) guards the sessions, the turns on
them, the client requests in flight and the EOF flag; whoever changes one of those notifies
it, because a worker waiting for a client's answer also wakes on cancellation and EOF.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from daemon.echo_agent.jsonrpc import (
    INVALID_PARAMS,
    RESOURCE_NOT_FOUND,
    JsonObj,
    RpcError,
    param_str,
)
from daemon.echo_agent.options import Options
from daemon.echo_agent.sessions import MODES, Session, SessionFiles, now_iso
from daemon.echo_agent.wire import Wire


class AgentState:
    """The agent's shared state (see the module docstring for what ``cond`` guards)."""

    def __init__(self, options: Options, wire: Wire) -> None:
        self.options = options
        self.wire = wire
        self.files = SessionFiles(options.state_dir)
        self.cond = threading.Condition(threading.RLock())
        self.sessions: dict[str, Session] = {}
        self.eof = False
        self.hung = threading.Event()
        self.workers: set[threading.Thread] = set()
        self.authenticated = False
        # What the client advertised in initialize; /read, /write, /terminal refuse without.
        self.can_read = False
        self.can_write = False
        self.can_terminal = False
        self._tool_counter = 0
        self.mcp_given: Callable[[Session], None] = lambda session: None
        """Called with a session just given its ``mcpServers`` (``mcp_commands``: eager)."""

    def session(self, params: JsonObj) -> Session:
        """The active session named by ``params.sessionId``, else -32002."""
        session_id = param_str(params, "sessionId")
        with self.cond:
            session = self.sessions.get(session_id)
        if session is None:
            raise RpcError(
                RESOURCE_NOT_FOUND,
                f"Resource not found: unknown session {session_id}",
                {"sessionId": session_id},
            )
        return session

    def persist(self, session: Session) -> None:
        """Write the session file atomically. Callers hold ``cond``."""
        self.files.persist(session)

    def save(self, session: Session) -> None:
        """Persist the session's settings from inside a turn: a file that cannot be written
        is logged, and the turn goes on. Callers hold ``cond``."""
        try:
            self.files.persist(session)
        except OSError as exc:
            self.wire.log(f"cannot save session {session.session_id}: {exc}")

    def set_mode(self, session: Session, mode_id: str) -> None:
        """session/set_mode and ``/mode``: store, persist, then tell the client."""
        if mode_id not in {m for m, _ in MODES}:
            raise RpcError(INVALID_PARAMS, f"unknown mode {mode_id!r}")
        with self.cond:
            session.mode = mode_id
            session.updated_at = now_iso()
            self.persist(session)
        self.wire.update(
            session.session_id, {"sessionUpdate": "current_mode_update", "currentModeId": mode_id}
        )

    def cancel(self, session_id: object) -> None:
        """session/cancel: end the session's running turn, if any."""
        with self.cond:
            session = self.sessions.get(session_id) if isinstance(session_id, str) else None
            if session is not None and session.turn is not None:
                session.turn.cancel.set()
                self.cond.notify_all()

    def new_tool_call_id(self) -> str:
        """``tool-N``, unique within this agent process."""
        with self.cond:
            self._tool_counter += 1
            return f"tool-{self._tool_counter}"

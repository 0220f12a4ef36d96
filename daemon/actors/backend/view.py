"""A chat's view of a shared agent process (`shared.SharedHost`): the JSON-RPC connection as
the backend's parts (session, turns) see it. Its requests go out on the host's connection;
the host hands it its own session's lines (docs/SHARED_PROCESSES.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import trio

from daemon.acp.rpc import ConnectionLost, JsonRpcConnection, SentRequest
from daemon.execution.local import AgentProcess
from protocol import deltas as d

RequestHandler = Callable[[str, msgspec.Raw | None], Awaitable[Any]]
NotificationHandler = Callable[[str, msgspec.Raw | None], None]

SETUP_METHODS = frozenset({"session/new", "session/load", "session/resume"})
"""Requests that set a session up (what a shared process answers one after another)."""


class Host(Protocol):
    """What a view uses of its `shared.SharedHost` (typed here: the host module imports
    this one)."""

    id: str
    rpc: JsonRpcConnection | None
    process: AgentProcess | None
    initialized: msgspec.Raw | None
    setups: int

    def route(self, view: SessionView, session: str) -> None: ...
    async def ping(self, timeout: float | None) -> msgspec.Raw: ...
    def detach(self, view: SessionView, *, close_session: bool = False) -> None: ...
    def kill(self, reason: str, turn_error: str) -> None: ...
    def share(self) -> ProcessShare: ...


@dataclass(frozen=True, slots=True)
class ProcessShare:
    """Which shared process a chat's session is on, for `ls` and `inspect`."""

    id: str
    pid: int | None
    sessions: int


class _SessionOf(msgspec.Struct, rename="camel"):
    session_id: str | None = None


_session_of = msgspec.json.Decoder(_SessionOf)


def session_of(params: msgspec.Raw | None) -> str | None:
    """The `sessionId` of a message's params, if it names one."""
    if params is None:
        return None
    try:
        return _session_of.decode(params).session_id
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


class SessionView(JsonRpcConnection):
    """One chat's view of a shared connection, typed as the connection the backend's parts
    (session, turns) already speak to. It has no streams of its own (so it does not run
    `JsonRpcConnection.__init__`): its requests go out on the host's connection, and the
    host hands it its session's lines.

    Two things differ from a connection of its own: `initialize` is answered from the
    host's one handshake, and `last_traffic` is when *this session* was last heard (a
    probe's answer counts for the process, `process_heard_since`, not for the session)."""

    def __init__(self, host: Host, *, chat: str, on_request: RequestHandler,
                 on_notification: NotificationHandler,
                 on_chunks: Callable[[list[d.DeltaBody]], None],
                 on_lost: Callable[[str, str], None], touch: Callable[[], None],
                 engaged: Callable[[], bool]) -> None:
        self.host = host
        self.chat = chat
        self.session_id: str | None = None
        self.serve_request = on_request
        self.take_notification = on_notification
        self.take_chunks = on_chunks
        self._on_lost = on_lost
        self._touch = touch
        self._engaged = engaged
        self._serving = 0
        """Requests of the agent's for this session being answered (a permission waiting
        for a human, a terminal being waited for)."""
        self._heard = trio.current_time()
        self._detached: str | None = None

    # ------------------------------------------------------------------ as a connection

    @property
    def last_traffic(self) -> float:
        """When this session was last heard. While it waits on something that is not
        silence (a request of the agent's being answered, a permission, a tool call still
        open), the process's own traffic counts for it, as in a process of its own: a
        probe answered means alive."""
        rpc = self.host.rpc
        if rpc is None:
            return self._heard
        if self._serving or self._engaged():
            return max(self._heard, rpc.last_traffic)
        if rpc.throttled:
            return trio.current_time()
        return self._heard

    @property
    def throttled(self) -> bool:
        rpc = self.host.rpc
        return rpc is not None and rpc.throttled

    @property
    def closed(self) -> bool:
        return self._detached is not None or self.host.rpc is None or self.host.rpc.closed

    def _connection(self) -> JsonRpcConnection:
        rpc = self.host.rpc
        if self._detached is not None or rpc is None:
            raise ConnectionLost(f"shared agent {self.host.id}: "
                                 f"{self._detached or 'process gone'}")
        return rpc

    async def request(self, method: str, params: Any, *, timeout: float | None = None,
                      cancel_notify: bool = False) -> msgspec.Raw:
        if method == "initialize":
            self._connection()
            assert self.host.initialized is not None
            return self.host.initialized
        if method == "_stoker/ping":
            return await self.host.ping(timeout)
        rpc = self._connection()
        if isinstance(params, dict) and isinstance(params.get("sessionId"), str):
            # Before the request: session/load replays history before it answers.
            self.host.route(self, params["sessionId"])
        if method in SETUP_METHODS and timeout is not None:
            # Agents set sessions up one after another: after a crash every chat of the
            # process resumes at once, and the last waits behind all the others. Its deadline
            # counts from its turn, not from the queue: one timeout per set-up ahead of it.
            host = self.host
            ahead = host.setups
            host.setups += 1
            try:
                raw = await rpc.request(method, params, timeout=timeout * (1 + ahead),
                                        cancel_notify=cancel_notify)
            finally:
                host.setups -= 1
        else:
            raw = await rpc.request(method, params, timeout=timeout,
                                    cancel_notify=cancel_notify)
        self.heard()
        if method == "session/new":
            session = session_of(raw)
            if session:
                self.host.route(self, session)
        return raw

    def start_request(self, method: str, params: Any) -> SentRequest | None:
        """Never: a session's requests go through `request` (it routes the session and
        notes when it was heard)."""
        return None

    async def notify(self, method: str, params: Any) -> None:
        await self._connection().notify(method, params)

    def close(self, reason: str = "closed") -> None:
        self.detach(reason)

    # ------------------------------------------------------------------ for the host

    async def answer(self, method: str, params: msgspec.Raw | None) -> Any:
        """Answer a request the agent made for this session."""
        self.heard()
        self._serving += 1
        try:
            return await self.serve_request(method, params)
        finally:
            self._serving -= 1
            self.heard()

    def heard(self) -> None:
        self._heard = trio.current_time()
        self._touch()

    def process_heard_since(self, since: float) -> bool:
        """The shared process said anything (to any session, or a probe's answer) at or
        after `since`: it is alive, whatever this session does."""
        rpc = self.host.rpc
        return rpc is not None and (rpc.throttled or rpc.last_traffic >= since)

    def lost(self, reason: str, turn_error: str) -> None:
        """The process is gone: the chat's generation ends with the cause."""
        if self._detached is None:
            self._detached = reason
            self._on_lost(reason, turn_error)

    def detach(self, reason: str = "detached", *, close_session: bool = False) -> None:
        """Leave the host (idempotent); `close_session`: tell the agent the session is over
        (`session/close`, when it advertises it), e.g. a session stuck in a turn."""
        if self._detached is None:
            self._detached = reason
        self.host.detach(self, close_session=close_session)

    def kill_process(self, reason: str) -> None:
        """This chat found the process unresponsive: kill it (ending every chat on it)."""
        self.host.kill(reason, reason)

    def share(self) -> ProcessShare:
        return self.host.share()

"""Shared agent processes: one warm agent process serving the ACP sessions of many chats
(an agent's `process = "shared"`; docs/SHARED_PROCESSES.md).

A `SharedHost` owns one process life: the spawn (through the chats' executor), the one
JSON-RPC connection, the stderr drain, the exit watch and `initialize`, once (its answer is
handed to every chat's session setup). Each chat keeps its own backend actor; its
generation *attaches* and gets a `SessionView`: the JSON-RPC connection as the backend's
parts see it. A view's requests go out on the shared connection; it receives only its own
session's lines: `session/update`s and the agent's requests (fs/*, terminal/*,
session/request_permission) are routed by `sessionId`, and a request naming no attached
session is answered with an error. Text chunks take the hot path a process of one's own
has (`_on_lines`): a read's consecutive chunks of one session reach its chat as one batch.

When the process ends (a crash, `kill -9`, killed as unresponsive), every attached chat's
generation ends as a crash with the cause; each chat's restart attaches to the key's next
process and resumes its session. A process whose last session has left stops after
`LINGER`. `hosts.SharedHosts` is the registry (hosts keyed by (agent, computer[, cwd]),
another process past `sessions_per_process`, the restart policy per key).
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from daemon.acp.rpc import (
    INVALID_PARAMS,
    ConnectionLost,
    JsonRpcConnection,
    RpcError,
)
from daemon.acp.updates import decode_session_chunk_line
from daemon.actors.backend.probe import INITIALIZE_PARAMS, agent_env
from daemon.actors.backend.stderr import StderrLimiter, drain_stderr, serve_until_exit
from daemon.actors.backend.view import ProcessShare, SessionView, session_of
from daemon.actors.settings import Settings
from daemon.channels.hub import Hub
from daemon.config.agents import AgentSpec
from daemon.execution.local import AgentProcess, Executor, SpawnError
from daemon.log import Log
from protocol import deltas as d

LINGER = 2.0
"""Seconds a shared process with no session left waits for a new one before it stops."""
STDERR_TAIL = 20

RequestHandler = Callable[[str, msgspec.Raw | None], Awaitable[Any]]
NotificationHandler = Callable[[str, msgspec.Raw | None], None]

class HostUnavailable(SpawnError):
    """No shared process could be had (its start failed, or it restarted too often):
    a failed start of the chat's generation, under the chat's restart policy."""

    transient = True


@dataclass(frozen=True, slots=True)
class HostKey:
    agent: str
    computer: str | None
    cwd: str | None
    """Set when the agent's processes are shared per working directory."""


class SharedHost:
    """One life of a shared agent process and the sessions on it."""

    def __init__(self, key: HostKey, spec: AgentSpec, executor: Executor, *,
                 settings: Settings, hub: Hub, instance: str, number: int, delay: float,
                 on_end: Callable[[SharedHost], None]) -> None:
        self._settings = settings
        self._hub = hub
        self._instance = instance
        self._on_end = on_end
        """Told when the process is ending (the registry then starts another for the
        next attach)."""
        self.key = key
        self.spec = spec
        self._executor = executor
        where = key.computer or "local"
        self.id = f"{key.agent}@{where}#{number}"
        self._delay = delay
        self.log = Log("shared", agent=key.agent, process=self.id)
        self.process: AgentProcess | None = None
        self.rpc: JsonRpcConnection | None = None
        self.initialized: msgspec.Raw | None = None
        """The agent's `initialize` answer (raw), once it came."""
        self.started = trio.Event()
        """Set once `initialize` was answered, or the start failed (`failure`)."""
        self.failure: SpawnError | None = None
        """Why the process could not be started (a `HostUnavailable` or the executor's)."""
        self.ending: tuple[str, str] | None = None
        """Why the process ends (reason, what open turns end with); the first one wins."""
        self.crashed = False
        self._views: set[SessionView] = set()
        self._routes: dict[str, SessionView] = {}
        self._emptied = trio.Event()
        """Set when the last session leaves (the linger starts)."""
        self._scope = trio.CancelScope()
        self._ping: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self.setups = 0
        """Session set-ups (new, load, resume) sent and not yet answered."""

    # ------------------------------------------------------------------ attach, detach

    @property
    def accepting(self) -> bool:
        return (self.ending is None and self.failure is None
                and len(self._views) < self.spec.sessions_per_process)

    def attach(self, view_args: dict[str, Any]) -> SessionView:
        view = SessionView(self, **view_args)
        self._views.add(view)
        return view

    def detach(self, view: SessionView, *, close_session: bool = False) -> None:
        if view not in self._views:
            return
        self._views.discard(view)
        session = view.session_id
        if session is not None and self._routes.get(session) is view:
            del self._routes[session]
            if (close_session and self.ending is None and self._nursery is not None
                    and self._closes_sessions()):
                with contextlib.suppress(RuntimeError):  # the host is stopping: no need
                    self._nursery.start_soon(self._close_session, session)
        if not self._views:
            self._emptied.set()

    def route(self, view: SessionView, session: str) -> None:
        """`session` is `view`'s from now on (a view has one session at a time)."""
        if view.session_id is not None and self._routes.get(view.session_id) is view:
            del self._routes[view.session_id]
        view.session_id = session
        if view in self._views:
            self._routes[session] = view

    def share(self) -> ProcessShare:
        process = self.process
        return ProcessShare(id=self.id, pid=process.identity.pid if process else None,
                            sessions=len(self._views))

    def _closes_sessions(self) -> bool:
        init = self._initialize_info()
        caps = init.get("agentCapabilities") or {}
        return (caps.get("sessionCapabilities") or {}).get("close") is not None

    def _initialize_info(self) -> dict[str, Any]:
        if self.initialized is None:
            return {}
        try:
            info = msgspec.json.decode(self.initialized)
        except msgspec.DecodeError:
            return {}
        return info if isinstance(info, dict) else {}

    async def _close_session(self, session: str) -> None:
        rpc = self.rpc
        if rpc is None:
            return
        with trio.move_on_after(2):
            try:
                await rpc.request("session/close", {"sessionId": session})
            except (RpcError, ConnectionLost) as exc:
                self.log.info("session/close failed", session=session, error=str(exc))

    # ------------------------------------------------------------------ liveness

    async def ping(self, timeout: float | None) -> msgspec.Raw:
        """A liveness probe of the process; concurrent probes share one request. Any answer
        (an error included) shows up in the connection's `last_traffic`."""
        if self._ping is not None:
            with trio.move_on_after(timeout if timeout is not None else float("inf")):
                await self._ping.wait()
            return msgspec.Raw(b"null")
        rpc = self.rpc
        if rpc is None:
            raise ConnectionLost(f"shared agent {self.id}: process gone")
        self._ping = done = trio.Event()
        try:
            await rpc.request("_stoker/ping", {}, timeout=timeout)
        except RpcError:
            pass
        finally:
            self._ping = None
            done.set()
        return msgspec.Raw(b"null")

    def kill(self, reason: str, turn_error: str) -> None:
        self.crashed = True  # counts for the restart policy, as a crash
        self._end(reason, turn_error)
        if self.process is not None:
            self.process.kill()

    def _end(self, reason: str, turn_error: str) -> None:
        if self.ending is None:
            self.ending = (reason, turn_error)
        self._scope.cancel()

    # ------------------------------------------------------------------ routing

    def _on_notification(self, method: str, params: msgspec.Raw | None) -> None:
        """Every notification from the agent goes to the session it names (through the
        connection's general path: its envelope, then the params' `sessionId`, then the
        chat's own decoding of the update)."""
        view = self._view_of(session_of(params), method)
        if view is not None:
            view.take_notification(method, params)

    def _on_lines(self, lines: list[bytes], start: int) -> int:
        """The hot path, as a chat's own connection has it (`Session.on_lines`): the run of
        text chunks from `start`, each handed to the session it names, a session's
        consecutive chunks as one batch (published, and coalesced, as one read of a
        process of its own would be). Returns where the run ends."""
        end = len(lines)
        index = start
        session: str | None = None
        bodies: list[d.DeltaBody] = []
        while index < end:
            found = decode_session_chunk_line(lines[index])
            if found is None:
                break
            if found[0] != session:
                self._chunks_to(session, bodies)
                session, bodies = found[0], []
            bodies.append(found[1])
            index += 1
        self._chunks_to(session, bodies)
        return index

    def _chunks_to(self, session: str | None, bodies: list[d.DeltaBody]) -> None:
        if bodies:
            view = self._view_of(session, "session/update")
            if view is not None:
                view.take_chunks(bodies)

    def _view_of(self, session: str | None, method: str) -> SessionView | None:
        view = self._routes.get(session) if session is not None else None
        if view is None:
            self.log.debug("notification for no attached session", method=method,
                           session=session)
            return None
        view.heard()
        return view

    async def _on_request(self, method: str, params: msgspec.Raw | None) -> Any:
        session = session_of(params)
        view = self._routes.get(session) if session is not None else None
        if view is None:
            if not session:
                raise RpcError(INVALID_PARAMS, f"{method}: the request names no sessionId "
                                               "(this connection serves several sessions)")
            raise RpcError(INVALID_PARAMS, f"{method}: session {session!r} is not a session "
                                           "of a chat on this connection")
        return await view.answer(method, params)

    # ------------------------------------------------------------------ the process life

    async def run(self) -> None:
        """Start the process, serve its sessions, stop it: when its last session has left
        (after `LINGER`), when it dies or is killed, or when the daemon stops."""
        daemon = self._settings.config.daemon
        try:
            with self._scope:
                if self._delay > 0:
                    self.log.info("restarting the shared process", delay=self._delay)
                    await trio.sleep(self._delay)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    try:
                        await self._start(nursery)
                    except SpawnError as exc:
                        # Caught here: raised out of the nursery it would come as a group.
                        self.failure = exc
                        nursery.cancel_scope.cancel()
                        return
                    self.started.set()
                    nursery.start_soon(self._linger)
                    await trio.sleep_forever()
        except Exception:
            # A bug: the chats on it see it end (and start another), the pool goes on.
            self.log.exception("shared agent host failed")
            self.crashed = True
            if self.failure is None and self.initialized is None:
                self.failure = HostUnavailable("internal error in the daemon (see its log)")
            self._end("internal error in the daemon (see its log)", "")
        finally:
            with trio.CancelScope(shield=True):
                await self._finish(float(daemon.stop_grace))

    async def _start(self, nursery: trio.Nursery) -> None:
        spec = self.spec
        daemon = self._settings.config.daemon
        marker = f"{self._instance}:shared:{spec.name}:{secrets.token_hex(4)}"
        # Per computer: the home directory ("~" on a remote computer is its login one).
        cwd = self.key.cwd or (os.path.expanduser("~") if self.key.computer is None else "~")
        proc = await self._executor.spawn(list(spec.command), env=agent_env(spec), cwd=cwd,
                                          actor=marker)
        self.process = proc
        self.log.info("shared agent started", pid=proc.identity.pid,
                      command=" ".join(spec.command))
        rpc = JsonRpcConnection(
            proc.stdin, proc.stdout, on_request=self._on_request,
            on_notification=self._on_notification, on_lines=self._on_lines,
            throttle=self._hub.wait_for_room, max_line=int(daemon.max_line), log=self.log,
            name=f"shared agent {self.id}")
        self.rpc = rpc
        stderr_done = trio.Event()
        nursery.start_soon(self._drain_stderr, proc.stderr, stderr_done)
        nursery.start_soon(self._watch, proc, rpc, stderr_done)
        try:
            self.initialized = await rpc.request("initialize", INITIALIZE_PARAMS,
                                                 timeout=float(daemon.request_timeout))
        except (RpcError, trio.TooSlowError, ConnectionLost) as exc:
            if isinstance(exc, ConnectionLost):
                with trio.move_on_after(2):  # the watcher says how the process ended
                    await trio.sleep_forever()
            why = (self.ending[0] if self.ending is not None else
                   "no answer to initialize in time" if isinstance(exc, trio.TooSlowError)
                   else f"initialize failed: {exc}")
            raise HostUnavailable(f"shared agent process {self.id} did not start: {why}"
                                  ) from None

    async def _linger(self) -> None:
        """Stop the process `LINGER` after its last session left, unless one is back."""
        while True:
            if self._views:
                self._emptied = trio.Event()
                await self._emptied.wait()
                continue
            await trio.sleep(LINGER)
            if not self._views:
                self.log.info("no session left; stopping the shared process")
                self._end("no session left", "")
                return

    async def _watch(self, proc: AgentProcess, rpc: JsonRpcConnection,
                     stderr_done: trio.Event) -> None:
        reason, turn_error = await serve_until_exit(proc, rpc, stderr_done, self.stderr_tail)
        self.crashed = True
        self._end(reason, turn_error)

    async def _drain_stderr(self, stream: trio.abc.ReceiveStream, done: trio.Event) -> None:
        config = self._settings.config.daemon
        limiter = StderrLimiter(rate=float(config.stderr_log_rate),
                                burst=config.stderr_log_burst)
        try:
            await drain_stderr(stream, self.log, self.stderr_tail, limiter)
        finally:
            done.set()

    async def _finish(self, grace: float) -> None:
        """Tell every chat still attached, then stop what is left of the process."""
        self._on_end(self)
        reason, turn_error = self.ending or (
            str(self.failure) if self.failure else "the daemon is stopping", "")
        self.started.set()
        if self.rpc is not None:
            self.rpc.close(reason)
        pid = self.process.identity.pid if self.process is not None else None
        where = f"shared process {self.id}" + (f", pid {pid}" if pid else "")
        for view in list(self._views):
            view.lost(f"{reason} ({where})", f"{turn_error or reason} ({where})")
        self._views.clear()
        self._routes.clear()
        proc, self.process = self.process, None
        if proc is not None:
            with trio.move_on_after(grace + 5):
                status = await proc.stop(grace)
                self.log.info("shared agent stopped", status=status.describe())

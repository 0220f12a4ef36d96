"""`stoker acp`: an ACP agent on stdio whose sessions are daemon chats.

To the editor this is an ordinary ACP agent (protocol version 1). Behind it is a warm,
supervised agent in the daemon, which outlives the editor and which other clients (the CLI,
the web UI, a second editor) watch and drive at the same time. The chat *is* the session:
`sessionId` is the chat id, so any client can name it.

Mapping (see docs/EDITORS.md for the user's view):

* `initialize` answers with the backend agent's capabilities as the daemon knows them
  (`describe_agent`), plus `loadSession` and `sessionCapabilities` list/resume/close, which
  the daemon serves for any agent.
* `session/new` opens a chat and *warms* it (starts the agent and its ACP session) so the
  response carries the agent's real `modes` and `configOptions`.
* `session/prompt` sends a `prompt` and answers when that turn's `turn_ended` arrives: with
  its stop reason, or with a JSON-RPC error if the turn failed (ACP has no "error" stop
  reason) -- unless the editor had cancelled, when it is `cancelled` as the spec demands.
* Every delta of the chat is forwarded as it happens, whoever caused it: the turns another
  client starts appear as that user's message followed by the agent's reply, so the editor
  mirrors the chat. The editor's own prompts are not echoed back to it.
* `session/load` replays the retained conversation (prompts, agent messages and thoughts,
  tool calls, plans) before answering; `session/resume` reattaches without replay.
* Permission requests the daemon asks clients about go to the editor too; the first answer
  from any client wins, and one answered elsewhere is withdrawn from the editor with
  `$/cancel_request`.
* File and terminal requests of the agent are served by the daemon (inside the chat's
  directory): the editor is never asked, so every client sees the same files.
* EOF on stdin detaches once every request already read has been answered (an editor, or
  a script piping requests in, may close its output and still read ours): chats and their
  agents stay warm, turns keep running.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import trio

from daemon.acp.lines import LineTooLong
from daemon.acp.rpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    RESOURCE_NOT_FOUND,
    FollowUp,
    JsonRpcConnection,
    RpcError,
)
from daemon.acp.types import PROTOCOL_VERSION
from daemon.client import Client, ClientError, RequestFailed
from daemon.config.paths import Paths
from daemon.editor.forward import Forwarder
from daemon.editor.link import DaemonLink
from daemon.editor.mapping import (
    agent_capabilities,
    current_actor,
    daemon_error,
    session_info,
    session_setup,
    turn_failed,
)
from daemon.editor.params import (
    AuthenticateParams,
    InitializeParams,
    ListSessionsParams,
    LoadSessionParams,
    NewSessionParams,
    PromptParams,
    SessionRef,
    SetConfigParams,
    SetModeParams,
    decode,
)
from daemon.editor.session import Lost, Session
from daemon.log import Log
from daemon.version import VERSION
from protocol import messages as m


@dataclass(frozen=True, slots=True)
class BridgeOptions:
    """`stoker acp`'s flags: where new sessions run, and whether to start the daemon."""

    agent: str | None = None
    workspace: str | None = None
    project: str | None = None
    policy: Literal["ask", "allow", "deny"] | None = None
    spawn_daemon: bool = False


Handler = Callable[[msgspec.Raw | None], Awaitable[Any]]


class Bridge:
    """The editor-to-daemon half: it answers the editor's requests, owns the attached
    sessions and the daemon connection (`link`), and leaves streaming each session back to
    the editor to its :class:`Forwarder`."""

    def __init__(self, options: BridgeOptions, paths: Paths, *, log: Log | None = None
                 ) -> None:
        self._options = options
        self._paths = paths
        self._log = log or Log("acp")
        self._link = DaemonLink(paths, name=f"acp:{os.getpid()}", spawn=options.spawn_daemon,
                                on_event=self._route, on_connected=self._resubscribe,
                                on_lost=self._lost, log=self._log)
        self._sessions: dict[str, Session] = {}
        self._forwarder = Forwarder(rpc=lambda: self.rpc, client_name=lambda: self.client_name,
                                    request=self._request, editor_gone=self._editor_gone,
                                    log=self._log)
        self._agent: str | None = options.agent
        self._auth_chat: str | None = None
        self._nursery: trio.Nursery | None = None
        self._rpc: JsonRpcConnection | None = None
        self._handlers: dict[str, Handler] = {
            "initialize": self._initialize,
            "authenticate": self._authenticate,
            "session/new": self._new_session,
            "session/load": self._load_session,
            "session/resume": self._resume_session,
            "session/list": self._list_sessions,
            "session/close": self._close_session,
            "session/prompt": self._prompt,
            "session/set_mode": self._set_mode,
            "session/set_config_option": self._set_config_option,
        }

    @property
    def client_name(self) -> str:
        return self._link.name

    async def serve(self, receive: trio.abc.ReceiveStream, send: trio.abc.SendStream, *,
                    reader_gone: Callable[[], Awaitable[None]] | None = None) -> None:
        """Speak ACP until the editor closes stdin and every request it sent is answered, or
        until it stops reading our output (`reader_gone` returns: nobody is left to answer,
        so the requests still running are dropped; the turns go on in the daemon)."""
        rpc = self._rpc = JsonRpcConnection(send, receive, on_request=self._on_request,
                                            on_notification=self._on_notification,
                                            log=self._log, name="editor",
                                            answer_after_eof=True)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._link.bind(nursery)
            if reader_gone is not None:
                nursery.start_soon(self._detach_when_unread, reader_gone, nursery.cancel_scope)
            try:
                await rpc.serve()
            except LineTooLong as exc:
                self._log.error("the editor sent an oversized line; detaching", error=str(exc))
            else:
                self._log.info("the editor closed its end; detaching",
                               sessions=len(self._sessions))
            nursery.cancel_scope.cancel()

    async def _detach_when_unread(self, reader_gone: Callable[[], Awaitable[None]],
                                  scope: trio.CancelScope) -> None:
        await reader_gone()
        self._log.info("the editor stopped reading; detaching", sessions=len(self._sessions))
        scope.cancel()

    # ------------------------------------------------------------------ plumbing

    @property
    def rpc(self) -> JsonRpcConnection:
        assert self._rpc is not None
        return self._rpc

    async def _on_request(self, method: str, params: msgspec.Raw | None) -> Any:
        handler = self._handlers.get(method)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")
        try:
            return await handler(params)
        except RequestFailed as exc:
            raise daemon_error(exc.code, exc.message, exc.detail) from None
        except ClientError as exc:
            raise RpcError(INTERNAL_ERROR, str(exc), {"stoker": "daemon_unreachable"}) from None

    def _on_notification(self, method: str, params: msgspec.Raw | None) -> None:
        if method == "session/cancel":
            ref = decode(params, SessionRef)
            session = self._sessions.get(ref.session_id)
            own: list[int] = []
            if session is not None:
                session.cancels += 1
                # Turns whose `session/prompt` this editor is still waiting on.
                own = sorted(session.turns)
                if not own and session.prompting:
                    # Its prompt is on the way to the daemon: the prompt handler cancels
                    # that turn as soon as it knows its number (see `_prompt`).
                    return
            assert self._nursery is not None
            self._nursery.start_soon(self._cancel, ref.session_id, own)
        else:
            self._log.debug("ignoring notification", method=method)

    async def _request(self, request: Any) -> Any:
        client = await self._link.client()
        return await client.request(request)

    def _session(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise RpcError(RESOURCE_NOT_FOUND,
                           f"session {session_id!r} is not open here: use session/load or "
                           "session/resume first", {"stoker": "not_attached"})
        return session

    async def _agent_name(self) -> str:
        if self._agent is None:
            agents: m.AgentsResult = await self._request(m.ListAgents(id=0))
            self._agent = agents.default
        return self._agent

    def _editor_gone(self, why: str) -> None:
        self._log.info("the editor is gone; detaching", reason=why)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ lifecycle

    async def _initialize(self, params: msgspec.Raw | None) -> Any:
        p: InitializeParams = decode(params, InitializeParams)
        editor = (p.client_info or {}).get("name")
        if isinstance(editor, str) and editor and not self._link.connected:
            self._link.name = f"acp:{editor}:{os.getpid()}"
        session_caps = p.client_capabilities.get("session")
        self._forwarder.notices = (isinstance(session_caps, dict)
                                   and isinstance(session_caps.get("notices"), dict))
        agent = await self._agent_name()
        described: m.AgentDescription = await self._request(m.DescribeAgent(id=0, agent=agent))
        return {
            "protocolVersion": PROTOCOL_VERSION,
            "agentCapabilities": agent_capabilities(described.capabilities),
            "authMethods": described.auth_methods,
            "agentInfo": {"name": "stoker", "title": f"Stoker ({agent})", "version": VERSION},
        }

    async def _authenticate(self, params: msgspec.Raw | None) -> Any:
        """Authentication belongs to the agent of a chat; the chat is the one whose
        `session/new` answered auth_required."""
        p: AuthenticateParams = decode(params, AuthenticateParams)
        if self._auth_chat is None:
            raise RpcError(INVALID_PARAMS, "nothing to authenticate: the agent has not asked "
                           "for it (session/new answers auth_required when it does)")
        await self._request(m.Authenticate(id=0, chat=self._auth_chat, method=p.method_id))
        return {}

    async def _new_session(self, params: msgspec.Raw | None) -> Any:
        p: NewSessionParams = decode(params, NewSessionParams)
        agent = await self._agent_name()
        placed = self._options.workspace is not None or self._options.project is not None
        info: m.ChatInfo = await self._request(m.OpenChat(
            id=0, chat=self._auth_chat, agent=agent, cwd=None if placed else p.cwd,
            workspace=self._options.workspace, project=self._options.project,
            policy=self._options.policy, mcp_servers=p.mcp_servers or None))
        self._auth_chat = None
        try:
            detail: m.ActorDetail = await self._request(m.Warm(id=0, chat=info.chat))
        except RequestFailed as exc:
            if exc.code == "auth_required":
                self._auth_chat = info.chat
            else:
                await self._close_quietly(info.chat)
            raise
        session = self._attach(info.chat, cursor=info.head_seq, epoch=info.epoch)
        with self._detach_on_error(session):
            await self._subscribe(session, m.Cursor(seq=info.head_seq, epoch=info.epoch))
        result = {"sessionId": info.chat, **session_setup(detail)}
        return FollowUp(result, then=session.live.set)

    async def _load_session(self, params: msgspec.Raw | None) -> Any:
        p: LoadSessionParams = decode(params, LoadSessionParams)
        chat = p.session_id
        await self._request(m.OpenChat(id=0, chat=chat, create=False,
                                       mcp_servers=p.mcp_servers or None))
        head, epoch = await self._forwarder.replay(self._paths.socket, chat)
        session = self._attach(chat, cursor=head, epoch=epoch)
        with self._detach_on_error(session):
            await self._subscribe(session, m.Cursor(seq=head, epoch=epoch))
            detail = await self._warm_or_inspect(chat)
        return FollowUp(session_setup(detail), then=session.live.set)

    async def _resume_session(self, params: msgspec.Raw | None) -> Any:
        p: LoadSessionParams = decode(params, LoadSessionParams)
        chat = p.session_id
        await self._request(m.OpenChat(id=0, chat=chat, create=False,
                                       mcp_servers=p.mcp_servers or None))
        session = self._attach(chat, cursor=0, epoch=None)
        with self._detach_on_error(session):
            await self._subscribe(session, None)
            detail = await self._warm_or_inspect(chat)
        return FollowUp(session_setup(detail), then=session.live.set)

    async def _list_sessions(self, params: msgspec.Raw | None) -> Any:
        p: ListSessionsParams = decode(params, ListSessionsParams)
        agent = await self._agent_name()
        listed: m.ChatList = await self._request(m.ListChats(id=0, cwd=p.cwd))
        chats = sorted((c for c in listed.chats if c.agent == agent),
                       key=lambda c: c.updated_at, reverse=True)
        return {"sessions": [session_info(c) for c in chats]}

    async def _close_session(self, params: msgspec.Raw | None) -> Any:
        p: SessionRef = decode(params, SessionRef)
        await self._request(m.CloseChat(id=0, chat=p.session_id))
        self._detach(p.session_id, "the session was closed")
        return {}

    # ------------------------------------------------------------------ turns

    async def _prompt(self, params: msgspec.Raw | None) -> Any:
        p: PromptParams = decode(params, PromptParams)
        session = self._session(p.session_id)
        if not p.prompt:
            raise RpcError(INVALID_PARAMS, "empty prompt")
        cancels = session.cancels
        session.prompting += 1
        try:
            accepted: m.PromptAccepted = await self._request(
                m.Prompt(id=0, chat=session.chat, content=list(p.prompt)))
            turn = session.turn(accepted.turn)
            turn.claimed.set()
        finally:
            session.prompting -= 1
        if session.cancels > cancels:
            # Cancelled before the daemon told us the turn's number.
            assert self._nursery is not None
            self._nursery.start_soon(self._cancel, session.chat, [accepted.turn])

        def finish() -> None:
            turn.responded.set()
            session.turns.pop(accepted.turn, None)

        try:
            await turn.ended.wait()
        except BaseException:
            finish()
            raise
        if turn.lost is not None:
            return FollowUp(error=RpcError(INTERNAL_ERROR, turn.lost,
                                           {"stoker": "detached", "turn": accepted.turn}),
                            then=finish)
        ended = turn.result
        assert ended is not None
        if ended.stop_reason is not None:
            return FollowUp({"stopReason": ended.stop_reason}, then=finish)
        if session.cancels > cancels:
            return FollowUp({"stopReason": "cancelled"}, then=finish)
        return FollowUp(error=turn_failed(session.chat, accepted.turn, ended.error or "unknown"),
                        then=finish)

    async def _cancel(self, chat: str, own: list[int]) -> None:
        """`session/cancel` cancels the editor's own prompts when it has some in flight
        (running, or still queued behind another client's turn, which is left alone);
        otherwise the chat's running turn, whoever started it (the editor shows every
        turn). It does not wait: the turn's `turn_ended` ends the prompt."""
        try:
            if own:
                for turn in own:
                    await self._request(m.Cancel(id=0, chat=chat, turn=turn))
            else:
                await self._request(m.Cancel(id=0, chat=chat))
        except ClientError as exc:
            self._log.warning("cancel failed", chat=chat, error=str(exc))

    async def _set_mode(self, params: msgspec.Raw | None) -> Any:
        p: SetModeParams = decode(params, SetModeParams)
        await self._request(m.SetMode(id=0, chat=p.session_id, mode=p.mode_id))
        return {}

    async def _set_config_option(self, params: msgspec.Raw | None) -> Any:
        p: SetConfigParams = decode(params, SetConfigParams)
        await self._request(m.SetConfig(id=0, chat=p.session_id, option=p.config_id,
                                        value=p.value))
        detail: m.ChatDetail = await self._request(m.Inspect(id=0, chat=p.session_id))
        actor = current_actor(detail)
        return {"configOptions": actor.config_options if actor is not None else []}

    # ------------------------------------------------------------------ attaching

    def _attach(self, chat: str, *, cursor: int, epoch: str | None) -> Session:
        self._detach(chat, "the session was attached again")
        session = self._sessions[chat] = Session(chat, cursor, epoch)
        assert self._nursery is not None
        self._nursery.start_soon(self._forwarder.forward, session)
        return session

    def _detach(self, chat: str, why: str) -> None:
        session = self._sessions.pop(chat, None)
        if session is not None:
            session.close(why)

    @contextlib.contextmanager
    def _detach_on_error(self, session: Session) -> Iterator[None]:
        """A session whose attaching request fails is not attached: its forwarder would
        wait for a response that never comes."""
        try:
            yield
        except BaseException:
            if self._sessions.get(session.chat) is session:
                self._detach(session.chat, "attaching failed")
            raise

    async def _subscribe(self, session: Session, since: m.Cursor | None) -> None:
        sub: m.Subscribed = await self._request(m.Subscribe(id=0, chat=session.chat,
                                                            since=since))
        session.epoch = sub.epoch
        if since is None:
            session.cursor = sub.head_seq
        session.pending = list(sub.snapshot.pending_permissions)

    async def _warm_or_inspect(self, chat: str) -> m.ActorDetail | None:
        """The agent's modes/config for a load/resume answer. Warming is what an editor
        reattaching wants anyway; if the agent cannot start, the chat's history is still
        worth showing, so the last known state is used instead."""
        try:
            detail: m.ActorDetail = await self._request(m.Warm(id=0, chat=chat))
            return detail
        except RequestFailed as exc:
            self._log.warning("could not warm the chat's agent", chat=chat, error=exc.message)
        inspected: m.ChatDetail = await self._request(m.Inspect(id=0, chat=chat))
        return current_actor(inspected)

    async def _close_quietly(self, chat: str) -> None:
        try:
            await self._request(m.CloseChat(id=0, chat=chat))
        except ClientError as exc:
            self._log.warning("could not close the chat", chat=chat, error=str(exc))

    # ------------------------------------------------------------------ daemon events

    def _route(self, event: Any) -> None:
        """Called for every non-reply message of the daemon connection, in order."""
        chat = getattr(event, "chat", None)
        session = self._sessions.get(chat) if isinstance(chat, str) else None
        if session is not None:
            try:
                session.inbox_send.send_nowait(event)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    async def _resubscribe(self, client: Client) -> None:
        """After a reconnection: every attached session continues from its cursor."""
        for session in list(self._sessions.values()):
            try:
                sub: m.Subscribed = await client.request(m.Subscribe(
                    id=0, chat=session.chat,
                    since=m.Cursor(seq=session.cursor, epoch=session.epoch)))
            except RequestFailed as exc:
                self._log.warning("cannot resubscribe; detaching", chat=session.chat,
                                  error=exc.message)
                self._detach(session.chat, exc.message)
                continue
            if session.live.is_set():
                self._forwarder.ask_pending(session, sub.snapshot.pending_permissions)

    def _lost(self, why: str) -> None:
        lost = Lost(f"lost the connection to the daemon ({why}); the turn may still be "
                     "running: session/load shows it")
        for session in self._sessions.values():
            try:
                session.inbox_send.send_nowait(lost)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
        if self._sessions and self._nursery is not None:
            self._nursery.start_soon(self._link.reconnect, lambda: bool(self._sessions))

"""The daemon-to-editor half of `stoker acp`: a chat's retained conversation replayed for
`session/load`, each attached session's deltas streamed to the editor as `session/update`s,
in order, and the permission requests the daemon asks clients about put to the editor (and
withdrawn when decided elsewhere).

The editor-to-daemon half (the requests the editor sends) is :mod:`daemon.editor.bridge`,
which owns the sessions and starts one :meth:`Forwarder.forward` task per session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import trio

from daemon.acp.rpc import ConnectionLost, JsonRpcConnection, RpcError
from daemon.client import Client, ClientError, RequestFailed
from daemon.editor.mapping import (
    PromptHold,
    delta_update,
    history_update,
    permission_outcome,
    permission_params,
)
from daemon.editor.session import Ask, Lost, Session
from daemon.log import Log
from protocol import deltas as d
from protocol import messages as m

CLAIM_GRACE: Final = 10.0
"""How long the forwarder holds a chat's stream at the end of one of the editor's turns,
waiting for the prompt handler to take the result, when that handler has not yet seen the
daemon's reply to its `prompt` (a race of a few microseconds in practice)."""


class Forwarder:
    """Streams sessions to the editor. ``rpc`` and ``client_name`` are read at each use:
    the editor connection exists once serving starts, and the bridge's daemon client name
    changes when `initialize` names the editor."""

    def __init__(self, *, rpc: Callable[[], JsonRpcConnection], client_name: Callable[[], str],
                 request: Callable[[Any], Awaitable[Any]], editor_gone: Callable[[str], None],
                 log: Log) -> None:
        self._rpc = rpc
        self._client_name = client_name
        self._request = request
        self._editor_gone = editor_gone
        self._log = log
        self.notices = False
        """Whether the editor advertised `session.notices` (set by `initialize`)."""

    async def notify(self, chat: str, update: dict[str, Any]) -> None:
        """One `session/update` notification to the editor."""
        await self._rpc().notify("session/update", {"sessionId": chat, "update": update})

    async def replay(self, socket: Path, chat: str) -> tuple[int, str]:
        """Write the chat's retained conversation to the editor as `session/update`s.

        A connection of its own (`live=False`) gives exactly the history up to some head H,
        then the session subscribes live from H on the shared connection: no gap, no
        duplicate, and no stale live delta of an earlier attachment mixed into the replay.
        """
        head = 0
        async with Client.connect(socket, client=f"{self._client_name()}/load") as history:
            sub: m.Subscribed = await history.request(m.Subscribe(
                id=0, chat=chat, since=m.Cursor(seq=0), live=False))
            epoch = sub.epoch
            commands: dict[str, Any] | None = None
            hold = PromptHold()
            async for event in history.events():
                if isinstance(event, d.Delta) and event.chat == chat and event.seq > head:
                    head = event.seq
                    if isinstance(event.body, d.Commands):
                        commands = delta_update(event.body, own_client=None)
                    for update in hold.feed(event.turn, event.body,
                                            history_update(event.body)):
                        await self.notify(chat, update)
                elif isinstance(event, m.ResyncRequired) and event.chat == chat:
                    head = max(head, event.seq)
                elif isinstance(event, m.ReplayComplete) and event.chat == chat:
                    head = max(head, event.head_seq)
                    break
            for update in hold.flush():
                await self.notify(chat, update)
            if commands is not None:
                await self.notify(chat, commands)
        return head, epoch

    async def forward(self, session: Session) -> None:
        """Stream one session's deltas to the editor, in order, until it is detached."""
        try:
            with session.scope:
                async with trio.open_nursery() as nursery:
                    session.nursery = nursery
                    await session.live.wait()
                    self.ask_pending(session, session.pending)
                    async for event in session.inbox:
                        if isinstance(event, d.Delta):
                            if event.seq <= session.cursor:
                                continue
                            session.cursor = event.seq
                            await self._on_delta(session, event)
                        elif isinstance(event, m.ResyncRequired):
                            session.cursor = event.seq
                            session.epoch = event.epoch
                        elif isinstance(event, Lost):
                            session.fail_turns(event.why)
                    nursery.cancel_scope.cancel()
        except* ConnectionLost as group:
            self._editor_gone(str(group.exceptions[0]))

    async def _on_delta(self, session: Session, delta: d.Delta) -> None:
        body = delta.body
        if isinstance(body, d.TurnStarted) and body.by == self._client_name():
            session.own_turns.add(delta.turn)
        update = delta_update(body, own_client=self._client_name(), notices=self.notices)
        for item in session.hold.feed(delta.turn, body, update):
            await self.notify(session.chat, item)
        if isinstance(body, d.PermissionRequest):
            if body.policy == "ask":
                self._ask(session, body.request, body.tool_call, body.options)
        elif isinstance(body, d.PermissionResolved):
            self._withdraw(session, body.request)
        elif isinstance(body, d.TurnEnded) and delta.turn in session.own_turns:
            await self._own_turn_ended(session, delta.turn, body)

    async def _own_turn_ended(self, session: Session, number: int, body: d.TurnEnded) -> None:
        """Hand the result to the prompt handler and hold the stream until its answer is
        written, so the editor never sees the next turn's output inside this one."""
        session.own_turns.discard(number)
        turn = session.turn(number)
        turn.result = body
        turn.ended.set()
        if not turn.claimed.is_set() and session.prompting:
            with trio.move_on_after(CLAIM_GRACE):
                await turn.claimed.wait()
        if turn.claimed.is_set():
            await turn.responded.wait()

    # ------------------------------------------------------------------ permissions

    def ask_pending(self, session: Session, pending: list[m.PendingPermission]) -> None:
        """Put to the editor the permission requests still open when it (re)attached."""
        for item in pending:
            self._ask(session, item.request, item.tool_call, item.options)

    def _ask(self, session: Session, request: str, tool_call: dict[str, Any],
             options: list[dict[str, Any]]) -> None:
        if request in session.asks or request in session.settled or session.nursery is None:
            return
        ask = session.asks[request] = Ask()
        params = permission_params(session.chat, request, tool_call, options)
        session.nursery.start_soon(self._run_ask, session, request, ask, params)

    def _withdraw(self, session: Session, request: str) -> None:
        """The request was decided (by another client, the policy, a timeout or the end of
        the turn): the editor's prompt for it is withdrawn (`$/cancel_request`)."""
        session.settle(request)
        ask = session.asks.get(request)
        if ask is not None and not ask.answered:
            ask.scope.cancel()

    async def _run_ask(self, session: Session, request: str, ask: Ask,
                       params: dict[str, Any]) -> None:
        try:
            with ask.scope:
                raw = await self._rpc().request("session/request_permission", params,
                                             cancel_notify=True)
                ask.answered = True
            if not ask.answered:
                return
            option = permission_outcome(raw)
            try:
                await self._request(m.Permit(id=0, chat=session.chat, request=request,
                                             option=option))
            except RequestFailed as exc:
                # Another client (or the policy) was first: that is the rule, not a fault.
                self._log.info("permission answer not used", request=request,
                               error=exc.message)
        except RpcError as exc:
            self._log.info("the editor declined to answer a permission request",
                           request=request, error=exc.message)
        except ConnectionLost:
            pass
        except ClientError as exc:
            self._log.warning("could not pass on a permission answer", request=request,
                              error=str(exc))
        finally:
            session.asks.pop(request, None)
            session.settle(request)

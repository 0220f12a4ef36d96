"""A chat as seen through its own deltas: enough state for the `Snapshot` sent with
`subscribed` and `resync_required`. Pure bookkeeping, no I/O."""

from __future__ import annotations

from collections.abc import Sequence

from protocol import deltas as d
from protocol.messages import PendingPermission, Snapshot


class ChatView:
    """What the hub knows of a chat from its own deltas: enough for a `Snapshot`."""

    __slots__ = ("agent", "last_turn", "permissions", "state", "turns")

    def __init__(self) -> None:
        self.agent = ""
        self.state = ""
        self.last_turn = 0
        self.turns: dict[int, tuple[str, list[str]]] = {}
        self.permissions: dict[str, PendingPermission] = {}

    def apply(self, seq: int, turn: int, body: d.DeltaBody) -> None:
        kind = type(body)
        if kind is d.Text:
            open_turn = self.turns.get(turn)
            if open_turn is not None:
                parts = open_turn[1]
                parts.append(body.text)  # type: ignore[union-attr]
                if len(parts) > 512:
                    parts[:] = ["".join(parts)]
        elif kind is d.TurnStarted:
            assert isinstance(body, d.TurnStarted)
            self.turns[turn] = (body.prompt, [])
            self.last_turn = max(self.last_turn, turn)
            self.agent = body.agent
        elif kind is d.TurnEnded:
            self.turns.pop(turn, None)
        elif kind is d.Status:
            assert isinstance(body, d.Status)
            if not self.agent or body.agent == self.agent:
                self.agent = body.agent
                self.state = body.state
        elif kind is d.PermissionRequest:
            assert isinstance(body, d.PermissionRequest)
            self.permissions[body.request] = PendingPermission(
                request=body.request, agent=body.agent, tool_call=body.tool_call,
                options=body.options, seq=seq,
            )
        elif kind is d.PermissionResolved:
            assert isinstance(body, d.PermissionResolved)
            self.permissions.pop(body.request, None)

    def apply_batch(self, first: int, turn: int, bodies: Sequence[d.DeltaBody]) -> None:
        """`apply` each of a batch of one turn's deltas (seqs from `first` on): its text
        chunks gathered in one step."""
        parts: list[str] | None = None
        for index, body in enumerate(bodies):
            if type(body) is d.Text:
                if parts is None:
                    open_turn = self.turns.get(turn)
                    if open_turn is None:
                        continue
                    parts = open_turn[1]
                parts.append(body.text)
            else:
                self.apply(first + index, turn, body)
                parts = None  # the turn may have started or ended
        open_turn = self.turns.get(turn)
        if open_turn is not None and len(open_turn[1]) > 512:
            open_turn[1][:] = ["".join(open_turn[1])]

    def snapshot(self, chat: str) -> Snapshot:
        turn = min(self.turns) if self.turns else None
        prompt: str | None = None
        text = ""
        if turn is not None:
            prompt, parts = self.turns[turn]
            text = "".join(parts)
        return Snapshot(
            chat=chat,
            agent=self.agent,
            state=self.state,
            turn=turn,
            turn_prompt=prompt,
            turn_text=text,
            pending_permissions=list(self.permissions.values()),
            last_turn=self.last_turn,
        )

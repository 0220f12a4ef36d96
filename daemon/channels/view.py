"""A chat as seen through its own deltas: enough state for the `Snapshot` sent with
`subscribed` and `resync_required`. Pure bookkeeping, no I/O."""

from __future__ import annotations

from collections.abc import Sequence

from protocol import deltas as d
from protocol.messages import PendingPermission, Snapshot


class _OpenTurn:
    """A running turn's prompt and text so far: the text kept as pieces, every 512 joined
    into a block that is never joined again until a snapshot (joining all of it every 512
    pieces copied the whole text each time: quadratic in a long turn)."""

    __slots__ = ("blocks", "pieces", "prompt")

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt
        self.blocks: list[str] = []
        self.pieces: list[str] = []

    def add(self, texts: list[str]) -> None:
        pieces = self.pieces
        pieces.extend(texts)
        if len(pieces) >= 512:
            self.blocks.append("".join(pieces))
            pieces.clear()

    def text(self) -> str:
        return "".join(self.blocks) + "".join(self.pieces)


class ChatView:
    """What the hub knows of a chat from its own deltas: enough for a `Snapshot`."""

    __slots__ = ("agent", "last_turn", "permissions", "state", "turns")

    def __init__(self) -> None:
        self.agent = ""
        self.state = ""
        self.last_turn = 0
        self.turns: dict[int, _OpenTurn] = {}
        self.permissions: dict[str, PendingPermission] = {}

    def apply(self, seq: int, turn: int, body: d.DeltaBody) -> None:
        kind = type(body)
        if kind is d.Text:
            open_turn = self.turns.get(turn)
            if open_turn is not None:
                open_turn.add([body.text])  # type: ignore[union-attr]
        elif kind is d.TurnStarted:
            assert isinstance(body, d.TurnStarted)
            self.turns[turn] = _OpenTurn(body.prompt)
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
        """`apply` each of a batch of one turn's deltas (seqs from `first` on): a batch of
        text chunks (the common case) in one step."""
        text = d.Text
        texts = [body.text for body in bodies if type(body) is text]
        if len(texts) == len(bodies):
            open_turn = self.turns.get(turn)
            if open_turn is not None:
                open_turn.add(texts)
            return
        for index, body in enumerate(bodies):
            self.apply(first + index, turn, body)

    def snapshot(self, chat: str) -> Snapshot:
        turn = min(self.turns) if self.turns else None
        prompt: str | None = None
        text = ""
        if turn is not None:
            open_turn = self.turns[turn]
            prompt, text = open_turn.prompt, open_turn.text()
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

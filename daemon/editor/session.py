"""What `stoker acp` keeps per attached chat: its delta inbox and cursor, the editor's turns
in flight and the permission questions put to the editor.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import trio

from daemon.editor.mapping import PromptHold
from protocol import deltas as d
from protocol import messages as m


class Turn:
    """One of the editor's own turns: the prompt handler waits for its end, the forwarder
    waits for the handler's answer before streaming anything that came after the turn."""

    __slots__ = ("claimed", "ended", "lost", "responded", "result")

    def __init__(self) -> None:
        self.claimed = trio.Event()
        self.ended = trio.Event()
        self.responded = trio.Event()
        self.result: d.TurnEnded | None = None
        self.lost: str | None = None


class Lost:
    """Put in every session's inbox when the daemon connection drops: behind whatever
    arrived before the loss, so a turn that ended just before it still ends normally."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


class Ask:
    """A permission request put to the editor."""

    __slots__ = ("answered", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.answered = False


class Session:
    """An attached chat: its delta stream (routed from the shared daemon connection), the
    cursor that makes that stream gapless and duplicate-free across resubscriptions, and
    the editor's turns and permission prompts in flight."""

    def __init__(self, chat: str, cursor: int, epoch: str | None) -> None:
        self.chat = chat
        self.cursor = cursor
        self.epoch = epoch
        self.inbox_send, self.inbox = trio.open_memory_channel[Any](math.inf)
        self.live = trio.Event()
        """Set once the response that attached the session was written: nothing is
        forwarded before it."""
        self.scope = trio.CancelScope()
        self.nursery: trio.Nursery | None = None
        self.turns: dict[int, Turn] = {}
        self.own_turns: set[int] = set()
        self.prompting = 0
        """`prompt` requests of the editor whose reply (the turn number) is not yet in."""
        self.cancels = 0
        self.hold = PromptHold()
        self.asks: dict[str, Ask] = {}
        self.settled: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.pending: list[m.PendingPermission] = []

    def turn(self, number: int) -> Turn:
        """That turn's rendezvous, made by whichever of the prompt handler and the
        forwarder gets there first."""
        found = self.turns.get(number)
        if found is None:
            found = self.turns[number] = Turn()
        return found

    def settle(self, request: str) -> None:
        """Remember that a permission request is over, so it is never asked again."""
        self.settled[request] = None
        while len(self.settled) > 512:
            self.settled.popitem(last=False)

    def fail_turns(self, why: str) -> None:
        """End every turn the editor waits on with ``why`` (the daemon connection was lost,
        or the session detached): its `session/prompt` answers an error, never hangs."""
        for turn in self.turns.values():
            if not turn.ended.is_set():
                turn.lost = why
                turn.ended.set()
        self.own_turns.clear()

    def close(self, why: str) -> None:
        """Detach: fail the waiting turns and stop forwarding."""
        self.fail_turns(why)
        self.scope.cancel()
        self.inbox_send.close()

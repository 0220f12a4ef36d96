"""What an actor's own tasks report to its loop, through the same mailbox as the pool's
messages, so that one loop sees every event in the order it happened."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.actors import mailbox as mb
from daemon.actors.backend.generation import Ending, Generation


@dataclass(frozen=True, slots=True)
class Ready:
    """The generation's session is set up."""

    gen: Generation


@dataclass(frozen=True, slots=True)
class AuthNeeded:
    """The agent wants authentication before a session (or again, after an attempt)."""

    gen: Generation
    error: str
    """Fail the waiting prompts and warm-ups with this ("": nothing new to fail)."""
    first: bool


@dataclass(frozen=True, slots=True)
class Ended:
    """The generation is over and its process stopped."""

    gen: Generation
    ending: Ending


@dataclass(frozen=True, slots=True)
class WorkDone:
    """The generation's sequential work (a turn, the queued commands) finished."""

    gen: Generation
    job: mb.PromptJob | None


@dataclass(frozen=True, slots=True)
class RestartDue:
    """The backoff after a crash is over."""


@dataclass(frozen=True, slots=True)
class Failed:
    """Deciding what next failed in a sender's task (`BackendActor.take_now`): the loop
    raises it, failing the actor as if it had failed there."""

    error: Exception


Event = mb.ActorMessage | Ready | AuthNeeded | Ended | WorkDone | RestartDue | Failed

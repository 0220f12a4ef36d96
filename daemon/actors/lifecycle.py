"""Lifecycle decisions as pure functions over plain snapshots. No I/O, no clock reads.

The actor states and the table of their legal transitions come first; an actor checks every
change it makes against the table (`check_transition`).

The pool and the backend actors gather facts (states, timestamps, RSS) and ask these
functions what to do; the property tests in tests/unit/test_policy.py check their invariants
exhaustively: a busy actor (or one with a pending permission, a live terminal or queued
prompts) is never evicted; LRU picks the least recently active idle actor; after a sweep the
warm count is within the cap unless every warm actor is busy; restarts never exceed R in T.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class State(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    HIBERNATED = "hibernated"
    CRASHED = "crashed"
    RESTARTING = "restarting"
    FAILED = "failed"
    CLOSED = "closed"


WARM_STATES = frozenset({State.STARTING, State.READY, State.BUSY})
"""States in which the actor has (or is getting) a live agent process."""

_STOPPED = frozenset({State.HIBERNATED, State.CLOSED})
"""Where any live state may go when the chat closes (closed) or the daemon stops (the
actor is left hibernated, its record kept for the next daemon life)."""

TRANSITIONS: dict[State, frozenset[State]] = {
    # A generation starts; it gets ready, cannot be spawned at all (failed), or dies.
    State.STARTING: frozenset({State.READY, State.CRASHED, State.FAILED}) | _STOPPED,
    # ready -> ready: an agent waiting for authentication becomes ready for turns.
    State.READY: frozenset({State.READY, State.BUSY, State.CRASHED}) | _STOPPED,
    State.BUSY: frozenset({State.READY, State.CRASHED}) | _STOPPED,
    # hibernated -> hibernated: a dormant actor whose old process was reclaimed, or that
    # is told of a shutdown.
    State.HIBERNATED: frozenset({State.STARTING}) | _STOPPED,
    State.CRASHED: frozenset({State.RESTARTING, State.FAILED}) | _STOPPED,
    State.RESTARTING: frozenset({State.STARTING}) | _STOPPED,
    # failed -> starting: a later explicit prompt (or warm-up, or command) retries.
    State.FAILED: frozenset({State.STARTING}) | _STOPPED,
    State.CLOSED: frozenset(),
}
"""The legal state changes: `TRANSITIONS[old]` holds every state `old` may become.
Closed is final: a reopened chat gets a new actor."""


class IllegalTransition(RuntimeError):
    """An actor tried a state change the table does not allow: a bug in the actor, raised
    at once rather than published to clients as a state that cannot happen."""

    def __init__(self, old: State, new: State) -> None:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "nothing"
        super().__init__(f"illegal actor state change {old.value} -> {new.value} "
                         f"(from {old.value}: {allowed})")
        self.old = old
        self.new = new


def check_transition(old: State, new: State) -> None:
    """Raise `IllegalTransition` unless `old -> new` is in the table."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(old, new)


@dataclass(frozen=True, slots=True)
class ActorFacts:
    """What the eviction sweep needs to know about one actor."""

    key: str
    state: State
    last_activity: float
    """Monotonic time of the last agent traffic or turn/permission/terminal activity."""
    busy: bool = False
    """A turn is running."""
    queued: int = 0
    pending_permissions: int = 0
    live_terminals: int = 0
    rss: int | None = None

    @property
    def warm(self) -> bool:
        return self.state in WARM_STATES

    @property
    def evictable(self) -> bool:
        """Could be hibernated now, ignoring time: warm, ready, and doing nothing."""
        return (
            self.state is State.READY
            and not self.busy
            and self.queued == 0
            and self.pending_permissions == 0
            and self.live_terminals == 0
        )


@dataclass(frozen=True, slots=True)
class Eviction:
    key: str
    reason: str


def choose_evictions(
    actors: Sequence[ActorFacts],
    *,
    now: float,
    idle_ttl: float,
    max_warm: int,
    memory_budget: int | None = None,
) -> list[Eviction]:
    """Which actors to hibernate now, and why.

    1. Every evictable actor idle for at least `idle_ttl`.
    2. Then, least recently active first, evictable actors until the warm count is within
       `max_warm`.
    3. Then, the same order, until the summed RSS of the remaining warm actors is within
       `memory_budget` (actors with unknown RSS count as 0).
    Non-evictable actors are never chosen, whatever the pressure.
    """
    chosen: dict[str, str] = {}
    for a in actors:
        # The same sum as the deadline `plan_evictions` sets (`last_activity + idle_ttl`):
        # `now - last_activity >= idle_ttl` can round the other way at that very instant.
        if a.evictable and a.last_activity + idle_ttl <= now:
            chosen[a.key] = f"idle for {now - a.last_activity:.0f}s (ttl {idle_ttl:g}s)"
    candidates = sorted(
        (a for a in actors if a.evictable and a.key not in chosen),
        key=lambda a: (a.last_activity, a.key),
    )
    warm = [a for a in actors if a.warm and a.key not in chosen]
    excess = len(warm) - max_warm
    pick = 0
    while excess > 0 and pick < len(candidates):
        victim = candidates[pick]
        pick += 1
        chosen[victim.key] = f"warm agents over the cap of {max_warm} (least recently active)"
        excess -= 1
    if memory_budget is not None:
        used = sum(a.rss or 0 for a in actors if a.warm and a.key not in chosen)
        while used > memory_budget and pick < len(candidates):
            victim = candidates[pick]
            pick += 1
            chosen[victim.key] = (
                f"memory budget {memory_budget} bytes exceeded ({used} bytes in use)"
            )
            used -= victim.rss or 0
    order = {a.key: i for i, a in enumerate(actors)}
    return [Eviction(key, reason) for key, reason in sorted(chosen.items(),
                                                            key=lambda kv: order[kv[0]])]


RECHECK_FLOOR = 1.0
"""The earliest an engaged warm actor is looked at again, in seconds: with a tiny idle TTL
(tests, benchmarks) a recheck at `now + idle_ttl` would spin while it stays engaged."""


@dataclass(frozen=True, slots=True)
class EvictionPlan:
    evictions: list[Eviction]
    next_check: float | None
    """When the idle TTL may next evict one of the remaining warm actors (monotonic time,
    always after `now`); None when no warm actor remains."""


def plan_evictions(
    warm: Sequence[ActorFacts],
    *,
    now: float,
    idle_ttl: float,
    max_warm: int,
    memory_budget: int | None = None,
) -> EvictionPlan:
    """`choose_evictions` over the warm actors, and when to look again.

    The pool keeps the warm actors apart and asks only about them, so the cost of a decision
    grows with the warm count (bounded by the cap), never with hibernated records. The next
    check is the earliest `last_activity + idle_ttl` of an evictable actor that stays. An
    engaged one (busy, queued, a permission or a terminal open), and one just chosen (its
    hibernation may be declined when a prompt races it), is looked at again after
    `max(idle_ttl, RECHECK_FLOOR)`: whatever makes it evictable later also marks it active,
    so its own deadline cannot come sooner. A state change of any warm actor (it becomes
    ready, or warm over the cap) makes the pool plan again at once.
    """
    evictions = choose_evictions(warm, now=now, idle_ttl=idle_ttl, max_warm=max_warm,
                                 memory_budget=memory_budget)
    chosen = {e.key for e in evictions}
    recheck = now + max(idle_ttl, RECHECK_FLOOR)
    next_check: float | None = None
    for a in warm:
        if not a.warm:
            continue
        stays_evictable = a.evictable and a.key not in chosen
        at = a.last_activity + idle_ttl if stays_evictable else recheck
        if next_check is None or at < next_check:
            next_check = at
    if next_check is not None:
        next_check = max(next_check, math.nextafter(now, math.inf))  # never spin at `now`
    return EvictionPlan(evictions, next_check)


# --------------------------------------------------------------------------- staleness


class Liveness(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    """Quiet for a probe interval since the turn started or the agent was last heard: probe
    it."""
    STALE = "stale"
    """Busy, and a probe has gone unanswered (nothing at all heard since it was sent) for the
    stale grace."""


def unanswered_probe(probe_sent: float | None, last_heard: float) -> float | None:
    """When the probe still waiting for any sign of life was sent, or None. Anything heard
    after a probe was sent (its answer, an error, any other line) answers it; heard at the
    very same instant counts as answered too (a virtual clock can make them equal)."""
    if probe_sent is None or last_heard >= probe_sent:
        return None
    return probe_sent


def liveness(*, busy: bool, now: float, turn_started: float, last_heard: float,
             probe_sent: float | None, probe_interval: float, stale_grace: float) -> Liveness:
    """Tell a slow agent from a hung one.

    Silence alone is not a crash: an agent waiting on a slow LLM call still answers a probe,
    and any answer (an error included) counts as heard. Silence counts from the later of the
    turn's start and the last thing heard, so a chat idle for an hour starts its next turn
    with a clean slate. Only a busy agent that has left a probe (`probe_sent`: the first one
    sent since it was last heard) unanswered for the whole grace, counted from the later of
    the turn's start and that probe, is stale: no verdict of "hung" without asking first.
    An idle agent is never stale here (its process exit is noticed directly).
    """
    if not busy:
        return Liveness.ALIVE
    # Deadlines compared with `now` (not durations): `next_liveness_check` computes the very
    # same sums, so the loop that sleeps until one wakes to a changed verdict, never to a
    # float rounding that leaves it spinning.
    pending = unanswered_probe(probe_sent, last_heard)
    if pending is not None and now >= max(turn_started, pending) + stale_grace:
        return Liveness.STALE
    if now >= max(turn_started, last_heard) + probe_interval:
        return Liveness.SUSPECT
    return Liveness.ALIVE


def next_liveness_check(*, now: float, turn_started: float, last_heard: float,
                        probe_sent: float | None, probe_interval: float,
                        stale_grace: float) -> float:
    """The earliest time at which `liveness` may answer differently if nothing is heard
    meanwhile (the probe loop sleeps until then, not on a fixed tick). Never before `now`;
    at the latest one probe interval away, so a probe that timed out is followed by another."""
    candidates = [now + probe_interval]
    quiet_since = max(turn_started, last_heard)
    if quiet_since + probe_interval > now:
        candidates.append(quiet_since + probe_interval)
    pending = unanswered_probe(probe_sent, last_heard)
    if pending is not None:
        candidates.append(max(turn_started, pending) + stale_grace)
    return max(now, min(candidates))


# --------------------------------------------------------------------------- restarts


@dataclass(frozen=True, slots=True)
class RestartNow:
    delay: float
    """Seconds to wait before restarting (exponential backoff)."""


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


def recent_restarts(history: Iterable[float], *, now: float, window: float) -> list[float]:
    """The restart times that still count: those within `window` before `now`."""
    return [t for t in history if now - t < window]


def restart_decision(
    history: Sequence[float],
    *,
    now: float,
    max_restarts: int,
    window: float,
    backoff: float,
    backoff_max: float,
) -> RestartNow | GiveUp:
    """Restart again, after how long, or give up (OTP intensity: at most R in T).

    `history` holds the times of earlier restarts. The n-th consecutive restart within the
    window waits `backoff * 2**(n-1)`, capped at `backoff_max`.
    """
    recent = recent_restarts(history, now=now, window=window)
    if len(recent) >= max_restarts:
        return GiveUp(
            f"restarted {len(recent)} times in the last {window:g}s (limit {max_restarts})"
        )
    delay = min(backoff_max, backoff * (2 ** len(recent))) if backoff > 0 else 0.0
    return RestartNow(delay=delay)


# --------------------------------------------------------------------------- turn retries


@dataclass(frozen=True, slots=True)
class RetryTurn:
    delay: float
    """Seconds to wait before sending the prompt again."""
    attempt: int
    """Which retry this is (1 for the first)."""


def transient_match(error: str, patterns: Sequence[re.Pattern[str]]) -> str | None:
    """The first pattern that marks the agent's `error` text transient, or None."""
    for pattern in patterns:
        if pattern.search(error):
            return pattern.pattern
    return None


def turn_retry(*, transient: bool, output_published: bool, cancelled: bool, retries_done: int,
               max_retries: int, backoff: float, backoff_max: float) -> RetryTurn | None:
    """Send a failed turn's prompt again, after how long, or let it fail (None).

    Only an error the agent marked transient (rate limit, overloaded, 5xx: `transient_match`)
    is retried, only while nothing of the turn was published (a client never sees output
    twice, nor a half answer followed by a different one), never a cancelled turn, and at most
    `max_retries` times; the n-th retry waits `backoff * 2**(n-1)`, capped at `backoff_max`.
    """
    if not transient or output_published or cancelled or retries_done >= max_retries:
        return None
    delay = min(backoff_max, backoff * (2 ** retries_done)) if backoff > 0 else 0.0
    return RetryTurn(delay=delay, attempt=retries_done + 1)


# --------------------------------------------------------------------------- permissions


def pick_option(options: Sequence[tuple[str, str]], policy: str) -> str | None:
    """The option a non-interactive policy picks from (option_id, kind) pairs.

    `allow` takes the first `allow_once` (then the first `allow_always`), `deny` the first
    `reject_once` (then `reject_always`). None: no suitable option (the request is answered
    `cancelled`).
    """
    if policy == "allow":
        order = ("allow_once", "allow_always")
    elif policy == "deny":
        order = ("reject_once", "reject_always")
    else:
        return None
    for kind in order:
        for option_id, option_kind in options:
            if option_kind == kind:
                return option_id
    return None

"""Property tests of the pure lifecycle decisions (daemon/policy.py)."""

from __future__ import annotations

import collections
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.actors.lifecycle import (
    ActorFacts,
    GiveUp,
    Liveness,
    RestartNow,
    State,
    choose_evictions,
    liveness,
    next_liveness_check,
    pick_option,
    plan_evictions,
    restart_decision,
    transient_match,
    turn_retry,
    unanswered_probe,
)
from daemon.config.file import LifecycleConfig, parse
from daemon.errors import ConfigError

states = st.sampled_from(list(State))


@st.composite
def actor_facts(draw: st.DrawFn, key: str) -> ActorFacts:
    return ActorFacts(
        key=key,
        state=draw(states),
        last_activity=draw(st.floats(min_value=0, max_value=1000, allow_nan=False)),
        busy=draw(st.booleans()),
        queued=draw(st.integers(0, 2)),
        pending_permissions=draw(st.integers(0, 1)),
        live_terminals=draw(st.integers(0, 1)),
        rss=draw(st.one_of(st.none(), st.integers(0, 10_000))),
    )


@st.composite
def fleets(draw: st.DrawFn) -> list[ActorFacts]:
    n = draw(st.integers(0, 12))
    return [draw(actor_facts(f"a{i}")) for i in range(n)]


sweep_args = st.fixed_dictionaries({
    "now": st.floats(min_value=0, max_value=2000, allow_nan=False),
    "idle_ttl": st.floats(min_value=0.001, max_value=2000, allow_nan=False),
    "max_warm": st.integers(1, 8),
    "memory_budget": st.one_of(st.none(), st.integers(0, 40_000)),
})


def _blocked(a: ActorFacts) -> bool:
    """Anything that must keep an actor warm."""
    return a.busy or a.queued > 0 or a.pending_permissions > 0 or a.live_terminals > 0


@given(fleets(), sweep_args)
@settings(max_examples=400)
def test_never_evicts_busy_or_engaged_actors(actors: list[ActorFacts],
                                              kw: dict[str, Any]) -> None:
    chosen = {e.key for e in choose_evictions(actors, **kw)}
    for a in actors:
        if _blocked(a) or a.state is not State.READY:
            assert a.key not in chosen


@given(fleets(), sweep_args)
@settings(max_examples=400)
def test_warm_count_within_cap_unless_every_remaining_warm_actor_is_engaged(
        actors: list[ActorFacts], kw: dict[str, Any]) -> None:
    chosen = {e.key for e in choose_evictions(actors, **kw)}
    remaining = [a for a in actors if a.warm and a.key not in chosen]
    if len(remaining) > kw["max_warm"]:
        assert all(not a.evictable for a in remaining)


@given(fleets(), sweep_args)
@settings(max_examples=400)
def test_memory_budget_respected_unless_only_engaged_actors_remain(
        actors: list[ActorFacts], kw: dict[str, Any]) -> None:
    budget = kw["memory_budget"]
    chosen = {e.key for e in choose_evictions(actors, **kw)}
    remaining = [a for a in actors if a.warm and a.key not in chosen]
    if budget is not None and sum(a.rss or 0 for a in remaining) > budget:
        assert all(not a.evictable or not a.rss for a in remaining)


@given(fleets(), st.integers(1, 8), st.floats(min_value=0, max_value=2000, allow_nan=False))
@settings(max_examples=400)
def test_lru_picks_least_recently_active_idle_actors(actors: list[ActorFacts], cap: int,
                                                     now: float) -> None:
    # No TTL expiry (huge ttl), no budget: only the cap decides.
    chosen = {e.key for e in choose_evictions(actors, now=now, idle_ttl=1e12, max_warm=cap)}
    evictable = [a for a in actors if a.evictable]
    kept = [a for a in evictable if a.key not in chosen]
    for victim in (a for a in evictable if a.key in chosen):
        for survivor in kept:
            assert (victim.last_activity, victim.key) <= (survivor.last_activity, survivor.key)


@given(fleets(), sweep_args)
def test_idle_past_ttl_is_evicted_and_fresh_idle_is_not(actors: list[ActorFacts],
                                                       kw: dict[str, Any]) -> None:
    chosen = {e.key for e in choose_evictions(actors, now=kw["now"], idle_ttl=kw["idle_ttl"],
                                              max_warm=100)}
    for a in actors:
        expired = a.evictable and kw["now"] - a.last_activity >= kw["idle_ttl"]
        assert (a.key in chosen) == expired


@given(fleets(), sweep_args)
@settings(max_examples=400)
def test_plan_looks_again_strictly_later_and_only_while_something_is_warm(
        actors: list[ActorFacts], kw: dict[str, Any]) -> None:
    plan = plan_evictions(actors, **kw)
    assert [e.key for e in plan.evictions] == [e.key for e in choose_evictions(actors, **kw)]
    if any(a.warm for a in actors):
        assert plan.next_check is not None
        assert plan.next_check > kw["now"]
    else:
        assert plan.next_check is None


@given(fleets(), sweep_args, st.floats(min_value=0, max_value=1, allow_nan=False))
@settings(max_examples=400)
def test_no_idle_eviction_is_due_before_the_next_check(
        actors: list[ActorFacts], kw: dict[str, Any], fraction: float) -> None:
    # Between now and the next check, with nothing changing, the TTL evicts nothing more;
    # at the check itself, the actor that set it is due (the evictor never sleeps past it).
    plan = plan_evictions(actors, **kw)
    chosen = {e.key for e in plan.evictions}
    remaining = [a for a in actors if a.key not in chosen]
    if plan.next_check is None:
        return
    ttl = kw["idle_ttl"]
    before = kw["now"] + (plan.next_check - kw["now"]) * fraction
    if before < plan.next_check:
        assert choose_evictions(remaining, now=before, idle_ttl=ttl, max_warm=100) == []
    due = [a for a in remaining if a.evictable and a.last_activity + ttl <= plan.next_check]
    if due:
        assert choose_evictions(remaining, now=plan.next_check, idle_ttl=ttl, max_warm=100)


def test_plan_example_engaged_actor_is_rechecked_not_spun_on() -> None:
    actors = [ActorFacts("busy", State.BUSY, last_activity=0.0, busy=True),
              ActorFacts("idle", State.READY, last_activity=5.0)]
    plan = plan_evictions(actors, now=10.0, idle_ttl=0.0, max_warm=4)
    assert [e.key for e in plan.evictions] == ["idle"]
    assert plan.next_check == 11.0  # RECHECK_FLOOR after now, not `now` again


def test_example_cap_two_three_chats() -> None:
    actors = [
        ActorFacts("old", State.READY, last_activity=1.0),
        ActorFacts("busy", State.BUSY, last_activity=0.5, busy=True),
        ActorFacts("new", State.READY, last_activity=3.0),
    ]
    chosen = choose_evictions(actors, now=4.0, idle_ttl=100, max_warm=2)
    assert [e.key for e in chosen] == ["old"]


# --------------------------------------------------------------------------- restarts


@given(st.lists(st.floats(min_value=0.0, max_value=50.0, allow_nan=False), min_size=1,
                max_size=60),
       st.integers(0, 6), st.floats(min_value=0.5, max_value=30.0, allow_nan=False))
@settings(max_examples=300)
def test_restarts_never_exceed_r_in_t(gaps: list[float], max_restarts: int,
                                      window: float) -> None:
    """Feed crashes at arbitrary times; restart whenever told to. Within any window of
    length T there are never more than R restarts."""
    history: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        decision = restart_decision(history, now=now, max_restarts=max_restarts,
                                    window=window, backoff=0.5, backoff_max=30.0)
        if isinstance(decision, RestartNow):
            history.append(now)
            assert 0 <= decision.delay <= 30.0
        else:
            assert isinstance(decision, GiveUp)
            assert "limit" in decision.reason
    for start in history:
        inside = [t for t in history if start <= t < start + window]
        assert len(inside) <= max_restarts


def test_backoff_doubles_and_caps() -> None:
    history: list[float] = []
    delays = []
    for i in range(8):
        decision = restart_decision(history, now=float(i) * 0.001, max_restarts=100,
                                    window=1000, backoff=0.5, backoff_max=4.0)
        assert isinstance(decision, RestartNow)
        delays.append(decision.delay)
        history.append(float(i) * 0.001)
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]


# --------------------------------------------------------------------------- liveness


times = st.floats(0, 1000, allow_nan=False)
intervals = st.floats(0.01, 10, allow_nan=False)
graces = st.floats(0.01, 60, allow_nan=False)


@given(st.booleans(), times, times, times, st.one_of(st.none(), times), intervals, graces)
def test_liveness_verdict(busy: bool, now: float, started: float, heard: float,
                          probe: float | None, interval: float, grace: float) -> None:
    verdict = liveness(busy=busy, now=now, turn_started=started, last_heard=heard,
                       probe_sent=probe, probe_interval=interval, stale_grace=grace)
    if not busy:
        assert verdict is Liveness.ALIVE
    elif verdict is Liveness.STALE:
        # Hung needs a probe sent, nothing heard since, for the whole grace, counted from
        # the later of the turn's start and that probe.
        assert probe is not None
        assert heard < probe
        assert now >= probe + grace
        assert now >= started + grace
    elif verdict is Liveness.SUSPECT:
        assert now >= max(started, heard) + interval
    else:
        assert now < max(started, heard) + interval


@given(times, st.floats(0, 10_000, allow_nan=False), intervals, graces)
def test_a_long_idle_gap_before_the_turn_is_not_silence_in_it(
        heard: float, gap: float, interval: float, grace: float) -> None:
    """The issue's defect: quiet measured from the last message before the turn killed a
    chat's next turn at its first check. Without a probe sent, never stale."""
    started = heard + gap
    for elapsed in (0.0, interval / 2, interval, grace, interval + grace):
        verdict = liveness(busy=True, now=started + elapsed, turn_started=started,
                           last_heard=heard, probe_sent=None, probe_interval=interval,
                           stale_grace=grace)
        assert verdict is not Liveness.STALE


def run_probe_loop(*, started: float, heard: float, interval: float, grace: float,
                   answer_after: float | None, silent_for: float) -> float | None:
    """The probe loop of `backend/turns.py` over a scripted agent, in pure virtual time:
    it answers each probe `answer_after` seconds after it was sent (None: never) and the
    turn ends after `silent_for` seconds of otherwise total silence. Returns when the
    agent was declared stale, or None."""
    now = started
    probe: float | None = None
    last = heard
    answers: collections.deque[float] = collections.deque()  # in send order = time order
    steps = 3 * min(silent_for, 2 * (interval + grace)) / interval + 1000
    for _ in range(int(steps)):
        if now >= started + silent_for:
            return None
        while answers and answers[0] <= now:
            last = max(last, answers.popleft())
        probe = unanswered_probe(probe, last)
        verdict = liveness(busy=True, now=now, turn_started=started, last_heard=last,
                           probe_sent=probe, probe_interval=interval, stale_grace=grace)
        if verdict is Liveness.STALE:
            return now
        if verdict is Liveness.SUSPECT:
            if probe is None:
                probe = now
            if answer_after is not None:
                answers.append(now + answer_after)
        wake = next_liveness_check(now=now, turn_started=started, last_heard=last,
                                   probe_sent=probe, probe_interval=interval,
                                   stale_grace=grace)
        now = min(wake, answers[0]) if answers else wake
    raise AssertionError("the probe loop did not progress")


@settings(max_examples=300)
@given(times, st.floats(0, 3600, allow_nan=False), st.floats(0.1, 10), st.floats(0.1, 60),
       st.floats(0, 0.99), st.floats(0, 3))
def test_an_agent_answering_its_probes_is_never_stale(
        heard: float, gap: float, interval: float, grace: float, latency: float,
        silent_for: float) -> None:  # in units of the longer of interval and grace
    """Slow is not hung: whatever the idle gap before the turn and however long the turn is
    silent, an agent that answers each probe within the shorter of the probe interval (its
    timeout) and the grace lives."""
    assert run_probe_loop(started=heard + gap, heard=heard, interval=interval, grace=grace,
                          answer_after=latency * min(interval, grace),
                          silent_for=silent_for * max(interval, grace)) is None


@settings(max_examples=300)
@given(times, st.floats(0, 3600, allow_nan=False), st.floats(0.1, 10), st.floats(0.1, 60))
def test_a_hung_agent_is_stale_one_probe_interval_plus_the_grace_into_the_turn(
        heard: float, gap: float, interval: float, grace: float) -> None:
    started = heard + gap
    stale_at = run_probe_loop(started=started, heard=heard, interval=interval, grace=grace,
                              answer_after=None, silent_for=math.inf)
    assert stale_at is not None
    assert stale_at - started == pytest.approx(interval + grace, rel=1e-6, abs=1e-6)


# --------------------------------------------------------------------------- turn retries


@given(st.booleans(), st.booleans(), st.booleans(), st.integers(0, 10), st.integers(0, 10),
       st.floats(0, 10), st.floats(0, 60))
def test_turn_retry(transient: bool, published: bool, cancelled: bool, done: int, most: int,
                    backoff: float, cap: float) -> None:
    retry = turn_retry(transient=transient, output_published=published, cancelled=cancelled,
                       retries_done=done, max_retries=most, backoff=backoff, backoff_max=cap)
    if not transient or published or cancelled or done >= most:
        # Never once output was published, never past the count, never a cancelled turn.
        assert retry is None
    else:
        assert retry is not None
        assert retry.attempt == done + 1
        assert 0 <= retry.delay <= max(cap, 0)
        assert retry.delay == (min(cap, backoff * 2 ** done) if backoff > 0 else 0.0)


def test_turn_retries_back_off_doubling_to_the_cap() -> None:
    delays = []
    for done in range(6):
        retry = turn_retry(transient=True, output_published=False, cancelled=False,
                           retries_done=done, max_retries=6, backoff=1.0, backoff_max=10.0)
        assert retry is not None
        delays.append(retry.delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_default_transient_patterns() -> None:
    patterns = LifecycleConfig().transient_regexes()
    for error in ("-32603 Rate limit exceeded", "-32603 429 Too Many Requests",
                  "1 Overloaded", "-32603 upstream answered 503",
                  "-32603 Service Unavailable", "-32603 Bad Gateway",
                  "-32603 gateway timeout", '-32603 failed {"status": 502}'):
        assert transient_match(error, patterns) is not None, error
    for error in ("-32603 echo: requested failure", "-32000 Authentication required",
                  "-32602 invalid params", "-32603 wrote 5000 bytes"):
        assert transient_match(error, patterns) is None, error


def test_a_bad_transient_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"transient_patterns\[1\]"):
        parse('[lifecycle]\ntransient_patterns = ["ok", "(unclosed"]\n')


# --------------------------------------------------------------------------- permissions


kinds = st.sampled_from(["allow_once", "allow_always", "reject_once", "reject_always"])


@given(st.lists(st.tuples(st.text(min_size=1, max_size=3), kinds), max_size=6))
def test_pick_option(options: list[tuple[str, str]]) -> None:
    allow = pick_option(options, "allow")
    deny = pick_option(options, "deny")
    assert pick_option(options, "ask") is None
    allow_once = [o for o, k in options if k == "allow_once"]
    allow_always = [o for o, k in options if k == "allow_always"]
    reject_once = [o for o, k in options if k == "reject_once"]
    reject_always = [o for o, k in options if k == "reject_always"]
    assert allow == next(iter(allow_once + allow_always), None)
    assert deny == next(iter(reject_once + reject_always), None)

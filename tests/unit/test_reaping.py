"""Property tests of the reaper's pure decisions (daemon/reaping.py) and git output parsers.

The central property: `DELETE` happens exactly when every fact is known and clear, so no
missing, unknown, failed or timed-out fact can ever cost a worktree."""

from __future__ import annotations

import os
from dataclasses import replace

from hypothesis import assume, given
from hypothesis import strategies as st

from daemon.workspaces.git import parse_cherry, parse_numstat, status_is_dirty, summary_line
from daemon.workspaces.reaping import (
    Action,
    Candidate,
    Location,
    Preflight,
    Reason,
    decide,
    has_unpushed,
    past_grace,
    purge_due,
    screen,
    within,
)

times = st.floats(min_value=0, max_value=1e10, allow_nan=False, allow_infinity=False)
kinds = st.sampled_from(["missing", "dir", "symlink", "file", "other"])
locations = st.builds(Location, kind=kinds, inside_root=st.booleans())
candidates = st.builds(
    Candidate, path=st.just("/root/p/w"), known=st.booleans(), closed=st.booleans(),
    open_chats=st.integers(0, 3), since=st.none() | times, location=locations)
maybe = st.none() | st.booleans()
preflights = st.none() | st.builds(
    Preflight, is_worktree=maybe, dirty=maybe, unpushed=maybe, timed_out=st.booleans(),
    error=st.none() | st.text(max_size=5))

CLEAR = Preflight(is_worktree=True, dirty=False, unpushed=False)


def all_clear(c: Candidate, p: Preflight | None, now: float, grace: float) -> bool:
    return ((not c.known or c.closed) and c.open_chats == 0 and c.since is not None
            and c.since <= now and now - c.since >= grace and c.location.kind == "dir"
            and c.location.inside_root and p is not None and not p.timed_out
            and p.error is None and p.is_worktree is True and p.dirty is False
            and p.unpushed is False)


@given(candidates, preflights, times, times)
def test_delete_exactly_when_everything_is_clear(c: Candidate, p: Preflight | None,
                                                 now: float, grace: float) -> None:
    verdict = decide(c, p, now, grace)
    assert (verdict.action is Action.DELETE) == all_clear(c, p, now, grace)
    if verdict.action is Action.DELETE:
        assert verdict.reason is Reason.CLEAN


@given(candidates, preflights, times, times)
def test_forget_only_a_known_closed_workspace_whose_directory_is_gone(
        c: Candidate, p: Preflight | None, now: float, grace: float) -> None:
    verdict = decide(c, p, now, grace)
    if verdict.action is Action.FORGET:
        assert c.known
        assert c.closed
        assert c.open_chats == 0
        assert c.location.kind == "missing"
        assert past_grace(c.since, now, grace)


@given(candidates, preflights, preflights, times, times)
def test_git_is_only_consulted_when_screening_leaves_it_open(
        c: Candidate, p: Preflight | None, q: Preflight | None, now: float,
        grace: float) -> None:
    early = screen(c, now, grace)
    if early is not None:
        assert decide(c, p, now, grace) == early == decide(c, q, now, grace)


@st.composite
def screened(draw: st.DrawFn) -> tuple[Candidate, float, float]:
    """A candidate that passes screening, so git decides: closed or unknown, no open chat,
    a directory inside the root, past the grace."""
    since = draw(st.floats(min_value=0, max_value=1e9))
    grace = draw(st.floats(min_value=0, max_value=1e6))
    now = since + grace + draw(st.floats(min_value=0, max_value=1e6))
    known = draw(st.booleans())
    c = Candidate(path="/r/p/w", known=known, closed=True, open_chats=0, since=since,
                  location=Location("dir", True))
    assume(past_grace(since, now, grace))
    return c, now, grace


@given(screened(), st.sampled_from([
    ("dirty", Preflight(is_worktree=True, dirty=True, unpushed=False), Reason.DIRTY),
    ("unpushed", Preflight(is_worktree=True, dirty=False, unpushed=True), Reason.UNPUSHED),
    ("timeout", Preflight(is_worktree=True, timed_out=True, error="slow"), Reason.TIMEOUT),
    ("error", Preflight(is_worktree=True, error="fatal"), Reason.ERROR),
    ("plain dir", Preflight(is_worktree=False), Reason.NOT_A_WORKTREE),
    ("status unknown", Preflight(is_worktree=True, unpushed=False), Reason.UNKNOWN),
    ("unpushed unknown", Preflight(is_worktree=True, dirty=False), Reason.UNKNOWN),
    ("not checked", None, Reason.UNKNOWN),
]))
def test_each_bad_fact_keeps_with_its_reason(
        setup: tuple[Candidate, float, float],
        case: tuple[str, Preflight | None, Reason]) -> None:
    c, now, grace = setup
    _, facts, reason = case
    assert screen(c, now, grace) is None
    verdict = decide(c, facts, now, grace)
    assert verdict.action is Action.KEEP
    assert verdict.reason is reason
    assert decide(c, CLEAR, now, grace).action is Action.DELETE


@given(times, st.floats(min_value=1, max_value=1e6), st.floats(min_value=0, max_value=0.999))
def test_inside_grace_is_kept(since: float, grace: float, fraction: float) -> None:
    now = since + grace * fraction
    assume(now - since < grace)
    c = Candidate(path="/r/p/w", known=True, closed=True, open_chats=0, since=since,
                  location=Location("dir", True))
    verdict = decide(c, CLEAR, now, grace)
    assert (verdict.action, verdict.reason) == (Action.KEEP, Reason.GRACE)
    later = since + grace
    if later - since >= grace:
        assert decide(c, CLEAR, later, grace).action is Action.DELETE


@given(candidates, times, times)
def test_symlinks_and_paths_outside_the_root_are_never_deleted(
        c: Candidate, now: float, grace: float) -> None:
    for location in (Location("symlink", True), Location("symlink", False),
                     Location("dir", False), Location("file", True)):
        verdict = decide(replace(c, location=location), CLEAR, now, grace)
        assert verdict.action is Action.KEEP


@given(candidates, times, times)
def test_unknown_directories_are_never_forgotten(c: Candidate, now: float,
                                                 grace: float) -> None:
    stray = replace(c, known=False, location=Location("missing", False))
    assert decide(stray, CLEAR, now, grace).action is Action.KEEP


@given(candidates, times, times)
def test_open_chats_and_active_workspaces_are_kept(c: Candidate, now: float,
                                                   grace: float) -> None:
    assert decide(replace(c, known=True, closed=False), CLEAR, now, grace).reason \
        is Reason.ACTIVE
    if not c.known or c.closed:
        busy = replace(c, open_chats=max(c.open_chats, 1))
        assert decide(busy, CLEAR, now, grace).reason is Reason.IN_USE


@given(st.none() | times, times, times)
def test_unknown_or_future_start_is_never_past_grace(since: float | None, now: float,
                                                     grace: float) -> None:
    if since is None or since > now:
        assert not past_grace(since, now, grace)


# ---------------------------------------------------------------------- within

components = st.sampled_from(["a", "b", "root", "rootx", "..", ".", "c d", "é"])


@given(st.lists(components, min_size=1, max_size=4), st.lists(components, max_size=5))
def test_within_means_strictly_below_after_normalisation(root_parts: list[str],
                                                         rel: list[str]) -> None:
    root = os.path.normpath("/" + "/".join(root_parts))
    path = "/" + "/".join(root_parts + rel)
    if within(path, root):
        norm = os.path.normpath(path)
        assert norm != root
        assert norm.startswith(root.rstrip("/") + "/")
        assert os.path.commonpath([norm, root]) == root


def test_within_edge_cases() -> None:
    assert within("/a/root/x", "/a/root")
    assert not within("/a/root", "/a/root")
    assert not within("/a/rootx/y", "/a/root")
    assert not within("/a/root/../etc", "/a/root")
    assert not within("relative/x", "/a")
    assert within("/x", "/")
    assert not within("/", "/")


# ---------------------------------------------------------------------- unpushed

shas = st.sampled_from([f"{i:040x}" for i in range(8)])


@given(st.frozensets(shas), st.none() | st.frozensets(shas), st.booleans())
def test_unpushed_is_any_candidate_without_an_equivalent(cands: frozenset[str],
                                                         plus: frozenset[str] | None,
                                                         capped: bool) -> None:
    result = has_unpushed(cands, plus, capped=capped)
    if not cands:
        assert result is capped
    elif capped or plus is None:
        assert result
    else:
        assert result == bool(cands & plus)


@given(st.none() | times, times, times)
def test_purge_only_after_retention(trashed: float | None, now: float,
                                    retention: float) -> None:
    due = purge_due(trashed, now, retention)
    if trashed is None or trashed > now or now - trashed < retention:
        assert not due
    else:
        assert due


# ---------------------------------------------------------------------- parsers


def test_numstat_parsing_with_binary_and_odd_names() -> None:
    data = b"1\t0\ta.txt\x00-\t-\timg.png\x003\t2\tdir/with\ttab and space\x00"
    changes = parse_numstat(data)
    assert [(c.path, c.insertions, c.deletions, c.binary) for c in changes] == [
        ("a.txt", 1, 0, False), ("img.png", 0, 0, True),
        ("dir/with\ttab and space", 3, 2, False)]
    assert parse_numstat(b"") == []


def test_summary_line_matches_git() -> None:
    changes = parse_numstat(b"1\t0\ta\x002\t1\tb\x00")
    assert summary_line(changes) == " 2 files changed, 3 insertions(+), 1 deletion(-)"
    assert summary_line(parse_numstat(b"1\t0\ta\x00")) == " 1 file changed, 1 insertion(+)"
    assert summary_line(parse_numstat(b"0\t2\ta\x00")) == " 1 file changed, 2 deletions(-)"
    assert summary_line([]) == ""


def test_status_and_cherry_parsing() -> None:
    assert not status_is_dirty(b"")
    assert not status_is_dirty(b"# branch.oid abc\n# branch.head main\n")
    assert status_is_dirty(b"? new.txt\n")
    assert status_is_dirty(b"1 .M N... 100644 100644 100644 a b f\n")
    plus, minus = parse_cherry(b"+ aaa\n- bbb\n+ ccc\n")
    assert plus == {"aaa", "ccc"}
    assert minus == {"bbb"}

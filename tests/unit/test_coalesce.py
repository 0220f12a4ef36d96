"""`coalesce`: a read's run of text chunks of one kind as one delta body (core.py)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from daemon.actors.backend.core import COALESCED_TEXT, coalesce
from protocol import deltas as d

_bodies = st.lists(st.one_of(
    st.builds(d.Text, text=st.text(max_size=40)),
    st.builds(d.Reasoning, text=st.text(max_size=40)),
    st.builds(d.UserText, text=st.text(max_size=40)),
    st.builds(d.Notice, level=st.just("info"), message=st.text(max_size=5)),
), max_size=60)


def _runs(bodies: list[d.DeltaBody]) -> list[tuple[type, str]]:
    """(kind, joined text) per run of text bodies of one kind; other bodies as they are."""
    out: list[tuple[type, str]] = []
    for body in bodies:
        if isinstance(body, (d.Text, d.Reasoning, d.UserText)):
            if out and out[-1][0] is type(body):
                out[-1] = (type(body), out[-1][1] + body.text)
                continue
            out.append((type(body), body.text))
        else:
            out.append((type(body), repr(body)))
    return out


@given(_bodies)
def test_same_text_same_order_one_body_per_run(bodies: list[d.DeltaBody]) -> None:
    merged = coalesce(bodies)
    assert _runs(merged) == _runs(bodies)
    # Adjacent text bodies of one kind were merged (no cap reached at these sizes).
    kinds = [type(b) for b in merged]
    assert all(not (a is b and a in (d.Text, d.Reasoning, d.UserText))
               for a, b in itertools.pairwise(kinds))


def test_a_run_longer_than_the_cap_is_cut_at_chunk_boundaries() -> None:
    chunk = "x" * 1000
    count = 3 * COALESCED_TEXT // len(chunk) + 7
    merged = coalesce([d.Text(text=chunk) for _ in range(count)])
    assert "".join(b.text for b in merged if isinstance(b, d.Text)) == chunk * count
    assert all(isinstance(b, d.Text) and len(b.text) <= COALESCED_TEXT
               and len(b.text) % len(chunk) == 0 for b in merged)
    assert len(merged) == -(-count * len(chunk) // (COALESCED_TEXT // len(chunk) * len(chunk)))
    # One chunk longer than the cap is kept whole.
    big = "y" * (COALESCED_TEXT + 5)
    assert coalesce([d.Text(text="a"), d.Text(text=big), d.Text(text="b")]) == [
        d.Text(text="a"), d.Text(text=big), d.Text(text="b")]

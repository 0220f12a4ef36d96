"""Publishing a batch (issue 22's ingest path): the text chunks of one read of an agent's
output are numbered, logged and delivered as one batch. The same outcome as publishing them
one by one (seqs, log rows, frames, snapshot, the tap's view of a turn), with one clock
read, one ticket and one delivery; all or nothing when a body cannot be framed; a batch
larger than a subscriber's room lags it and the rest comes by catch-up, in order, once.
Real hub over a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from daemon.acp.rpc import JsonRpcConnection
from daemon.channels.channel import Outbox, Ring
from daemon.channels.frames import Entry, logged_payload
from daemon.channels.hub import Hub, new_epoch
from daemon.channels.view import ChatView
from daemon.store.sqlite import Store
from protocol import deltas as d
from protocol import messages as m
from protocol.framing import HEADER_SIZE, FrameTooLarge

_decoder = msgspec.msgpack.Decoder(m.ClientSideServerMessage)


def _messages(outbox: Outbox) -> list[object]:
    return [_decoder.decode(frame[HEADER_SIZE:]) for frame in outbox.take(1 << 30)]


async def _live(hub: Hub, chat: str, outbox: Outbox) -> None:
    sub = hub.subscribe(chat, outbox, "framed", hub.head(chat))
    await hub.catch_up(sub)
    outbox.take(1 << 30)


async def test_a_batch_is_numbered_logged_and_delivered_like_single_deltas(
        tmp_path: Path) -> None:
    tapped: list[tuple[str, float, int, str]] = []
    clock = iter(range(100, 200))
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        hub = Hub(store, ring_size=64, clock=lambda: float(next(clock)),
                  tap=lambda chat, ts, turn, body: tapped.append(
                      (chat, ts, turn, type(body).__name__)))
        hub.open_channel("c", new_epoch())
        outbox = Outbox(max_frames=1024, max_bytes=1 << 20, hard_max_bytes=1 << 30)
        await _live(hub, "c", outbox)
        assert hub.publish("c", 1, d.TurnStarted(prompt="p", agent="a")) == 1
        bodies: list[d.DeltaBody] = [d.Text(text="a"), d.Text(text="b"),
                                     d.Reasoning(text="r"), d.Text(text="c")]
        assert hub.publish_many("c", 1, bodies) == 5
        assert hub.publish_many("c", 1, []) == 5
        assert hub.statistics()["undelivered"] == 5
        assert outbox.frames == type(outbox.frames)()  # nothing before the commit
        await store.flush()
        deltas = [x for x in _messages(outbox) if isinstance(x, d.Delta)]
        assert [x.seq for x in deltas] == [1, 2, 3, 4, 5]
        assert [x.body for x in deltas[1:]] == bodies
        assert {x.ts for x in deltas[1:]} == {101.0}  # one clock read for the batch
        # The tap sees a run of one kind of chunk by its first delta.
        assert tapped == [("c", 100.0, 1, "TurnStarted"), ("c", 101.0, 1, "Text"),
                          ("c", 101.0, 1, "Reasoning"), ("c", 101.0, 1, "Text")]
        assert hub.snapshot("c").turn_text == "abc"
        rows = await store.read_deltas("c", 0, 10)
        assert [seq for seq, _, _ in rows] == [1, 2, 3, 4, 5]
        assert hub.head("c") == 5
        assert hub.statistics()["undelivered"] == 0


async def test_a_batch_is_all_or_nothing(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        hub = Hub(store, ring_size=64, max_frame=200)
        hub.open_channel("c", new_epoch())
        with pytest.raises(FrameTooLarge):
            hub.publish_many("c", 1, [d.Text(text="ok"), d.Text(text="x" * 300),
                                      d.Text(text="never")])
        assert hub.publish("c", 1, d.Text(text="next")) == 1
        await store.flush()
        assert [seq for seq, _, _ in await store.read_deltas("c", 0, 10)] == [1]
        assert hub.statistics()["published"] == 1


async def test_a_commit_is_queued_whole_while_the_queue_is_under_its_bound(
        tmp_path: Path) -> None:
    """A subscriber that takes what it is given is not lagged by a commit larger than its
    queue's bound; one whose queue is still at the bound when the next commit comes is,
    and gets the rest by catch-up, in order, once."""
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        hub = Hub(store, ring_size=4096)
        hub.open_channel("c", new_epoch())
        outbox = Outbox(max_frames=100, max_bytes=1 << 20, hard_max_bytes=1 << 30)
        await _live(hub, "c", outbox)
        hub.publish_many("c", 1, [d.Text(text=str(i)) for i in range(250)])
        hub.publish("c", 1, d.Text(text="same commit"))
        await store.flush()
        assert len(outbox.frames) == 251
        assert hub.lag_events == 0
        hub.publish_many("c", 1, [d.Text(text=str(i)) for i in range(30)])
        await store.flush()  # the queue is still past its bound: lags
        assert (len(outbox.frames), hub.lag_events) == (251, 1)
        seqs: list[int] = []
        lagged: list[m.Lagged] = []
        with trio.fail_after(5):
            while len(seqs) < 281:
                for message in _messages(outbox):
                    if isinstance(message, d.Delta):
                        seqs.append(message.seq)
                    elif isinstance(message, m.Lagged):
                        lagged.append(message)
                for sub in list(outbox.lagging):
                    await hub.catch_up(sub)
        assert seqs == list(range(1, 282))
        assert [(x.from_seq, x.missed) for x in lagged] == [(252, 30)]


@given(size=st.integers(1, 40), start=st.integers(0, 1000),
       batches=st.lists(st.integers(0, 90), max_size=12))
def test_extending_the_ring_by_batches_is_appending_one_by_one(
        size: int, start: int, batches: list[int]) -> None:
    one, many = Ring(size), Ring(size)
    seq = start
    for count in batches:
        entries = [Entry(s, d.Delta(chat="c", seq=s, ts=0.0, turn=1, body=d.Text(text="")),
                         b"") for s in range(seq + 1, seq + 1 + count)]
        seq += count
        for entry in entries:
            one.append(entry)
        many.extend(entries)
        assert (len(many), many.first, many.last) == (len(one), one.first, one.last)
        assert [e.seq for e in many] == [e.seq for e in one]


_BODIES = st.lists(st.one_of(
    st.builds(d.Text, text=st.text(max_size=3)),
    st.builds(d.Reasoning, text=st.text(max_size=3)),
    st.builds(d.TurnStarted, prompt=st.just("p"), agent=st.just("a")),
    st.builds(d.TurnEnded, stop_reason=st.just("end_turn"))), max_size=40)


@given(batches=st.lists(_BODIES, max_size=5), parts=st.integers(0, 600))
def test_a_view_applies_a_batch_as_it_applies_its_deltas(
        batches: list[list[d.DeltaBody]], parts: int) -> None:
    one, many = ChatView(), ChatView()
    for view in (one, many):
        view.apply(1, 1, d.TurnStarted(prompt="p", agent="a"))
        for _ in range(parts):
            view.apply(2, 1, d.Text(text="."))
    seq = 3
    for batch in batches:
        for index, body in enumerate(batch):
            one.apply(seq + index, 1, body)
        many.apply_batch(seq, 1, batch)
        seq += len(batch)
        assert many.snapshot("c") == one.snapshot("c")


async def test_the_reader_hands_runs_of_lines_to_on_lines_in_order() -> None:
    """Lines of one read: runs the batch handler takes (here: lines starting with `c`)
    and the rest (a notification, a blank line) are handled in their order."""
    ours_out, _peer_in = trio.testing.memory_stream_one_way_pair()
    peer_out, ours_in = trio.testing.memory_stream_one_way_pair()
    seen: list[str] = []

    def on_lines(lines: list[bytes], start: int) -> int:
        end = start
        while end < len(lines) and lines[end].startswith(b"c"):
            end += 1
        if end > start:
            seen.append("batch:" + ",".join(x.decode() for x in lines[start:end]))
        return end

    async def on_request(method: str, params: msgspec.Raw | None) -> None:
        return None

    conn = JsonRpcConnection(ours_out, ours_in, on_request=on_request,
                             on_notification=lambda method, params: seen.append(method),
                             on_lines=on_lines)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve)
        await peer_out.send_all(b'c1\nc2\n{"jsonrpc":"2.0","method":"n1"}\n\nc3\n'
                                b'{"jsonrpc":"2.0","method":"n2"}\nc4\nc5\n')
        await peer_out.aclose()
    assert seen == ["batch:c1,c2", "n1", "batch:c3", "n2", "batch:c4,c5"]


@pytest.mark.parametrize("per_insert", [1, 5, 256])
async def test_a_batch_of_any_size_is_logged_whole(tmp_path: Path, per_insert: int) -> None:
    """The writer inserts a batch by multi-row statements of at most `per_insert` rows, then
    halving: every row lands, whatever the batch's size."""
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        store._rows_per_insert = per_insert
        seq = 0
        for size in (1, 3, 255, 256, 257, 700, 2):
            rows = [("c", s, float(s), b"d%d" % s) for s in range(seq + 1, seq + size + 1)]
            store.append_deltas(rows, sum(len(r[3]) for r in rows))
            seq += size
        await store.flush()
        logged = await store.read_deltas("c", 0, seq, limit=seq)
        assert logged == [(s, float(s), b"d%d" % s) for s in range(1, seq + 1)]


async def test_a_batch_logs_each_delta_as_its_tail(tmp_path: Path) -> None:
    """`publish_many` cuts each payload's logged tail itself (`logged_tail`, inlined): the
    rows rebuild every delta, across the seqs where msgpack's int size changes."""
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        hub = Hub(store, ring_size=64)
        channel = hub.open_channel("c", new_epoch(), head=60)
        sent = [d.Text(text=f"t{i}") for i in range(100)]
        expected: dict[int, d.DeltaBody] = {}
        for head in (60, 200, 65_500):  # 61..160, 201..300, 65501..65600
            channel.numbered = channel.head = head
            hub.publish_many("c", 7, sent)
            expected.update((head + 1 + i, body) for i, body in enumerate(sent))
        await store.flush()
        rows = await store.read_deltas("c", 0, 1 << 20, limit=1000)
        assert len(rows) == 300
        decode = msgspec.msgpack.Decoder(d.Delta).decode
        for seq, ts, data in rows:
            assert data[:1] != b"\x86"  # the tail, not the whole payload
            delta = decode(logged_payload(channel.log_prefix, seq, ts, data))
            assert (delta.seq, delta.turn, delta.body) == (seq, 7, expected[seq])


def test_take_returns_queued_frames_in_order_up_to_about_max_bytes() -> None:
    outbox = Outbox(max_frames=100, max_bytes=1 << 20, hard_max_bytes=1 << 30)
    frames = [bytes([i]) * 10 for i in range(20)]
    assert outbox.offer_batch(frames, 200)
    assert outbox.take(25) == frames[:3]  # past 25 bytes with the third
    assert outbox.take(1) == frames[3:4]  # at least one
    assert outbox.take(1 << 20) == frames[4:]  # all the rest at once
    assert (outbox.nbytes, outbox.sent_frames, len(outbox.frames)) == (0, 20, 0)

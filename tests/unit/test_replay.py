"""The replay window, as pure arithmetic and as the real hub over a real SQLite store.

Property: for any interleaving of publishes, slow reads (lag), disconnects and resumes, each
subscriber's delivered seqs are exactly 1..head, in order, with no gap and no duplicate.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import msgspec
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.channels.channel import Outbox, Subscription
from daemon.channels.hub import Hub, new_epoch
from daemon.channels.replay import Source, next_source, start_cursor
from daemon.store.sqlite import Store
from protocol import deltas as d
from protocol import messages as m
from protocol.framing import HEADER_SIZE

# --------------------------------------------------------------------------- pure


@given(st.integers(0, 100), st.integers(0, 100), st.integers(0, 100), st.integers(0, 100))
def test_next_source_partitions_the_window(cursor: int, head: int, ring: int,
                                           floor: int) -> None:
    # Normalise to a consistent channel: floor <= ring_first <= head + 1.
    head = max(head, 0)
    ring_first = min(max(ring, 1), head + 1)
    floor = min(max(floor, 1), ring_first)
    cursor = min(cursor, head)
    source = next_source(cursor=cursor, head=head, ring_first=ring_first, floor=floor)
    nxt = cursor + 1
    if nxt > head:
        assert source is Source.LIVE
    elif nxt >= ring_first:
        assert source is Source.RING
    elif nxt >= floor:
        assert source is Source.LOG
    else:
        assert source is Source.GONE


@given(st.one_of(st.none(), st.integers(0, 50)), st.one_of(st.none(), st.sampled_from("ab")),
       st.integers(0, 50), st.integers(1, 51))
def test_start_cursor(since: int | None, since_epoch: str | None, head: int, floor: int) -> None:
    floor = min(floor, head + 1)
    cursor, resync = start_cursor(since_seq=since, since_epoch=since_epoch, epoch="a",
                                  head=head, floor=floor)
    assert 0 <= cursor <= head
    if since is None:
        assert (cursor, resync) == (head, None)
    elif since == 0:
        assert resync is None
        assert cursor == max(floor - 1, 0)
    elif since_epoch == "b" or since > head or since + 1 < floor:
        assert resync is not None
        assert cursor == head
    else:
        assert (cursor, resync) == (since, None)


# --------------------------------------------------------------------------- hub model

_decoder = msgspec.msgpack.Decoder(m.ClientSideServerMessage)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 40), st.booleans()),
        st.tuples(st.just("drain"), st.integers(0, 2), st.integers(1, 60)),
        st.tuples(st.just("disconnect"), st.integers(0, 2)),
        st.tuples(st.just("resume"), st.integers(0, 2)),
    ),
    max_size=40,
)


class Client:
    """A subscriber as a client sees it: what it received, and where it left off."""

    def __init__(self) -> None:
        self.outbox: Outbox | None = None
        self.sub: Subscription | None = None
        self.seqs: list[int] = []

    def connect(self, hub: Hub, since: int | None) -> None:
        self.outbox = Outbox(max_frames=16, max_bytes=1 << 20, hard_max_bytes=1 << 30)
        self.sub = hub.subscribe("c", self.outbox, "framed", 0 if since is None else since)

    def receive(self, frame: bytes) -> None:
        message = _decoder.decode(frame[HEADER_SIZE:])
        if isinstance(message, d.Delta):
            self.seqs.append(message.seq)
        assert not isinstance(message, m.ResyncRequired), "nothing was pruned: no resync"


async def _writer_step(hub: Hub, client: Client, budget: int) -> None:
    """What a connection's writer does: send queued frames, else serve lag from ring/log."""
    outbox = client.outbox
    assert outbox is not None
    for _ in range(budget):
        if outbox.frames:
            for frame in outbox.take(1 << 30)[:]:
                client.receive(frame)
            continue
        if outbox.lagging:
            await hub.catch_up(outbox.lagging[0])
            continue
        return


async def _scenario(path: Path, script: list[Any]) -> None:
    async with Store.open(path, commit_interval=0.0) as store:
        hub = Hub(store, ring_size=16)
        hub.open_channel("c", new_epoch())
        clients = [Client() for _ in range(3)]
        for client in clients:
            client.connect(hub, 0)
        for op in script:
            if op[0] == "publish":
                for _ in range(op[1]):
                    hub.publish("c", 1, d.Text(text="x"))
                if op[2]:
                    await store.flush()  # delivered once committed
            elif op[0] == "drain":
                client = clients[op[1]]
                if client.sub is not None:
                    await _writer_step(hub, client, op[2])
            elif op[0] == "disconnect":
                client = clients[op[1]]
                if client.sub is not None:
                    hub.unsubscribe(client.sub)
                    client.sub = None
                    client.outbox = None
            elif op[0] == "resume":
                client = clients[op[1]]
                if client.sub is None:
                    client.connect(hub, client.seqs[-1] if client.seqs else 0)
        await store.flush()
        head = hub.head("c")
        for client in clients:
            if client.sub is None:
                client.connect(hub, client.seqs[-1] if client.seqs else 0)
            for _ in range(10_000):
                await _writer_step(hub, client, 100)
                assert client.outbox is not None
                if not client.outbox.frames and not client.outbox.lagging:
                    break
            assert client.seqs == list(range(1, head + 1))


@given(ops)
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_every_subscriber_gets_exactly_one_to_head_in_order(script: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(_scenario, Path(tmp) / "db.sqlite", script)


async def test_pruned_history_resyncs_with_snapshot(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        hub = Hub(store, ring_size=16)
        hub.open_channel("c", "e1")
        hub.publish("c", 1, d.TurnStarted(agent="echo", prompt="hi"))
        for _ in range(100):
            hub.publish("c", 1, d.Text(text="y"))
        await store.flush()
        await hub.prune(retain_deltas=20, retain_age=1e9)
        ch = hub.channel("c")
        assert ch is not None
        assert ch.floor == 82
        cursor, resync = start_cursor(since_seq=5, since_epoch="e1", epoch="e1", head=ch.head,
                                      floor=ch.floor)
        assert resync is not None
        assert cursor == ch.head
        snapshot = hub.snapshot("c")
        assert snapshot.turn == 1
        assert snapshot.turn_text == "y" * 100
        # A cursor inside the retained window replays from the log then the ring.
        outbox = Outbox(max_frames=1000, max_bytes=1 << 20, hard_max_bytes=1 << 30)
        sub = hub.subscribe("c", outbox, "framed", 82)
        await hub.catch_up(sub)
        got = [_decoder.decode(f[HEADER_SIZE:]) for f in outbox.take(1 << 30)]
        seqs = [x.seq for x in got if isinstance(x, d.Delta)]
        assert seqs == list(range(83, 102))
        assert isinstance(got[-1], m.ReplayComplete)

"""The ring, indexed by seq (issue 22: replay read the ring from its left on every pass,
quadratic in the replay length). Property: after any appends it holds exactly the newest
`size` entries, each found by its seq; and the hub replays from a ring that has wrapped
around many times, in passes bounded by a small outbox, exactly the missing seqs in order."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from daemon.channels.channel import Outbox, Ring
from daemon.channels.frames import Entry
from daemon.channels.hub import Hub, new_epoch
from daemon.store.sqlite import Store
from protocol import deltas as d
from protocol import messages as m
from protocol.framing import HEADER_SIZE

_decoder = msgspec.msgpack.Decoder(m.ClientSideServerMessage)


def _entry(seq: int) -> Entry:
    return Entry(seq, d.Delta(chat="c", seq=seq, ts=0.0, turn=1, body=d.Text(text="x")),
                 b"")


@given(size=st.integers(1, 40), start=st.integers(0, 1000), count=st.integers(0, 200))
def test_the_ring_holds_the_newest_size_entries_by_seq(size: int, start: int,
                                                       count: int) -> None:
    ring = Ring(size)
    model: deque[int] = deque(maxlen=size)
    for seq in range(start + 1, start + 1 + count):
        ring.append(_entry(seq))
        model.append(seq)
    assert len(ring) == len(model)
    assert [entry.seq for entry in ring] == list(model)
    if model:
        assert (ring.first, ring.last) == (model[0], model[-1])
        assert all(ring.get(seq).seq == seq for seq in model)
    else:
        assert len(ring) == 0


async def test_replay_from_a_wrapped_ring_in_many_passes(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        hub = Hub(store, ring_size=1000)
        hub.open_channel("c", new_epoch())
        for _ in range(5500):  # the ring wrapped five times
            hub.publish("c", 1, d.Text(text="y"))
        await store.flush()
        channel = hub.channel("c")
        assert channel is not None
        assert (channel.ring_first, channel.head) == (4501, 5500)
        outbox = Outbox(max_frames=7, max_bytes=1 << 20, hard_max_bytes=1 << 30)
        sub = hub.subscribe("c", outbox, "framed", 4700)
        seqs: list[int] = []
        passes = 0
        while outbox.lagging:
            await hub.catch_up(sub)
            passes += 1
            for frame in outbox.take(1 << 30):
                message = _decoder.decode(frame[HEADER_SIZE:])
                if isinstance(message, d.Delta):
                    seqs.append(message.seq)
        assert seqs == list(range(4701, 5501))
        assert passes >= 800 // 7

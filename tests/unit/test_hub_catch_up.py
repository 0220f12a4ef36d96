"""The hub's catch-up from the log (beyond the ring): a lagging subscriber is fed within its
outbox's byte bound, like one served from the ring."""

from __future__ import annotations

from pathlib import Path

import msgspec

from daemon.channels.channel import Outbox
from daemon.channels.hub import Hub, new_epoch
from daemon.store.sqlite import Store
from protocol import deltas as d
from protocol import messages as m
from protocol.framing import HEADER_SIZE

_decoder = msgspec.msgpack.Decoder(m.ClientSideServerMessage)


async def test_log_replay_keeps_to_the_outbox_byte_bound(tmp_path: Path) -> None:
    """A subscriber catching up from the log (beyond the ring) is fed no faster than its
    byte bound allows, like one served from the ring: replaying a batch of large logged
    deltas must not pass the hard limit, which closes the connection as not reading."""
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        hub = Hub(store, ring_size=16)
        hub.open_channel("c", new_epoch())
        for _ in range(200):
            hub.publish("c", 1, d.Text(text="x" * 1000))
        await store.flush()  # delivered (to the ring) once committed
        channel = hub.channel("c")
        assert channel is not None
        largest = max(len(entry.frame) for entry in channel.ring)
        outbox = Outbox(max_frames=1024, max_bytes=8_000, hard_max_bytes=32_000)
        hub.subscribe("c", outbox, "framed", 0)
        seqs: list[int] = []
        for _ in range(10_000):
            if outbox.frames:
                assert outbox.nbytes < outbox.max_bytes + largest
                for frame in outbox.take(1 << 30):
                    message = _decoder.decode(frame[HEADER_SIZE:])
                    if isinstance(message, d.Delta):
                        seqs.append(message.seq)
                continue
            if not outbox.lagging:
                break
            await hub.catch_up(outbox.lagging[0])  # must not raise OutboxOverflow
        assert seqs == list(range(1, 201))

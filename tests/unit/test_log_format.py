"""The log stores each delta without the chat, seq and ts its row already holds (issue 22:
127 bytes per delta, the payload repeating them). Properties: the full payload is rebuilt
byte for byte from the row; rows written before the change (the whole payload) stay
readable, mixed with new ones, through the hub's replay from the log."""

from __future__ import annotations

from pathlib import Path

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from daemon.channels.channel import Outbox
from daemon.channels.frames import log_prefix, logged_payload, logged_tail, msgpack_encoder
from daemon.channels.hub import Hub, new_epoch
from daemon.store.sqlite import Store
from protocol import deltas as d
from protocol import messages as m
from protocol.framing import HEADER_SIZE

_decoder = msgspec.msgpack.Decoder(m.ClientSideServerMessage)


@given(chat=st.text(min_size=1, max_size=80), seq=st.integers(1, 2**40),
       ts=st.floats(allow_nan=False, allow_infinity=False), turn=st.integers(0, 2**31),
       text=st.text(max_size=300))
def test_a_logged_tail_rebuilds_the_payload_byte_for_byte(chat: str, seq: int, ts: float,
                                                           turn: int, text: str) -> None:
    delta = d.Delta(chat=chat, seq=seq, ts=ts, turn=turn, body=d.Text(text=text))
    payload = msgpack_encoder.encode(delta)
    prefix = log_prefix(chat)
    tail = logged_tail(payload, prefix, seq)
    assert len(tail) < len(payload)
    assert tail[:1] != b"\x86"
    assert logged_payload(prefix, seq, ts, tail) == payload


def test_a_payload_not_laid_out_as_expected_is_kept_whole() -> None:
    # An int ts (not what the hub makes, but possible) is encoded as an int, not a float64.
    delta = d.Delta(chat="c", seq=5, ts=7, turn=1, body=d.Text(text="x"))
    payload = msgpack_encoder.encode(delta)
    prefix = log_prefix("c")
    assert logged_tail(payload, prefix, 5) == payload
    assert logged_payload(prefix, 5, 7.0, payload) == payload


async def test_old_whole_payload_rows_replay_next_to_new_ones(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db.sqlite", commit_interval=0.0) as store:
        # Rows 1-3 as a daemon before the change wrote them: the whole payload.
        for seq in (1, 2, 3):
            old = d.Delta(chat="c", seq=seq, ts=100.0 + seq, turn=1,
                          body=d.Text(text=f"old{seq}"))
            store.append_delta("c", seq, old.ts, msgpack_encoder.encode(old))
        await store.flush()
        hub = Hub(store, ring_size=16)
        hub.open_channel("c", new_epoch(), head=3, floor=1)
        for seq in range(4, 40):
            hub.publish("c", 1, d.Text(text=f"new{seq}"))
        await store.flush()
        sizes = dict(await store.query("SELECT seq, length(data) FROM deltas"))
        assert sizes[4] < sizes[1] - 20
        outbox = Outbox(max_frames=5, max_bytes=1 << 20, hard_max_bytes=1 << 30)
        sub = hub.subscribe("c", outbox, "framed", 0)
        got: list[d.Delta] = []
        while outbox.lagging:
            await hub.catch_up(sub)
            for frame in outbox.take(1 << 30):
                message = _decoder.decode(frame[HEADER_SIZE:])
                if isinstance(message, d.Delta):
                    got.append(message)
        assert [x.seq for x in got] == list(range(1, 40))
        texts = [x.body.text for x in got if isinstance(x.body, d.Text)]
        assert texts == ["old1", "old2", "old3"] + [f"new{seq}" for seq in range(4, 40)]
        assert got[0].ts == 101.0
        assert {x.chat for x in got} == {"c"}
        # The json rendering rebuilds it too.
        json_box = Outbox(max_frames=100, max_bytes=1 << 20, hard_max_bytes=1 << 30)
        json_sub = hub.subscribe("c", json_box, "json", 0)
        while json_box.lagging:
            await hub.catch_up(json_sub)
        first = msgspec.json.decode(json_box.take(1 << 30)[0])
        assert (first["seq"], first["body"]["text"]) == (1, "old1")

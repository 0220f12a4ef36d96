"""The Unix-socket framing: any split of the byte stream yields the same frames; oversized
headers are refused before anything is buffered."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import messages as m
from protocol.codec import ClientCodec, Encoding, ServerCodec
from protocol.framing import FrameEncoder, FrameReader, FrameTooLarge, frame


@given(st.lists(st.binary(max_size=300), max_size=20), st.data())
def test_any_split_of_the_stream_gives_the_same_frames(payloads: list[bytes],
                                                       data: st.DataObject) -> None:
    stream = b"".join(frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = FrameReader(max_frame=1000)
    got: list[bytes] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        got.extend(reader.feed(stream[last:cut]))
        last = cut
    assert got == payloads
    assert reader.pending == 0


def test_oversized_header_is_refused_at_once() -> None:
    reader = FrameReader(max_frame=100)
    with pytest.raises(FrameTooLarge) as error:
        reader.feed((101).to_bytes(4, "big"))
    assert error.value.size == 101
    assert error.value.limit == 100
    with pytest.raises(FrameTooLarge):
        FrameEncoder(max_frame=10).encode(m.Prompt(id=1, chat="c", text="x" * 100))


def test_truncated_frame_stays_pending() -> None:
    reader = FrameReader()
    assert reader.feed(frame(b"hello")[:-1]) == []
    assert reader.pending == 8


def test_codecs_round_trip_requests_and_typed_results() -> None:
    server = ServerCodec()
    encodings: tuple[Encoding, ...] = ("msgpack", "json")
    for encoding in encodings:
        client = ClientCodec(encoding)
        request = m.Prompt(id=3, chat="c", text="hi")
        decoded = server.decode(client.encode(request), encoding)
        assert decoded == request
        reply = server.encode(m.Reply(id=3, result=m.PromptAccepted(chat="c", turn=1,
                                                                    queued=0)), encoding)
        raw = client.decode(reply)
        assert isinstance(raw, m.RawReply)
        assert client.result(raw, m.Prompt) == m.PromptAccepted(chat="c", turn=1, queued=0)


def test_head_names_the_request_of_an_invalid_frame() -> None:
    server = ServerCodec()
    payload = msgspec.msgpack.encode({"type": "prompt", "id": 9, "chat": 1})
    with pytest.raises(msgspec.ValidationError):
        server.decode(payload)
    head = server.head(payload)
    assert head is not None
    assert (head.type, head.id) == ("prompt", 9)
    assert server.head(b"\xc1") is None

"""The optimised hot paths keep the behaviour of the straightforward code they replaced:
the batched NDJSON reader, the one-pass decoding of `session/update`, and the WebSocket
messages built in bulk (scripts/bench measures the speed; this checks the sameness)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage

from daemon.acp import updates
from daemon.acp.lines import LineTooLong, read_line_batches, read_lines
from daemon.acp.rpc import ConnectionLost, JsonRpcConnection
from daemon.listeners.websocket.frames import encode_messages
from protocol import deltas as d

# ------------------------------------------------------------------------- NDJSON reader


class _Chunks(trio.abc.ReceiveStream):
    """A receive stream that returns the given chunks, then EOF."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self._chunks.pop(0) if self._chunks else b""

    async def aclose(self) -> None:
        pass


def _reference(data: bytes) -> list[bytes]:
    """What the line-at-a-time reader yielded: every newline-terminated line as it is, then
    the unterminated tail, stripped, if anything is left of it."""
    *lines, tail = data.split(b"\n")
    tail = tail.strip()
    return [*lines, tail] if tail else lines


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


async def _collect(chunks: list[bytes], cap: int) -> list[bytes]:
    return [line async for line in read_lines(_Chunks(chunks), cap)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"bc", b" ", b"\n", b"{}", b"\r", b"xyz\n"]),
                max_size=40).map(b"".join),
       st.lists(st.integers(min_value=0, max_value=1000), max_size=8))
def test_batched_reader_yields_the_same_lines(data: bytes, cuts: list[int]) -> None:
    assert trio.run(_collect, _split(data, cuts), 1 << 20) == _reference(data)


async def test_batches_are_one_list_per_read() -> None:
    batches = [b async for b in read_line_batches(_Chunks([b"a\nb\nc", b"d\ne\n"]), 100)]
    assert batches == [[b"a", b"b"], [b"cd", b"e"]]


async def _until_failure(chunks: list[bytes], cap: int) -> tuple[list[bytes], bool]:
    seen: list[bytes] = []
    try:
        async for line in read_lines(_Chunks(chunks), cap):
            seen.append(line)
    except LineTooLong:
        return seen, True
    return seen, False


async def test_lines_before_an_over_long_one_come_first() -> None:
    chunks = [b"ok\nfine\n" + b"x" * 50 + b"\nlater\n"]
    assert await _until_failure(chunks, 10) == ([b"ok", b"fine"], True)


async def test_an_unterminated_line_past_the_cap_fails() -> None:
    assert await _until_failure([b"ok\n" + b"x" * 8, b"y" * 8], 10) == ([b"ok"], True)


async def test_a_line_split_across_reads_is_joined_and_capped() -> None:
    assert await _collect([b"x" * 6, b"y" * 4 + b"\n"], 10) == [b"x" * 6 + b"y" * 4]
    with pytest.raises(LineTooLong):
        await _collect([b"x" * 6, b"y" * 5 + b"\n"], 10)


# ------------------------------------------------------------------------- session/update


def _two_step(params: msgspec.Raw) -> tuple[str | None, d.DeltaBody]:
    """The general path alone: params, then the update, each decoded on its own. (The one
    deliberate difference, an empty agent chunk whose `_meta.usage` becomes a usage delta,
    is tested in test_updates.py.)"""
    try:
        note = updates._notification.decode(params)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None, d.Raw(method="session/update", acp=updates._safe_json(params))
    try:
        update = updates._update.decode(note.update)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return note.session_id, d.Raw(method="session/update",
                                      acp=updates._safe_json(note.update))
    return note.session_id, updates.map_update(update, note.update)


def _chunk(kind: str, content: Any) -> dict[str, Any]:
    return {"sessionUpdate": kind, "content": content}


TEXT = {"type": "text", "text": "hello"}
UPDATES: list[Any] = [
    _chunk("agent_message_chunk", TEXT),
    _chunk("agent_message_chunk", {**TEXT, "annotations": {"priority": 1}, "_meta": {}}),
    _chunk("agent_thought_chunk", TEXT),
    _chunk("user_message_chunk", TEXT),
    _chunk("agent_message_chunk", {"type": "image", "data": "aGk=", "mimeType": "image/png"}),
    _chunk("agent_message_chunk", {"text": "no type"}),
    _chunk("agent_message_chunk", {"type": "text", "text": 5}),
    _chunk("agent_message_chunk", {"type": "nonsense"}),
    {"sessionUpdate": "tool_call", "toolCallId": "t1", "title": "read", "kind": "read"},
    {"sessionUpdate": "tool_call_update", "toolCallId": "t1", "status": "completed"},
    {"sessionUpdate": "plan", "entries": [{"content": "a", "status": "pending"}]},
    {"sessionUpdate": "available_commands_update", "availableCommands": [{"name": "x"}]},
    {"sessionUpdate": "current_mode_update", "currentModeId": "plan"},
    {"sessionUpdate": "config_option_update", "configOptions": [{"id": "m"}]},
    {"sessionUpdate": "session_info_update", "title": "T", "updatedAt": "now"},
    {"sessionUpdate": "usage_update", "used": 5, "size": 10, "cost": {"amount": 1}},
    {"sessionUpdate": "something_new", "x": 1},
    {"sessionUpdate": "current_mode_update"},
    "not an object",
]
PARAMS: list[Any] = [{"sessionId": "s1", "update": u} for u in UPDATES] + [
    {"update": UPDATES[0]},
    {"sessionId": 7, "update": UPDATES[0]},
    [],
]


@pytest.mark.parametrize("params", PARAMS)
def test_one_pass_decoding_matches_the_two_step_path(params: Any) -> None:
    raw = msgspec.Raw(json.dumps(params).encode())
    assert updates.decode_session_update(raw) == _two_step(raw)


def test_malformed_params_are_kept_raw() -> None:
    raw = msgspec.Raw(b'{"sessionId": "s1", "update": ')
    assert updates.decode_session_update(raw) == _two_step(raw)


@pytest.mark.parametrize("params", PARAMS)
def test_a_whole_chunk_line_decodes_like_its_params(params: Any) -> None:
    line = json.dumps({"jsonrpc": "2.0", "method": "session/update", "params": params})
    body = updates.decode_chunk_line(line.encode())
    _session, general = updates.decode_session_update(msgspec.Raw(json.dumps(params).encode()))
    if body is not None:
        assert body == general
        assert type(body) in (d.Text, d.Reasoning, d.UserText)
    else:
        # Declined lines are exactly those whose body is not a text chunk.
        assert not (type(general) in (d.Text, d.Reasoning, d.UserText)
                    and isinstance(params, dict) and isinstance(params.get("sessionId"), str))


@pytest.mark.parametrize("line", [
    {"jsonrpc": "2.0", "id": 1, "method": "session/update",
     "params": {"sessionId": "s", "update": UPDATES[0]}},
    {"jsonrpc": "2.0", "id": None, "method": "session/update",
     "params": {"sessionId": "s", "update": UPDATES[0]}},
    {"jsonrpc": "2.0", "method": "session/other",
     "params": {"sessionId": "s", "update": UPDATES[0]}},
    {"jsonrpc": "2.0", "id": 3, "result": {"stopReason": "end_turn"}},
    {"jsonrpc": "2.0", "method": "session/update"},
])
def test_requests_responses_and_other_methods_are_declined(line: dict[str, Any]) -> None:
    assert updates.decode_chunk_line(json.dumps(line).encode()) is None


def test_a_line_that_is_not_json_is_declined() -> None:
    assert updates.decode_chunk_line(b"{not json") is None


# ------------------------------------------------------------------------- WebSocket frames


def _client_reading_server() -> tuple[WSConnection, WSConnection]:
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/")))
    list(server.events())
    client.receive_data(server.send(AcceptConnection()))
    list(client.events())
    return client, server


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_bulk_messages_parse_as_websocket_messages(size: int) -> None:
    client, _server = _client_reading_server()
    binary = b"\x85" + b"m" * max(0, size - 1) if size else b""
    text = (b"{" + b"j" * max(0, size - 1)) if size else b"{"
    client.receive_data(encode_messages([binary, text, b"\x80"]))
    received: list[Any] = []
    for event in client.events():
        if isinstance(event, BytesMessage | TextMessage):
            received.append(event)
    assert [type(e) for e in received] == [BytesMessage, TextMessage, BytesMessage]
    assert bytes(received[0].data) == binary
    assert received[1].data == text.decode()
    assert bytes(received[2].data) == b"\x80"
    assert all(e.message_finished for e in received)


async def test_serve_raises_line_too_long_itself_and_fails_pending_requests() -> None:
    """Not wrapped in an ExceptionGroup by serve's request nursery (issue 15: the backend's
    `except LineTooLong` missed it and the actor died with an internal error)."""
    to_peer_send, _to_peer_receive = trio.testing.memory_stream_pair()
    from_peer_send, from_peer_receive = trio.testing.memory_stream_pair()

    async def no_requests(method: str, params: msgspec.Raw | None) -> None:
        raise AssertionError(method)

    rpc = JsonRpcConnection(to_peer_send, from_peer_receive, on_request=no_requests,
                            on_notification=lambda method, params: None, max_line=10)
    failures: list[BaseException] = []

    async def ask() -> None:
        try:
            await rpc.request("x", {})
        except ConnectionLost as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        await from_peer_send.send_all(b"{}\n" + b"x" * 50 + b"\n")
        with pytest.raises(LineTooLong):
            await rpc.serve()
    assert len(failures) == 1
    assert "protocol error" in str(failures[0])

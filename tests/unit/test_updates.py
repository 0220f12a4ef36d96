"""Mapping agent updates to deltas: token usage that agents report in `_meta` (qwen), and
that an odd `_meta` never costs a chunk its text."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from daemon.acp.updates import decode_chunk_line, decode_session_update
from protocol import deltas as d


def params(update: dict[str, Any]) -> msgspec.Raw:
    return msgspec.Raw(json.dumps({"sessionId": "s", "update": update}).encode())


def chunk(text: str, meta: Any = None) -> dict[str, Any]:
    update: dict[str, Any] = {"sessionUpdate": "agent_message_chunk",
                              "content": {"type": "text", "text": text}}
    if meta is not None:
        update["_meta"] = meta
    return update


QWEN_USAGE = {"usage": {"inputTokens": 7874, "outputTokens": 11, "totalTokens": 7885,
                        "thoughtTokens": 0, "cachedReadTokens": 2}, "durationMs": 612}


def test_qwen_style_usage_on_an_empty_chunk_becomes_a_usage_delta() -> None:
    session, body = decode_session_update(params(chunk("", QWEN_USAGE)))
    assert session == "s"
    assert body == d.Usage(input_tokens=7874, output_tokens=11, total_tokens=7885,
                           cached_tokens=2)


def test_the_fast_path_leaves_empty_chunks_to_the_general_one() -> None:
    line = json.dumps({"jsonrpc": "2.0", "method": "session/update",
                       "params": {"sessionId": "s", "update": chunk("", QWEN_USAGE)}})
    assert decode_chunk_line(line.encode()) is None
    hello = json.dumps({"jsonrpc": "2.0", "method": "session/update",
                        "params": {"sessionId": "s", "update": chunk("hi", QWEN_USAGE)}})
    assert decode_chunk_line(hello.encode()) == d.Text(text="hi")


def test_odd_meta_never_costs_the_text() -> None:
    for meta in ("a string", 42, [1, 2], {"usage": "lots"}, {"usage": {"inputTokens": "x"}},
                 {"other": 1}):
        assert decode_session_update(params(chunk("kept", meta)))[1] == d.Text(text="kept")
        assert decode_session_update(params(chunk("", meta)))[1] == d.Text(text="")

"""The judge of `stoker acp`'s output has teeth: what it passes in the integration tests is
checked, not waved through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.acp_bridge_helpers import check_trace

NEW = {"jsonrpc": "2.0", "id": 1, "method": "session/new",
       "params": {"cwd": "/w", "mcpServers": []}}
NEW_ANSWER = {"jsonrpc": "2.0", "id": 1, "result": {"sessionId": "c1"}}
CHUNK = {"jsonrpc": "2.0", "method": "session/update", "params": {
    "sessionId": "c1", "update": {"sessionUpdate": "agent_message_chunk",
                                  "content": {"type": "text", "text": "hi"}}}}
WITHDRAW = {"jsonrpc": "2.0", "method": "$/cancel_request", "params": {"requestId": 3}}


def _judge(tmp_path: Path, received: list[Any], written: list[Any]) -> None:
    out, into = tmp_path / "out", tmp_path / "in"
    out.write_text("".join(json.dumps(x) + "\n" for x in written))
    into.write_text("".join(json.dumps(x) + "\n" for x in received))
    check_trace(out, into)


def test_a_valid_exchange_passes(tmp_path: Path) -> None:
    _judge(tmp_path, [NEW], [NEW_ANSWER, CHUNK, WITHDRAW])


@pytest.mark.parametrize(("written", "why"), [
    ([{"jsonrpc": "2.0", "id": 1, "result": {}}], "sessionId"),
    ([NEW_ANSWER, {**CHUNK, "params": {"sessionId": "c1", "update": {
        "sessionUpdate": "x_unknown"}}}], "schema"),
    ([CHUNK, NEW_ANSWER], "before the session/new response"),
    ([NEW_ANSWER, {**WITHDRAW, "params": {}}], "violates the ACP schema"),
    ([NEW_ANSWER, {"jsonrpc": "2.0", "method": "$/other", "params": {}}], "unknown protocol"),
], ids=["new-without-id", "unknown-update", "update-too-early", "bad-cancel", "bad-method"])
def test_violations_are_caught(tmp_path: Path, written: list[Any], why: str) -> None:
    with pytest.raises(AssertionError, match=why):
        _judge(tmp_path, [NEW], written)

"""The two agent-side additions to `JsonRpcConnection` that `stoker acp` relies on:
`FollowUp` (work that must wait until an answer is written) and `cancel_notify`
(`$/cancel_request` when a request we sent is given up)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import trio
import trio.lowlevel
import trio.testing

from daemon.acp.lines import read_lines
from daemon.acp.rpc import FollowUp, JsonRpcConnection, RpcError


def _pair() -> tuple[JsonRpcConnection, trio.abc.SendStream, trio.abc.ReceiveStream,
                     list[int]]:
    """Our connection, the peer's ends (its send into us, its receive from us), and a log
    of how many lines we had written when each `then` ran."""
    ours_out, peer_in = trio.testing.memory_stream_one_way_pair()
    peer_out, ours_in = trio.testing.memory_stream_one_way_pair()
    written_at_then: list[int] = []

    async def on_request(method: str, params: msgspec.Raw | None) -> Any:
        def then() -> None:
            written_at_then.append(conn.lines_out)

        if method == "fail":
            return FollowUp(then=then, error=RpcError(-32000, "nope"))
        return FollowUp({"ok": True}, then=then)

    conn = JsonRpcConnection(ours_out, ours_in, on_request=on_request,
                             on_notification=lambda method, params: None)
    return conn, peer_out, peer_in, written_at_then


async def test_follow_up_runs_after_the_answer_is_written() -> None:
    conn, peer_out, peer_in, written_at_then = _pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve)
        await peer_out.send_all(b'{"jsonrpc":"2.0","id":1,"method":"go"}\n'
                                b'{"jsonrpc":"2.0","id":2,"method":"fail"}\n')
        lines = read_lines(peer_in, 1 << 20)
        answers = [json.loads(await lines.__anext__()) for _ in range(2)]
        with trio.fail_after(5):
            while len(written_at_then) < 2:
                await trio.lowlevel.checkpoint()
        await peer_out.aclose()
    assert sorted(written_at_then) == [1, 2]
    by_id = {a["id"]: a for a in answers}
    assert by_id[1]["result"] == {"ok": True}
    assert by_id[2]["error"]["code"] == -32000


async def test_a_cancelled_request_is_withdrawn_with_cancel_request() -> None:
    conn, peer_out, peer_in, _ = _pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve)
        lines = read_lines(peer_in, 1 << 20)
        scope = trio.CancelScope()

        async def ask() -> None:
            with scope:
                await conn.request("session/request_permission", {}, cancel_notify=True)

        nursery.start_soon(ask)
        asked = json.loads(await lines.__anext__())
        scope.cancel()
        withdrawn = json.loads(await lines.__anext__())
        assert withdrawn == {"method": "$/cancel_request", "params": {
            "requestId": asked["id"]}, "jsonrpc": "2.0"}
        # Without the flag, giving up says nothing (the daemon's own probes rely on that):
        # the next line after the abandoned ping is the marker sent after it.
        quiet = trio.CancelScope()

        async def ping() -> None:
            with quiet:
                await conn.request("_stoker/ping", {})

        nursery.start_soon(ping)
        assert json.loads(await lines.__anext__())["method"] == "_stoker/ping"
        quiet.cancel()
        await conn.notify("marker", {})
        assert json.loads(await lines.__anext__())["method"] == "marker"
        await peer_out.aclose()

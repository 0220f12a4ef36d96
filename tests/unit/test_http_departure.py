"""`departure.unless_gone` over trio's in-memory stream pair: a client's end of file or
reset cancels the work; bytes it sends ahead are kept for h11 and are no departure, past
the limit too; the work's own result and errors come through unwrapped."""

from __future__ import annotations

import h11
import pytest
import trio
import trio.testing

from daemon.listeners.http import departure

REQUEST = b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n"


def _conn() -> h11.Connection:
    """A server connection that has read one whole request (and owes its response)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(REQUEST)
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    return conn


async def test_end_of_file_cancels_the_work() -> None:
    client, server = trio.testing.memory_stream_pair()
    cancelled = False

    async def wait_long() -> str:
        nonlocal cancelled
        try:
            await trio.sleep_forever()
        finally:
            cancelled = True

    async def leave() -> None:
        await client.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leave)
        with pytest.raises(departure.ClientGone):
            await departure.unless_gone(server, _conn(), wait_long)
    assert cancelled


async def test_a_reset_cancels_the_work() -> None:
    class Reset(trio.abc.ReceiveStream):
        async def receive_some(self, max_bytes: int | None = None) -> bytes:
            raise trio.BrokenResourceError("connection reset")

        async def aclose(self) -> None:
            pass

    with pytest.raises(departure.ClientGone):
        await departure.unless_gone(Reset(), _conn(), trio.sleep_forever)


@pytest.mark.parametrize("ahead", [1, 1000, departure.PIPELINE_LIMIT * 3])
async def test_bytes_sent_ahead_are_kept_and_no_departure(ahead: int) -> None:
    client, server = trio.testing.memory_stream_pair()
    conn = _conn()
    pipelined = (REQUEST * (ahead // len(REQUEST) + 1))[:ahead]
    await client.send_all(pipelined)

    async def answer() -> str:
        await trio.testing.wait_all_tasks_blocked()  # the watch has read what it will
        return "answered"

    assert await departure.unless_gone(server, conn, answer) == "answered"
    kept = conn.trailing_data[0]
    rest = b""
    while len(kept) + len(rest) < ahead:  # past the limit, the rest waits in the stream
        rest += await server.receive_some()
    assert kept + rest == pipelined
    assert len(kept) <= departure.PIPELINE_LIMIT + 65536


async def test_the_works_error_comes_through_unwrapped() -> None:
    _, server = trio.testing.memory_stream_pair()

    async def fail() -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError):
        await departure.unless_gone(server, _conn(), fail)

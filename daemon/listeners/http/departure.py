"""Whether an HTTP client is still there while its request is answered.

A request may wait a long time for its answer (`POST /api/task` with `wait` up to an hour,
an MCP `task_result` call). A client that gave up meanwhile must not keep that wait, nor
its connection, which holds a place among the listener's TCP connections: `watch` reads
the connection while the answer is prepared, and end of file (the client closed its end)
or a reset means it is gone. That is the rule of HTTP servers generally (Go's net/http
cancels a request's context the same way): an HTTP client that shuts down only its sending
side (`shutdown(SHUT_WR)`) is taken as gone too, since TCP cannot tell that from a close
before a write.

Bytes a client sends ahead while it waits (a pipelined request) are not a departure: they
are handed to h11, which keeps them for the next request. Past `PIPELINE_LIMIT` of them the
watch stops reading (the client's own bytes hold it back, as TCP does) and a departure is
no longer seen until the answer is written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import h11
import trio

PIPELINE_LIMIT = 64 * 1024
"""Bytes a client may send ahead while its request is answered, kept for h11."""

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed or reset its connection while its request was answered; the
    request was cancelled (what it started, a task or a turn, goes on)."""


async def watch(stream: trio.abc.ReceiveStream, conn: h11.Connection,
                gone: Callable[[], None], limit: int = PIPELINE_LIMIT) -> None:
    """Read `stream` until cancelled; call `gone` (once, then return) at end of file or a
    reset. Whatever is read goes to `conn` (a cancelled `receive_some` loses nothing)."""
    ahead = 0
    try:
        while ahead <= limit:
            data = await stream.receive_some(65536)
            if not data:
                break
            ahead += len(data)
            conn.receive_data(bytes(data))
        else:
            await trio.sleep_forever()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    gone()


async def unless_gone(stream: trio.abc.ReceiveStream, conn: h11.Connection,
                      work: Callable[[], Awaitable[T]]) -> T:
    """`await work()` while watching the connection: its result, or the exception it
    raised, or `ClientGone` (and `work` cancelled) when the client went away first."""
    left = False
    results: list[T] = []
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:

        def client_left() -> None:
            nonlocal left
            left = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch, stream, conn, client_left)
        try:
            results.append(await work())
        except Exception as exc:
            # Raised after the nursery: inside, it would leave wrapped in an ExceptionGroup.
            failure = exc
        nursery.cancel_scope.cancel()
    if left:
        raise ClientGone
    if failure is not None:
        raise failure
    return results[0]

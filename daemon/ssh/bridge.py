"""The one asyncio loop of the SSH subsystem, running inside the trio daemon (trio-asyncio).

asyncssh is an asyncio library and the daemon is a trio program. The subsystem opens one
trio-asyncio loop in a task of its own (`Bridge.run`, started in the daemon's nursery) and
every asyncssh call goes through `Bridge.call`, from whichever trio task needs it: the
backend actor spawning an agent, a stream adapter reading its stdout, the reaper's git.

`call` sets trio-asyncio's loop context variable in the calling task for the duration of the
call. asyncssh starts asyncio tasks from its protocol callbacks with
`asyncio.ensure_future(coro)` (no loop argument); those find the loop through that variable
in the context they were created in, which is a copy of the caller's. Without it the first
key exchange fails with "'NoneType' object has no attribute 'create_task'".
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import trio

T = TypeVar("T")
P = ParamSpec("P")


class BridgeClosed(Exception):
    """The loop is not running (the daemon is shutting down, or it never started)."""


class Bridge:
    """Owns the asyncio loop; `call` runs asyncio coroutine functions on it."""

    def __init__(self) -> None:
        self._loop: Any = None
        self._ready = trio.Event()
        self._started = False

    @property
    def running(self) -> bool:
        return self._loop is not None

    def start(self, nursery: trio.Nursery) -> None:
        """Open the loop in a new task of `nursery` (idempotent). Calls made before it is
        open wait for it."""
        if not self._started:
            self._started = True
            nursery.start_soon(self.run)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        import trio_asyncio  # ~80 ms to import: only when a computer is configured

        self._started = True
        try:
            async with trio_asyncio.open_loop() as loop:
                self._loop = loop
                self._ready.set()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._loop = None
            self._ready.set()  # waiters wake up and see that it is closed

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args,
                   **kwargs: P.kwargs) -> T:
        """`await fn(*args, **kwargs)` on the asyncio loop. Cancelling the caller cancels
        the asyncio task."""
        if not self._ready.is_set():
            if not self._started:
                raise BridgeClosed("the SSH subsystem is not running")
            await self._ready.wait()
        loop = self._loop
        if loop is None:
            raise BridgeClosed("the SSH subsystem has stopped")
        import trio_asyncio

        token = trio_asyncio.current_loop.set(loop)
        try:
            result: T = await trio_asyncio.aio_as_trio(fn, loop=loop)(*args, **kwargs)
            return result
        finally:
            trio_asyncio.current_loop.reset(token)

    async def call_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a plain function of an asyncio object (a channel's `close`, a writer's
        `write_eof`) inside the loop, where asyncio expects to be called."""

        async def run() -> T:
            return fn(*args, **kwargs)

        return await self.call(run)


@contextlib.asynccontextmanager
async def open_bridge() -> AsyncIterator[Bridge]:
    """A bridge for a short-lived trio program (`stoker doctor`)."""
    bridge = Bridge()
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run)
        try:
            yield bridge
        finally:
            nursery.cancel_scope.cancel()

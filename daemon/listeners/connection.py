"""The client actor: one per connection, whatever the transport (Unix socket, WebSocket).

It reads requests, hands them to the pool or hub, and maps every outcome to a reply:
a `StokerError` becomes an `ErrorReply` with its code, anything else an `internal` error
(logged with its traceback). Bad frames get an error value and the connection carries on;
only an oversized frame (after which the stream cannot be trusted) or a client that stops
reading past the hard limit ends the connection, and only that connection.

A connection must earn its slot: one that says no `hello` within `hello_timeout`, or that
holds no subscription and has no request in flight for `idle_timeout`, is told why (an
error or a `goodbye`) and closed, so silent sockets cannot lock real clients out of
`max_connections`.

Writes go through the connection's `Outbox`; one writer task drains it, coalescing whatever
is queued into a single send, and serves lagging subscriptions from the ring or the log when
the queue is empty. The hub never waits for this connection.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import trio

from daemon.channels.channel import Outbox, OutboxOverflow, Subscription
from daemon.channels.frames import Mode, encode_message
from daemon.channels.hub import Hub
from daemon.channels.replay import start_cursor
from daemon.errors import BadRequest, LimitReached, StokerError, UnknownChat
from daemon.log import Log
from daemon.store.faults import FLUSH_PATIENCE
from protocol import messages as m
from protocol.codec import ServerCodec
from protocol.errors import ErrorCode
from protocol.framing import FrameTooLarge

MAX_SUBSCRIPTIONS = 1024
SEND_BATCH_BYTES = 256 * 1024


class Transport(Protocol):
    """A message-oriented view of a connection."""

    mode: Mode
    encoding: str
    peer: str
    async def receive(self) -> bytes | str | None:
        """The next message payload, or None at a clean EOF. Raises `FrameTooLarge`."""
        ...

    async def send_batch(self, frames: list[bytes]) -> None: ...

    async def aclose(self) -> None: ...

    def peer_reading(self) -> bool:
        """After `receive` returned None: whether the client still reads (it shut down only
        its sending side, a Unix socket's `shutdown(SHUT_WR)`). A WebSocket's close ends
        both directions."""
        ...


class Handlers(Protocol):
    """What a connection needs from the rest of the daemon (`daemon.service.root.Service`,
    which asks its router)."""

    hub: Hub

    async def handle(self, request: Any, client: str) -> Any: ...

    def is_slow(self, request: object) -> bool:
        """Whether `request` is answered in its own task (its reply may overtake others)."""
        ...

    def welcome(self, encoding: str) -> m.Welcome: ...

    async def render_metrics(self) -> bytes | None:
        """The Prometheus text exposition; None when `[websocket] metrics` is off."""
        ...


@dataclass(slots=True)
class Limits:
    subscriber_queue: int
    subscriber_bytes: int
    heartbeat: float
    max_frame: int
    hello_timeout: float = 0.0
    """No hello within this many seconds: closed (0: never)."""
    idle_timeout: float = 0.0
    """After hello, no subscription and no request for this long: closed (0: never)."""


class Connection:
    def __init__(self, transport: Transport, handlers: Handlers, limits: Limits,
                 log: Log) -> None:
        self._t = transport
        self._handlers = handlers
        self._hub = handlers.hub
        self._limits = limits
        self._log = log
        self._codec = ServerCodec()
        self.outbox = Outbox(
            max_frames=limits.subscriber_queue,
            max_bytes=limits.subscriber_bytes,
            hard_max_bytes=max(limits.subscriber_bytes * 4, 64 * 1024 * 1024),
        )
        self._subs: dict[str, Subscription] = {}
        self.client = ""
        self._hello = False
        self._closing = False
        self._reader_scope: trio.CancelScope | None = None
        self._in_flight = False
        """The writer is inside `send_batch` (frames taken from the outbox, not yet sent)."""
        self.requests = 0
        self._opened = trio.current_time()
        self._last_activity = self._opened
        self._answering = 0
        """Requests being answered in their own task (slow ones)."""
        self._answered = trio.Event()
        """Set each time a request's answer is queued (see `_answers_in_flight`)."""
        self._receive_scope: trio.CancelScope | None = None
        self._send_now: Callable[[bytes], int] | None = getattr(transport, "send_now", None)
        """The transport's write without waiting, lent to the outbox while the writer is
        idle (`Outbox.direct`); None where the transport has none (WebSocket)."""
        self._parked = False
        """The writer waits for something to send (nothing queued, nothing being sent)."""

    # ------------------------------------------------------------------ encoding

    def encode(self, message: Any) -> bytes:
        """`message` as this transport sends it (the mode may change at hello)."""
        return encode_message(message, self._t.mode)

    def send(self, message: Any) -> None:
        """Queue a control message (reply, error, goodbye). Never blocks."""
        self.outbox.put(self.encode(message))

    def error(self, request_id: int | None, code: ErrorCode, message: str,
              detail: Any = None) -> None:
        self.send(m.ErrorReply(id=request_id, code=code, message=message, detail=detail))

    # ------------------------------------------------------------------ main

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._heartbeats)
                try:
                    with trio.CancelScope() as scope:
                        self._reader_scope = scope
                        if self._closing:
                            scope.cancel()
                        await self._reader(nursery)
                finally:
                    # Let what is queued (final replies, goodbye) go out, briefly.
                    self.outbox.closed = True
                    self.outbox.wake()
                    with trio.move_on_after(1):
                        # A batch the writer took but has not finished sending counts too:
                        # cancelling it now would lose the goodbye.
                        while self.outbox.frames or self._in_flight:
                            await trio.sleep(0.01)
                    nursery.cancel_scope.cancel()
        except* OutboxOverflow as group:
            self._log.warning("closing connection: client not reading",
                              error=str(group.exceptions[0]))
        finally:
            for sub in self._subs.values():
                self._hub.unsubscribe(sub)
            self._subs.clear()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._t.aclose()

    async def goodbye(self, reason: str) -> None:
        """Ask the connection to close after flushing (daemon shutdown). Deltas published
        before are delivered first: they wait for their commit."""
        await self._hub.settle()
        self._closing = True
        try:
            self.send(m.Goodbye(reason=reason))
        except OutboxOverflow:
            pass
        if self._reader_scope is not None:
            self._reader_scope.cancel()

    def _deadline(self) -> float:
        """When this connection stops deserving its slot, as things stand."""
        limits = self._limits
        if not self._hello:
            return self._opened + limits.hello_timeout if limits.hello_timeout > 0 else math.inf
        if limits.idle_timeout > 0 and not self._subs and not self._answering:
            return self._last_activity + limits.idle_timeout
        return math.inf

    def _rearm(self) -> None:
        """Subscriptions or requests in flight changed: move the reader's deadline."""
        self._last_activity = trio.current_time()
        if self._receive_scope is not None:
            self._receive_scope.deadline = self._deadline()

    def _expire(self) -> None:
        if not self._hello:
            reason = f"no hello within {self._limits.hello_timeout:g}s"
            self.error(None, ErrorCode.HELLO_REQUIRED, reason)
        else:
            reason = (f"idle for {self._limits.idle_timeout:g}s with no subscription and no "
                      "request")
        self.send(m.Goodbye(reason=reason))
        self._log.info("closing connection", reason=reason, client=self.client or None)

    async def _reader(self, nursery: trio.Nursery) -> None:
        while not self._closing:
            try:
                with trio.CancelScope(deadline=self._deadline()) as scope:
                    self._receive_scope = scope
                    payload = await self._t.receive()
                self._receive_scope = None
                if scope.cancelled_caught:
                    self._expire()
                    return
                self._last_activity = trio.current_time()
            except FrameTooLarge as exc:
                self.error(None, ErrorCode.FRAME_TOO_LARGE, str(exc))
                self.send(m.Goodbye(reason="frame too large"))
                self._log.warning("closing connection: frame too large", error=str(exc))
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if payload is None:
                if self._t.peer_reading():
                    await self._answers_in_flight()
                return
            await self._dispatch(payload, nursery)

    async def _answers_in_flight(self) -> None:
        """At EOF, wait for the answers of the requests still being answered: a client that
        half-closed its end still reads them (`shutdown(SHUT_WR)` after its last request).
        Shutdown's goodbye ends the wait (it cancels the reader)."""
        while self._answering:
            self._answered = trio.Event()
            await self._answered.wait()

    async def _dispatch(self, payload: bytes | str, nursery: trio.Nursery) -> None:
        """Requests are answered in the order they arrive (a client may pipeline
        open_chat, subscribe, prompt), except the slow ones (the router says which), which run
        in their own task so that one slow answer never holds up the next request.
        `subscribe` and `unsubscribe` act on this connection's subscriptions: it answers them
        itself, in order."""
        encoding = "json" if self._t.encoding == "json" else "msgpack"
        data = payload.encode() if isinstance(payload, str) else payload
        try:
            message = self._codec.decode(data, encoding)  # type: ignore[arg-type]
        except msgspec.ValidationError as exc:
            # Before DecodeError, of which ValidationError is a subclass: a well-formed frame
            # of the wrong shape names its request (id, unknown type) in the error.
            head = self._codec.head(data, encoding)  # type: ignore[arg-type]
            request_id = head.id if head and isinstance(head.id, int) else None
            rtype = head.type if head else None
            if isinstance(rtype, str) and rtype not in _REQUEST_TYPES:
                self.error(request_id, ErrorCode.UNKNOWN_REQUEST,
                           f"unknown request type {rtype!r}")
            else:
                self.error(request_id, ErrorCode.BAD_REQUEST, f"invalid request: {exc}")
            return
        except msgspec.DecodeError as exc:
            self.error(None, ErrorCode.BAD_FRAME, f"malformed {encoding}: {exc}")
            return
        if isinstance(message, m.Hello):
            self._on_hello(message)
            return
        if not self._hello:
            self.error(message.id, ErrorCode.HELLO_REQUIRED, "send hello first")
            return
        self.requests += 1
        if isinstance(message, m.Subscribe):
            if not message.live:
                await self._published_first(message.chat)
            self._run_request(message, self._subscribe)
        elif isinstance(message, m.Unsubscribe):
            self._run_request(message, self._unsubscribe)
        elif self._handlers.is_slow(message):
            self._begin_answer()  # now: the reader may meet EOF before the task starts
            nursery.start_soon(self._answer, message, self._handle)
        else:
            self._begin_answer()
            await self._answer(message, self._handle)

    async def _published_first(self, chat: str) -> None:
        """Read your writes: a replay-only subscribe (`live = false`) covers every delta
        published before it, not only those already committed (a client that saw a task
        finish or a turn end reads the log that says so). Waits for the commit of what is
        pending, bounded like `Hub.settle` (and not at all while the store cannot commit)."""
        channel = self._hub.channel(chat)
        if channel is not None and channel.numbered > channel.head:
            await self._hub.settle()

    def _on_hello(self, hello: m.Hello) -> None:
        if hello.protocol != m.PROTOCOL_VERSION:
            self.error(None, ErrorCode.PROTOCOL_VERSION,
                       f"protocol {hello.protocol} is not supported; this daemon speaks "
                       f"{m.PROTOCOL_VERSION}")
            return
        self._hello = True
        self.client = hello.client or "client"
        # Transports with a choice of encoding (WebSocket) switch to the client's now, so
        # the welcome and everything after it use it; the Unix socket is always msgpack.
        set_encoding = getattr(self._t, "set_encoding", None)
        if set_encoding is not None:
            set_encoding(hello.encoding)
        self.send(self._handlers.welcome(self._t.encoding))

    async def _handle(self, request: Any) -> Any:
        return await self._handlers.handle(request, self.client)

    def _run_request(self, request: Any, handler: Callable[[Any], Any]) -> None:
        try:
            result = handler(request)
        except StokerError as exc:
            self.error(request.id, exc.code, exc.message, exc.detail)
            return
        if result is not None:
            self.send(m.Reply(id=request.id, result=result))

    def _begin_answer(self) -> None:
        self._answering += 1
        self.outbox.direct = None  # the answer joins the deltas its commit delivers
        self._rearm()

    def _arm_direct(self) -> None:
        """Lend the outbox the transport's write-without-waiting while the writer is idle
        and no request is being answered: an answer joins the deltas its commit delivers
        (a prompt's `turn_started` and busy state) in one write, one wake-up of the client
        (`_writer`), instead of two or three writes one after the other."""
        if self._parked and not self._answering:
            self.outbox.direct = self._send_now

    async def _answer(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> None:
        """Answer `request`, counted in `_answering` by the caller (`_begin_answer`)."""
        try:
            await self._answer_one(request, handler)
        finally:
            self._answering -= 1
            self._rearm()
            self._answered.set()
            self._arm_direct()

    async def _answer_one(self, request: Any,
                          handler: Callable[[Any], Awaitable[Any]]) -> None:
        # A client is answered `storage_unavailable` after a bounded wait while the store
        # cannot commit (a full disk), rather than left waiting on its connection: requests
        # that write are refused before they change anything, and any wait for a commit
        # (`Store.flush`) inside a request is bounded the same way.
        patience = FLUSH_PATIENCE.set(self._hub.store.patience)
        try:
            if self._writes_first(request):
                await self._hub.store.wait_writable()
            result = await handler(request)
        except StokerError as exc:
            self.error(request.id, exc.code, exc.message, exc.detail)
            return
        except trio.TooSlowError:
            self.error(request.id, ErrorCode.AGENT_UNAVAILABLE,
                       "timed out waiting for the agent")
            return
        except OutboxOverflow:
            raise
        except Exception as exc:
            self._log.exception("request failed", request=type(request).__name__)
            self.error(request.id, ErrorCode.INTERNAL,
                       f"internal error ({type(exc).__name__}); see the daemon log")
            return
        finally:
            FLUSH_PATIENCE.reset(patience)
        self.send(m.Reply(id=request.id, result=result))

    def _writes_first(self, request: Any) -> bool:
        """Whether `request` is refused up front (`storage_unavailable`) while the store
        cannot commit: a prompt, or an `open_chat` that would create a chat. What they write
        must be durable before they are answered, and a refusal must change nothing. (Other
        requests that write wait for their commit under the same bound.)"""
        if isinstance(request, m.Prompt):
            return True
        return (isinstance(request, m.OpenChat) and request.create
                and (request.chat is None or self._hub.channel(request.chat) is None))

    # ------------------------------------------------------------------ subscriptions

    def _subscribe(self, req: m.Subscribe) -> None:
        channel = self._hub.channel(req.chat)
        if channel is None:
            raise UnknownChat(req.chat)
        old = self._subs.pop(req.chat, None)
        if old is not None:
            self._hub.unsubscribe(old)
        if len(self._subs) >= MAX_SUBSCRIPTIONS:
            raise LimitReached(f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")
        since = req.since
        if since is not None and since.seq < 0:
            raise BadRequest("since.seq must not be negative")
        cursor, resync = start_cursor(
            since_seq=since.seq if since is not None else None,
            since_epoch=since.epoch if since is not None else None,
            epoch=channel.epoch, head=channel.head, floor=channel.floor)
        snapshot = channel.view.snapshot(req.chat)
        self.send(m.Reply(id=req.id, result=m.Subscribed(
            chat=req.chat, epoch=channel.epoch, head_seq=channel.head, floor_seq=channel.floor,
            snapshot=snapshot)))
        if resync is not None:
            self.send(m.ResyncRequired(chat=req.chat, epoch=channel.epoch, seq=channel.head,
                                       reason=resync, snapshot=snapshot, request=req.id))
        self._subs[req.chat] = self._hub.subscribe(req.chat, self.outbox, self._t.mode, cursor,
                                                   keep_live=req.live, request=req.id)

    def _unsubscribe(self, req: m.Unsubscribe) -> m.Ok:
        sub = self._subs.pop(req.chat, None)
        if sub is not None:
            self._hub.unsubscribe(sub)
        return m.Ok()

    # ------------------------------------------------------------------ writing

    async def _writer(self) -> None:
        outbox = self.outbox
        while True:
            self._parked = True
            self._arm_direct()
            try:
                await outbox.wait()
            finally:
                self._parked = False
                outbox.direct = None
            if self._answering:
                # A request is being answered: the commit that delivered these deltas may
                # be what its answer waits for (a prompt is answered once it is queued
                # durably). One trip round the scheduler lets the answer join them in one
                # write, one wake-up of the client (issue 22). Deltas alone go at once.
                await trio.lowlevel.cancel_shielded_checkpoint()
            if outbox.frames:
                batch = outbox.take(SEND_BATCH_BYTES)
                self._in_flight = True
                try:
                    await self._t.send_batch(batch)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    self._closing = True
                    return
                finally:
                    self._in_flight = False
                continue
            if outbox.lagging:
                sub = outbox.lagging[0]
                if not sub.active:
                    outbox.lagging.pop(0)
                    continue
                await self._hub.catch_up(sub)
                if outbox.lagging and outbox.lagging[0] is sub:
                    # Still behind: let other lagging chats of this connection have a turn.
                    outbox.lagging.append(outbox.lagging.pop(0))
                continue
            if outbox.closed:
                return

    async def _heartbeats(self) -> None:
        interval = self._limits.heartbeat
        if interval <= 0:
            return
        while True:
            await trio.sleep(interval)
            if self._subs:
                heads = {chat: sub.channel.head for chat, sub in self._subs.items()}
                self.send(m.Heartbeat(time=time.time(), heads=heads))


_REQUEST_TYPES = frozenset(
    str(t.__struct_config__.tag) for t in m.Request.__args__
) | {"hello"}

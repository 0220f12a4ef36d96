"""JSON-RPC 2.0 over newline-delimited JSON, on a pair of trio streams.

Used both ways: the daemon is a client of every agent (`BackendActor`) and `stoker acp` is an
agent to an editor. Requests we send wait for the matching response; requests the peer sends
run as tasks so a slow one (a permission waiting for a human) never blocks the reader;
notifications are handed to a synchronous callback in the reader task, in order, because
that is the hot path (one per streamed chunk) and ordering matters.
"""

from __future__ import annotations

import itertools
import math
import os
import select
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio

from daemon.acp.lines import LineTooLong, read_line_batches
from daemon.log import Log

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
AUTH_REQUIRED = -32000
RESOURCE_NOT_FOUND = -32002
REQUEST_CANCELLED = -32800


class RpcError(Exception):
    """An error to answer a request with, or the error the peer answered ours with."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.data = data


class ConnectionLost(Exception):
    """The peer's stream ended (or failed) while we waited for it."""


class _ErrorObject(msgspec.Struct):
    code: int
    message: str = ""
    data: Any = None


class _Incoming(msgspec.Struct):
    jsonrpc: str | msgspec.UnsetType = msgspec.UNSET
    id: int | str | msgspec.UnsetType | None = msgspec.UNSET
    method: str | msgspec.UnsetType = msgspec.UNSET
    params: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    result: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    error: _ErrorObject | msgspec.UnsetType = msgspec.UNSET


class _OutRequest(msgspec.Struct):
    id: int | str
    method: str
    params: Any
    jsonrpc: str = "2.0"


class _OutNotification(msgspec.Struct):
    method: str
    params: Any
    jsonrpc: str = "2.0"


class _OutResult(msgspec.Struct):
    id: int | str | None
    result: Any
    jsonrpc: str = "2.0"


class _OutError(msgspec.Struct):
    id: int | str | None
    error: Any
    jsonrpc: str = "2.0"


class _Slot:
    __slots__ = ("error", "event", "result")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.result: msgspec.Raw | None = None
        self.error: BaseException | None = None


class SentRequest:
    """A request `JsonRpcConnection.start_request` has written: `answer` waits for its
    result as `request` does."""

    __slots__ = ("_conn", "_id", "_slot")

    def __init__(self, conn: JsonRpcConnection, request_id: int, slot: _Slot) -> None:
        self._conn = conn
        self._id = request_id
        self._slot = slot

    async def answer(self, *, timeout: float | None = None,
                     cancel_notify: bool = False) -> msgspec.Raw:
        return await self._conn._answer(self._id, self._slot, timeout, cancel_notify)


class FollowUp:
    """A request handler's answer plus work that must run only once that answer is written.

    Return it instead of a plain result (or instead of raising `error`). `then` runs right
    after the response was written (or failed to be): `stoker acp` uses it so that no
    `session/update` of a session reaches the editor before the `session/new` response that
    names the session, and nothing of the next turn before the `session/prompt` answer.
    """

    __slots__ = ("error", "result", "then")

    def __init__(self, result: Any = None, *, then: Callable[[], None],
                 error: RpcError | None = None) -> None:
        self.result = result
        self.then = then
        self.error = error


RequestHandler = Callable[[str, msgspec.Raw | None], Awaitable[Any]]
NotificationHandler = Callable[[str, msgspec.Raw | None], None]
LinesHandler = Callable[[list[bytes], int], int]
"""`on_lines(lines, start)`: consume the notifications it knows from `lines[start]` on, in
order; return the index of the first line it left (`start`: none)."""

EMPTY_OBJECT = msgspec.Raw(b"{}")


class JsonRpcConnection:
    """One JSON-RPC peer. Run `serve()` in a nursery; it returns when the peer's output ends
    (or raises `LineTooLong`). Pending requests then fail with `ConnectionLost`."""

    def __init__(
        self,
        send: trio.abc.SendStream,
        receive: trio.abc.ReceiveStream,
        *,
        on_request: RequestHandler,
        on_notification: NotificationHandler,
        on_traffic: Callable[[], None] | None = None,
        on_lines: LinesHandler | None = None,
        throttle: Callable[[], Awaitable[None]] | None = None,
        max_line: int = 64 * 1024 * 1024,
        log: Log | None = None,
        name: str = "peer",
        answer_after_eof: bool = False,
    ) -> None:
        self._send = send
        self._receive = receive
        self._on_request = on_request
        self._on_notification = on_notification
        self._on_traffic = on_traffic
        self._on_lines = on_lines
        """Tried first on every line not yet consumed of each read: it consumes a run of
        notifications from there (none: the line goes the general way). The backend's hot
        path: the streamed text chunks of one read, each in one typed decode of the whole
        line instead of the envelope here and the params there, published as one batch.
        If it raises, the line it was given is lost (logged) and the next is tried."""
        self._throttle = throttle
        """Awaited after each read's lines: backpressure (the peer's output waits in its
        pipe while what it said so far cannot be stored)."""
        self._max_line = max_line
        self._log = log or Log("rpc")
        self._name = name
        self._ids = itertools.count(1)
        self._pending: dict[int | str, _Slot] = {}
        self._write_lock = trio.StrictFIFOLock()
        self._decoder = msgspec.json.Decoder(_Incoming)
        self._encoder = msgspec.json.Encoder()
        self._closed: BaseException | None = None
        self._is_pipe: bool | None = None
        self._answer_after_eof = answer_after_eof
        """At EOF, answer the requests already read before `serve` returns (the peer closed
        its output, not necessarily its input: `stoker acp` fed by a pipe), instead of
        cancelling them."""
        self._input_ended: BaseException | None = None
        """Set at EOF: our own requests can no longer be answered (we may still write)."""
        self.lines_in = 0
        self.lines_out = 0
        self._last_traffic = trio.current_time()
        self._throttled = False
        """Inside `throttle`: the daemon, not the peer, is why nothing is read."""
        self.sent: list[bytes] | None = None
        """When a list, every line written is appended (tests validate them against the
        ACP schema)."""

    @property
    def last_traffic(self) -> float:
        """When the peer was last heard from; now, while we hold its output back
        (`throttle`): a liveness check must not take our own backpressure for a hung peer."""
        return trio.current_time() if self._throttled else self._last_traffic

    @property
    def throttled(self) -> bool:
        """We hold the peer's output back (`throttle`): its silence is ours."""
        return self._throttled

    # ------------------------------------------------------------------ sending

    async def _write(self, message: Any) -> None:
        line = self._encoder.encode(message) + b"\n"
        if self.sent is not None:
            self.sent.append(line[:-1])
        send = self._send
        if isinstance(send, trio.lowlevel.FdStream) and not self._write_lock.locked():
            await self._write_now(send, line)
            return
        async with self._write_lock:
            if self._closed is not None:
                raise ConnectionLost(f"{self._name}: connection closed") from self._closed
            try:
                await self._send.send_all(line)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise ConnectionLost(f"{self._name}: cannot write: {exc}") from exc
        self.lines_out += 1

    async def _write_now(self, send: trio.lowlevel.FdStream, line: bytes) -> None:
        """`_write` to a pipe nobody else is writing to: the line goes into the pipe before
        this task yields, rather than after a trip round the scheduler (`send_all` and the
        lock each yield first). A turn's `session/prompt` thus reaches the agent ahead of
        whatever else the prompt woke (the store's commit, the client's reply): ~0.1-0.3 ms
        of a warm turn's first chunk (issue 22). A write the pipe cannot take whole (a full
        pipe) finishes through `send_all`, the lock held throughout so no other line can
        come between its parts; still a checkpoint, as trio's functions are."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._write_lock.acquire_nowait()
        try:
            if self._closed is not None:
                raise ConnectionLost(f"{self._name}: connection closed") from self._closed
            fd = send.fileno()
            written = 0
            try:
                if fd >= 0:
                    written = os.write(fd, line)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise ConnectionLost(f"{self._name}: cannot write: {exc}") from exc
            if written < len(line):
                try:
                    await send.send_all(line[written:])
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise ConnectionLost(f"{self._name}: cannot write: {exc}") from exc
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._write_lock.release()
        self.lines_out += 1

    async def request(self, method: str, params: Any, *, timeout: float | None = None,
                      cancel_notify: bool = False) -> msgspec.Raw:
        """Send a request and wait for its result (raw JSON). Raises `RpcError` when the peer
        answers with an error, `ConnectionLost` when it goes away, `trio.TooSlowError` after
        `timeout`.

        `cancel_notify`: if this call is cancelled (or times out) before the answer came,
        tell the peer with ACP's `$/cancel_request` so it can withdraw the request (e.g. a
        permission prompt that another client already answered)."""
        self._check_open()
        request_id = next(self._ids)
        slot = _Slot()
        self._pending[request_id] = slot
        try:
            await self._write(_OutRequest(id=request_id, method=method, params=params))
        except BaseException:
            self._pending.pop(request_id, None)
            raise
        return await self._answer(request_id, slot, timeout, cancel_notify)

    def start_request(self, method: str, params: Any) -> SentRequest | None:
        """Write a request into the peer's pipe now, before the caller yields, and return
        the handle to wait for its answer with; None (nothing written) when that cannot be
        done without waiting: not a pipe, another line being written, a full pipe, a line
        longer than `PIPE_BUF` (a pipe takes a write up to that size whole or not at all).
        The caller then uses `request`.

        A turn's `session/prompt` goes this way: written the moment the turn is taken, the
        agent starts on it while the daemon does the turn's bookkeeping (its state, its
        records, its log line), instead of after it (issue 22). The handle must be waited
        for (`SentRequest.answer`), or its slot stays until the connection ends."""
        send = self._send
        if (self._closed is not None or self._input_ended is not None
                or not isinstance(send, trio.lowlevel.FdStream) or self._write_lock.locked()
                or not self._pipe_fd(send)):
            return None
        request_id = next(self._ids)
        line = self._encoder.encode(_OutRequest(id=request_id, method=method,
                                                params=params)) + b"\n"
        if len(line) > select.PIPE_BUF:
            return None
        try:
            written = os.write(send.fileno(), line)
        except OSError:
            # A full pipe (BlockingIOError), or a broken one: `request` says which.
            return None
        assert written == len(line), "a pipe write of at most PIPE_BUF bytes is whole"
        if self.sent is not None:
            self.sent.append(line[:-1])
        self.lines_out += 1
        slot = _Slot()
        self._pending[request_id] = slot
        return SentRequest(self, request_id, slot)

    def _pipe_fd(self, send: trio.lowlevel.FdStream) -> bool:
        """`send` writes to a pipe (checked once per connection)."""
        if self._is_pipe is None:
            try:
                self._is_pipe = stat.S_ISFIFO(os.fstat(send.fileno()).st_mode)
            except OSError:
                return False
        return self._is_pipe

    def _check_open(self) -> None:
        if self._closed is not None or self._input_ended is not None:
            raise ConnectionLost(f"{self._name}: connection closed") from (
                self._closed or self._input_ended)

    async def _answer(self, request_id: int, slot: _Slot, timeout: float | None,
                      cancel_notify: bool) -> msgspec.Raw:
        """Wait for the answer of a request already written (see `request`)."""
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                await slot.event.wait()
        except (trio.Cancelled, trio.TooSlowError):
            if cancel_notify and not slot.event.is_set() and self._closed is None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    try:
                        await self.notify("$/cancel_request", {"requestId": request_id})
                    except ConnectionLost:
                        pass
            raise
        finally:
            self._pending.pop(request_id, None)
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    async def notify(self, method: str, params: Any) -> None:
        await self._write(_OutNotification(method=method, params=params))

    async def respond(self, request_id: int | str | None, result: Any) -> None:
        await self._write(_OutResult(id=request_id, result=result))

    async def respond_error(self, request_id: int | str | None, code: int, message: str,
                            data: Any = None) -> None:
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        await self._write(_OutError(id=request_id, error=error))

    # ------------------------------------------------------------------ receiving

    async def serve(self) -> None:
        """Read until EOF. Incoming requests run in a nursery owned by this call.

        Raises `LineTooLong` itself, never wrapped: a read failure is caught inside the
        nursery and re-raised after it, since strict exception groups would otherwise hand
        callers an `ExceptionGroup` their `except LineTooLong` does not match."""
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await self._read(nursery)
                except (LineTooLong, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    failure = exc
                if failure is None and self._answer_after_eof:
                    # EOF of the peer's output only: answer what it asked (the nursery
                    # waits for those handlers); nothing it could answer is left to wait.
                    self._end_input(ConnectionLost(f"{self._name}: end of stream"))
                else:
                    # EOF: requests still being handled for the peer are pointless now.
                    nursery.cancel_scope.cancel()
        except BaseException as exc:
            self._fail_pending(ConnectionLost(f"{self._name}: reader stopped: {exc!r}"))
            raise
        if isinstance(failure, LineTooLong):
            self._fail_pending(ConnectionLost(f"{self._name}: protocol error: {failure}"))
            raise failure
        if failure is not None:
            self._fail_pending(ConnectionLost(f"{self._name}: read failed: {failure}"))
            return
        self._fail_pending(ConnectionLost(f"{self._name}: end of stream"))

    async def _read(self, nursery: trio.Nursery) -> None:
        dispatch = self._dispatch
        on_lines = self._on_lines
        async for batch in read_line_batches(self._receive, self._max_line):
            # Traffic is noted once per read: the lines of one read arrived together.
            self.lines_in += len(batch)
            self._last_traffic = trio.current_time()
            if self._on_traffic is not None:
                self._on_traffic()
            index, end = 0, len(batch)
            while index < end:
                if on_lines is not None:
                    try:
                        after = on_lines(batch, index)
                    except Exception:
                        self._log.exception("notification handler failed", peer=self._name)
                        index += 1
                        continue
                    if after > index:
                        index = after
                        continue
                line = batch[index]
                index += 1
                # `isspace` rather than `strip()`: no copy of every line.
                if not line or line.isspace():
                    continue
                dispatch(line, nursery)
            if self._throttle is not None:
                # Backpressure (the store cannot keep up): read no more until it may.
                self._throttled = True
                try:
                    await self._throttle()
                finally:
                    self._throttled = False
                    self._last_traffic = trio.current_time()

    def _fail_pending(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
        for slot in self._pending.values():
            if not slot.event.is_set():
                slot.error = exc
                slot.event.set()

    def _end_input(self, exc: BaseException) -> None:
        """No answer can come any more: fail our pending requests, refuse new ones, keep
        writing (answers and notifications to a peer that may still read)."""
        self._input_ended = exc
        for slot in self._pending.values():
            if not slot.event.is_set():
                slot.error = exc
                slot.event.set()

    def close(self, reason: str = "closed") -> None:
        """Fail everything pending; later sends raise `ConnectionLost`."""
        self._fail_pending(ConnectionLost(f"{self._name}: {reason}"))

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def _dispatch(self, line: bytes, nursery: trio.Nursery) -> None:
        try:
            msg = self._decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._log.warning("malformed JSON-RPC line", peer=self._name, error=str(exc),
                              line=line[:200].decode("utf-8", "replace"))
            nursery.start_soon(self._respond_quietly, None, PARSE_ERROR, f"parse error: {exc}")
            return
        method = msg.method
        params = None if msg.params is msgspec.UNSET else msg.params
        if method is not msgspec.UNSET:
            if msg.id is msgspec.UNSET:
                try:
                    self._on_notification(method, params)
                except Exception:
                    self._log.exception("notification handler failed", peer=self._name,
                                        method=method)
            else:
                nursery.start_soon(self._handle_request, msg.id, method, params)
            return
        if msg.id is msgspec.UNSET or msg.id is None:
            if msg.error is not msgspec.UNSET:
                self._log.warning("peer reported an error", peer=self._name,
                                  code=msg.error.code, message=msg.error.message)
            return
        slot = self._pending.get(msg.id)
        if slot is None:
            self._log.debug("response to an unknown request", peer=self._name, id=msg.id)
            return
        if msg.error is not msgspec.UNSET:
            slot.error = RpcError(msg.error.code, msg.error.message, msg.error.data)
        elif msg.result is not msgspec.UNSET:
            slot.result = msg.result
        else:
            slot.result = msgspec.Raw(b"null")
        slot.event.set()

    async def _respond_quietly(self, request_id: int | str | None, code: int, message: str
                               ) -> None:
        try:
            await self.respond_error(request_id, code, message)
        except ConnectionLost:
            pass

    async def _handle_request(self, request_id: int | str | None, method: str,
                              params: msgspec.Raw | None) -> None:
        try:
            result = await self._on_request(method, params)
        except RpcError as exc:
            await self._respond_quietly_error(request_id, exc)
            return
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await self._respond_quietly_error(
                request_id, RpcError(INVALID_PARAMS, f"invalid params for {method}: {exc}"))
            return
        except trio.Cancelled:
            raise
        except Exception as exc:
            self._log.exception("request handler failed", peer=self._name, method=method)
            await self._respond_quietly_error(
                request_id, RpcError(INTERNAL_ERROR, f"internal error: {exc}"))
            return
        if isinstance(result, FollowUp):
            await self._answer_then(request_id, result)
            return
        try:
            await self.respond(request_id, result)
        except ConnectionLost:
            pass

    async def _answer_then(self, request_id: int | str | None, follow: FollowUp) -> None:
        try:
            if follow.error is not None:
                await self._respond_quietly_error(request_id, follow.error)
            else:
                try:
                    await self.respond(request_id, follow.result)
                except ConnectionLost:
                    pass
        finally:
            follow.then()

    async def _respond_quietly_error(self, request_id: int | str | None, exc: RpcError
                                     ) -> None:
        try:
            await self.respond_error(request_id, exc.code, exc.message, exc.data)
        except ConnectionLost:
            pass

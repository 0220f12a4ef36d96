"""An agent's stderr: drained concurrently (a chatty agent blocked on a full pipe looks hung),
its last lines kept for the crash report, and its lines logged at a bounded rate.

An agent writing hundreds of thousands of lines must not grow the daemon's log without bound
nor spend the daemon's time (shared by every chat) formatting them: lines beyond the rate are
counted, not formatted, and the count is logged at most once a second (and at the end).
"""

from __future__ import annotations

import collections
import fcntl
import struct
import termios
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from daemon.acp.lines import LineTooLong

if TYPE_CHECKING:
    from daemon.acp.rpc import JsonRpcConnection
    from daemon.execution.local import AgentProcess, ExitStatus

EXIT_WAIT = 2.0
"""How long an agent whose output ended gets to exit before it is killed."""
STDERR_EOF_WAIT = 0.5
"""The longest a crashed agent's exit report waits for the drain to read what the agent
wrote on stderr last (the crash message is usually there)."""

READ_SIZE = 65536
LINE_LOG_MAX = 2000
"""Characters of one stderr line that reach the log."""
TAIL_LINE_MAX = 500
REPORT_EVERY = 1.0
"""Seconds between two reports of dropped lines, at most."""


class StderrLog(Protocol):
    """Where the lines go: `daemon.log.Log` (a protocol so tests can record them)."""

    def info(self, event: str, **fields: Any) -> None: ...

    def warning(self, event: str, **fields: Any) -> None: ...


@dataclass(slots=True)
class StderrLimiter:
    """A token bucket over log lines: `burst` lines at once, `rate` a second after that
    (`rate` <= 0: no limit). Pure: the caller passes the clock.

    Invariant: every line offered is either admitted, or counted in `dropped` until it is
    reported (`report`), so the log accounts for every line."""

    rate: float
    burst: int
    tokens: float = -1.0
    updated: float | None = None
    dropped: int = 0
    """Lines refused since the last report."""
    dropped_total: int = 0
    reported_at: float | None = None

    def admit(self, now: float, count: int) -> int:
        """How many of `count` new lines may be logged now; the rest are counted dropped."""
        if self.rate <= 0:
            return count
        if self.updated is None or self.tokens < 0:
            self.tokens = float(self.burst)
        else:
            self.tokens = min(float(self.burst),
                              self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        admitted = min(count, int(self.tokens))
        self.tokens -= admitted
        refused = count - admitted
        self.dropped += refused
        self.dropped_total += refused
        if refused and self.reported_at is None:
            self.reported_at = now  # the first report waits one interval from the first drop
        return admitted

    def report_due(self) -> float | None:
        """When the dropped count should be reported next (None: nothing to report)."""
        if not self.dropped or self.reported_at is None:
            return None
        return self.reported_at + REPORT_EVERY

    def report(self, now: float) -> int:
        """Take the dropped count to report now (0: nothing)."""
        dropped, self.dropped = self.dropped, 0
        self.reported_at = now
        return dropped


async def drain_stderr(stream: trio.abc.ReceiveStream, log: StderrLog, tail: collections.deque[str],
                       limiter: StderrLimiter) -> None:
    """Read `stream` to its end: every line goes to `tail` (bounded by its maxlen; only the
    last ones of each read are even decoded) and, within `limiter`, to `log`."""
    pending = b""
    keep = tail.maxlen or 0
    try:
        while True:
            due = limiter.report_due()
            data = None
            with trio.move_on_at(due if due is not None else float("inf")):
                data = await stream.receive_some(READ_SIZE)
            if data is None:
                _report(log, limiter)
                continue
            if not data:
                break
            lines = (pending + data).split(b"\n")
            pending = lines.pop()
            if len(pending) > READ_SIZE:
                lines.append(pending)
                pending = b""
            _take(lines, log, tail, keep, limiter)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    if pending.strip():
        _take([pending], log, tail, keep, limiter)
    _report(log, limiter)


def _take(lines: list[bytes], log: StderrLog, tail: collections.deque[str], keep: int,
          limiter: StderrLimiter) -> None:
    # Empty lines are neither logged, kept nor counted. `filter(None, ...)` runs in C: a
    # flood costs a split and a count per read, not Python work per line.
    lines = list(filter(None, lines))
    if not lines:
        return
    for raw in lines[-keep:] if keep else ():
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            tail.append(line[:TAIL_LINE_MAX])
    admitted = limiter.admit(trio.current_time(), len(lines))
    for raw in lines[:admitted]:
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            log.info("agent stderr", line=line[:LINE_LOG_MAX])
    due = limiter.report_due()
    if due is not None and trio.current_time() >= due:
        _report(log, limiter)


def _report(log: StderrLog, limiter: StderrLimiter) -> None:
    dropped = limiter.report(trio.current_time())
    if dropped:
        log.warning("agent stderr rate-limited", dropped=dropped,
                    dropped_total=limiter.dropped_total, rate=limiter.rate,
                    burst=limiter.burst)


async def read_to_end(stream: trio.abc.ReceiveStream, done: trio.Event) -> None:
    """Return once the stderr drain has read everything in the pipe: at its end (`done`),
    or when the pipe holds no unread byte (FIONREAD; the drain handles what it receives
    before it reads again, so an empty pipe means handled). Streams without a descriptor
    (a remote agent's) wait for the end."""
    fileno = getattr(stream, "fileno", None)
    while not done.is_set():
        if fileno is not None:
            try:
                unread = struct.unpack("i", fcntl.ioctl(fileno(), termios.FIONREAD,
                                                        b"\0\0\0\0"))[0]
            except (OSError, ValueError, trio.ClosedResourceError):
                unread = -1
            if unread == 0:
                return
        with trio.move_on_after(0.002):
            await done.wait()


async def serve_until_exit(proc: AgentProcess, rpc: JsonRpcConnection, stderr_done: trio.Event,
                           stderr_tail: collections.deque[str]) -> tuple[str, str]:
    """Read the agent until its output ends, then say how its process ended: (reason, what
    an open turn ends with). A line over the connection's cap is the agent's protocol error
    (the process is killed). Otherwise the process normally is exiting (killed if not
    within `EXIT_WAIT`), and the report waits for the drain to read its last stderr lines:
    the leader is gone, so all it wrote is in the pipe already (its end, or an empty pipe
    when a process it left behind holds the pipe open; the report does not wait for that
    one)."""
    try:
        await rpc.serve()
    except LineTooLong as exc:
        proc.kill()
        await proc.wait()
        why = f"agent protocol error: {exc}"
        return why, why
    status: ExitStatus | None = None
    with trio.move_on_after(EXIT_WAIT):
        status = await proc.wait()
    if status is None:
        proc.kill()
        status = await proc.wait()
    with trio.move_on_after(STDERR_EOF_WAIT):
        await read_to_end(proc.stderr, stderr_done)
    tail = " | ".join(list(stderr_tail)[-5:])
    reason = f"agent {status.describe()}"
    if tail:
        reason = f"{reason}; stderr: {tail}"
    return reason, f"agent crashed: {reason}"

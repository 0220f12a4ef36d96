"""A channel, its subscriptions and their connections' send queues.

A `Channel` lists its live `Subscription`s; a subscription feeds one connection's `Outbox`;
an outbox lists the subscriptions waiting to be replayed. The three refer to each other, so
they share this module (one module, no import cycle).

The outbox is a connection's bounded send queue. The hub pushes delta frames here
synchronously and never waits: `offer` refuses when the queue is at its bound, and the hub
then marks that subscription as lagging. The connection's writer task drains the queue,
coalescing everything queued into one `send_all`. While that task is idle (nothing queued,
nothing being sent), its connection may lend the outbox a `direct` sender: frames then go
into the socket at once, from the task that offers them, when the socket takes them without
waiting; what it does not take is queued for the writer as before. A delta reaches its client
without waiting for the writer task's turn (issue 22), in the same order.

Control frames (replies, replay_complete, lagged...) are never refused: they are bounded by
the client's own request rate, and a client that floods requests without reading gets its
connection closed once `hard_max_bytes` is passed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import trio

from daemon.channels.frames import Entry, Mode, log_prefix, tail_offset
from daemon.channels.view import ChatView
from protocol.deltas import DeltaBody


class Ring:
    """The newest `size` delivered deltas of a channel, indexed by seq: the entry of `seq`
    is in slot `seq % size`, so a replay reads each entry in O(1) from wherever it starts
    (a deque had to be walked from its left on every pass, quadratic in the replay length).
    Entries are appended in seq order without gaps (a channel delivers them so)."""

    __slots__ = ("_slots", "count", "last", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots: list[Entry | None] = [None] * size
        self.count = 0
        self.last = 0
        """Seq of the newest entry (meaningless while `count` is 0)."""

    def append(self, entry: Entry) -> None:
        seq = entry.seq
        if self.count and seq != self.last + 1:
            self.count = 0  # not contiguous (cannot happen): start over rather than lie
        self._slots[seq % self.size] = entry
        self.last = seq
        if self.count < self.size:
            self.count += 1

    def extend(self, entries: list[Entry]) -> None:
        """`append` each of `entries` (seqs consecutive), by slices of the slot list."""
        if not entries:
            return
        seq = entries[0].seq
        if self.count and seq != self.last + 1:
            self.count = 0  # not contiguous (cannot happen): start over rather than lie
        size = self.size
        if len(entries) > size:
            entries = entries[-size:]
            seq = entries[0].seq
        slots = self._slots
        at = seq % size
        room = size - at
        if len(entries) <= room:
            slots[at:at + len(entries)] = entries
        else:
            slots[at:] = entries[:room]
            slots[:len(entries) - room] = entries[room:]
        self.last = entries[-1].seq
        self.count = min(size, self.count + len(entries))

    @property
    def first(self) -> int:
        """Seq of the oldest entry (`last + 1` when empty)."""
        return self.last - self.count + 1

    def get(self, seq: int) -> Entry:
        """The entry of `seq`, which must be within `first..last`."""
        entry = self._slots[seq % self.size]
        assert entry is not None
        return entry

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Entry]:
        for seq in range(self.first, self.last + 1):
            yield self.get(seq)


class Channel:
    __slots__ = ("chat", "epoch", "floor", "head", "live", "log_prefix", "log_tail_at",
                 "numbered", "ring", "undelivered", "view")

    def __init__(self, chat: str, epoch: str, head: int, floor: int, ring_size: int) -> None:
        self.chat = chat
        self.epoch = epoch
        self.head = head
        """Seq of the last delta delivered: committed to the log, so what any client may
        have seen, and the head every reply and replay goes by."""
        self.numbered = head
        """Seq of the last delta published (numbered, maybe not yet committed)."""
        self.undelivered: deque[tuple[int, int, list[Entry], Sequence[DeltaBody]]] = deque()
        """Published batches of deltas waiting for their commit: the store's ticket of
        each, its turn, its entries and their bodies."""
        self.log_prefix = log_prefix(chat)
        """What the log leaves out of each delta's payload (`frames.logged_tail`)."""
        self.log_tail_at = tail_offset(self.log_prefix)
        """Where a payload's logged tail starts, less its seq's size."""
        self.floor = floor
        """Lowest seq retained anywhere (log or ring). head+1 when nothing is retained."""
        self.ring = Ring(ring_size)
        self.live: list[Subscription] = []
        self.view = ChatView()

    @property
    def ring_first(self) -> int:
        return self.ring.first if self.ring.count else self.head + 1


class Subscription:
    """One connection's subscription to one chat."""

    __slots__ = ("_last_cursor", "active", "announce", "channel", "cursor", "keep_live",
                 "lag_from", "mode", "outbox", "request")

    def __init__(self, channel: Channel, outbox: Outbox, mode: Mode, cursor: int,
                 keep_live: bool, request: int | None = None) -> None:
        self.request = request
        """The subscribe request's id, echoed in its replay_complete."""
        self.channel = channel
        self.outbox = outbox
        self.mode: Mode = mode
        self.cursor = cursor
        """Seq of the last delta queued to this subscriber."""
        self.keep_live = keep_live
        self.active = True
        self.announce: Literal["replay", "lagged"] = "replay"
        self.lag_from = 0
        self._last_cursor = -1


class OutboxOverflow(Exception):
    """The client stopped reading and its control queue passed the hard limit."""


class Outbox:
    __slots__ = (
        "_event",
        "closed",
        "direct",
        "direct_frames",
        "frames",
        "hard_max_bytes",
        "lagging",
        "max_bytes",
        "max_frames",
        "nbytes",
        "sent_frames",
    )

    def __init__(self, *, max_frames: int, max_bytes: int, hard_max_bytes: int) -> None:
        self.frames: deque[bytes] = deque()
        self.nbytes = 0
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.hard_max_bytes = hard_max_bytes
        self.lagging: list[Subscription] = []
        """Subscriptions waiting for the writer to replay them (initial replay or lag)."""
        self.closed = False
        self.sent_frames = 0
        self.direct: Callable[[bytes], int] | None = None
        """Set by the connection while its writer is idle: writes bytes into the socket
        without waiting, returns how many it took (0: none; OSError: the writer will
        find out). Used only while nothing is queued, so the order holds."""
        self.direct_frames = 0
        """Frames sent whole by `direct` (the rest went through the writer)."""
        self._event = trio.Event()

    def has_room(self) -> bool:
        return len(self.frames) < self.max_frames and self.nbytes < self.max_bytes

    def offer(self, frame: bytes) -> bool:
        """Queue a delta frame if under the bound; False means the subscriber lags."""
        if len(self.frames) >= self.max_frames or self.nbytes >= self.max_bytes:
            return False
        if self.direct is not None and self._send_now(frame, 1):
            return True
        self.frames.append(frame)
        self.nbytes += len(frame)
        if not self._event.is_set():
            self._event.set()
        return True

    def offer_batch(self, frames: list[bytes], size: int) -> bool:
        """Queue all of `frames` (`size` bytes in all: what one commit delivered) if the
        queue is under its bound as they come; False means the subscriber lags. The bound
        holds at the batch, not frame by frame: a commit delivers thousands of deltas at
        once under a flood, more than `max_frames`, to a subscriber that reads as fast as
        it can (measured: 29-43 lags per 100k-delta turn). So the queue may pass its
        bound by one commit's deltas, which the store bounds (`Store.max_pending`), and
        whose bytes are the ring's own (a frame is shared by every subscriber)."""
        queued = self.frames
        if len(queued) >= self.max_frames or self.nbytes >= self.max_bytes:
            return False
        if self.direct is not None and self._send_now(
                frames[0] if len(frames) == 1 else b"".join(frames), len(frames)):
            return True
        queued.extend(frames)
        self.nbytes += size
        if not self._event.is_set():
            self._event.set()
        return True

    def put(self, frame: bytes) -> None:
        """Queue a control frame unconditionally (up to the hard limit)."""
        if self.nbytes + len(frame) > self.hard_max_bytes:
            raise OutboxOverflow(
                f"send queue passed {self.hard_max_bytes} bytes: the client is not reading"
            )
        if self.direct is not None and self._send_now(frame, 1):
            return
        self.frames.append(frame)
        self.nbytes += len(frame)
        if not self._event.is_set():
            self._event.set()

    def _send_now(self, data: bytes, count: int) -> bool:
        """Write `data` (`count` frames) through `direct` if nothing is queued before it;
        what the socket did not take is queued. False: nothing written, queue it all."""
        direct = self.direct
        if direct is None or self.frames or self.lagging or self.closed:
            return False
        try:
            sent = direct(data)
        except OSError:
            self.direct = None  # broken: the writer's own send finds out and closes
            return False
        if sent <= 0:
            return False
        if sent < len(data):
            rest = data[sent:]
            self.frames.append(rest)
            self.nbytes += len(rest)
            self.direct = None
            if not self._event.is_set():
                self._event.set()
            return True
        self.sent_frames += count
        self.direct_frames += count
        return True

    def add_lagging(self, sub: Subscription) -> None:
        if sub not in self.lagging:
            self.lagging.append(sub)
        if not self._event.is_set():
            self._event.set()

    def wake(self) -> None:
        if not self._event.is_set():
            self._event.set()

    def take(self, max_bytes: int) -> list[bytes]:
        """Remove and return queued frames up to about `max_bytes` (at least one)."""
        frames = self.frames
        if self.nbytes <= max_bytes:  # all of it (the common case): no loop per frame
            out = list(frames)
            frames.clear()
            self.nbytes = 0
            self.sent_frames += len(out)
            return out
        out = []
        size = 0
        while frames and (size < max_bytes or not out):
            frame = frames.popleft()
            out.append(frame)
            size += len(frame)
        self.nbytes -= size
        self.sent_frames += len(out)
        return out

    async def wait(self) -> None:
        """Wait until there is something to send or a lagging subscription to serve."""
        while not self.frames and not self.lagging and not self.closed:
            await self._event.wait()
            self._event = trio.Event()

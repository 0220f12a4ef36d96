"""The hub: every chat's channel of seq-numbered deltas.

Publishing is synchronous and never waits: the hub numbers the delta, encodes it once and
appends it to the store's log batch. Delivery follows the commit: once the store reports the
batch committed (`Store.on_commit`, a group commit, so the wait is one commit), the hub
appends the delta to the chat's in-memory ring, advances the channel's head and offers the
encoded frame to each live subscriber's bounded outbox. So a client never holds a delta the
log lacks: after a daemon crash the log has every delivered delta under the same seq, and
the channel keeps its epoch.

A subscriber whose outbox is full is moved out of the live set ("lagging"); its connection's
writer later replays what it missed from the ring, or from the log beyond the ring, and puts
it back in the live set once caught up. All of that happens between two awaits of the single
trio thread, so the seam between replay and live can have no gap and no duplicate.

`replay.py` holds the pure window arithmetic (which source serves which seq), which the
property tests exercise.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import time
from collections.abc import Callable, Iterable, Sequence

import trio

from daemon.channels.channel import Channel, Outbox, Subscription
from daemon.channels.frames import (
    TURN_KEY,
    Entry,
    Mode,
    encode_message,
    frame_header,
    logged_payload,
    msgpack_encoder,
    render_logged,
)
from daemon.channels.replay import Source, next_source
from daemon.log import Log
from daemon.store.faults import DatabaseUnusable
from daemon.store.sqlite import Store
from protocol import deltas as d
from protocol.framing import FrameTooLarge
from protocol.messages import (
    Lagged,
    ReplayComplete,
    ResyncRequired,
    Snapshot,
)

_RUNS: frozenset[type] = frozenset({d.Text, d.Reasoning, d.UserText})
"""Text chunks: the tap sees a run of one of these in a batch by its first delta."""


def new_epoch() -> str:
    return secrets.token_hex(8)


def _inactive(sub: Subscription) -> bool:
    """Re-read after an await: the connection may have unsubscribed meanwhile."""
    return not sub.active


class Hub:
    """Owns the channels. Publishing is for backend actors; subscribing for connections."""

    def __init__(self, store: Store, *, ring_size: int, max_frame: int = 1 << 31,
                 clock: Callable[[], float] = time.time,
                 tap: Callable[[str, float, int, d.DeltaBody], None] | None = None) -> None:
        self._store = store
        self._tap = tap
        """Sees every published delta (the metrics); must be quick and must not raise."""
        self._ring_size = ring_size
        self._pack = msgpack_encoder.encode
        self._max_frame = max_frame
        self._clock = clock
        self._channels: dict[str, Channel] = {}
        self._unsettled: dict[str, Channel] = {}
        """Channels with published deltas waiting for their commit."""
        self._log = Log("hub")
        self.published = 0
        self.delivered = 0
        self.lag_events = 0
        store.on_commit(self._committed)

    @property
    def store(self) -> Store:
        return self._store

    async def settle(self, timeout: float = 5.0) -> None:
        """Deliver everything published so far (wait for its commit), for at most `timeout`
        seconds, and not at all while the store cannot commit (a full disk must not hold up
        a shutdown)."""
        if self._store.unavailable is not None:
            return
        with trio.move_on_after(timeout), contextlib.suppress(DatabaseUnusable):
            await self._store.flush()

    async def wait_for_room(self) -> None:
        """After each read of an agent's output (its reader's `throttle`): commit what the
        read published now if the store's writer is idle (`Store.commit_now`: delivered
        without waiting for the writer task's turn); then the backpressure, waiting while
        too many published deltas wait for their commit (`Store.wait_for_room`)."""
        self._store.commit_now()
        if self._store.backlogged():
            await self._store.wait_for_room()

    # ------------------------------------------------------------------ channels

    def open_channel(self, chat: str, epoch: str, head: int = 0, floor: int | None = None
                     ) -> Channel:
        ch = self._channels.get(chat)
        if ch is None:
            ch = Channel(chat, epoch, head, head + 1 if floor is None else floor,
                         self._ring_size)
            self._channels[chat] = ch
        return ch

    def seed_view(self, chat: str, *, agent: str, state: str, last_turn: int) -> None:
        """What a restarted daemon knows of a chat before any new delta: the snapshot a
        resyncing client gets must not be empty just because the ring is."""
        ch = self._channels.get(chat)
        if ch is None:
            return
        view = ch.view
        view.agent = view.agent or agent
        view.state = state
        view.last_turn = max(view.last_turn, last_turn)

    def channel(self, chat: str) -> Channel | None:
        return self._channels.get(chat)

    def head(self, chat: str) -> int:
        ch = self._channels.get(chat)
        return ch.head if ch else 0

    def snapshot(self, chat: str) -> Snapshot:
        ch = self._channels.get(chat)
        return ch.view.snapshot(chat) if ch else Snapshot(chat=chat)

    def chats(self) -> Iterable[Channel]:
        return self._channels.values()

    # ------------------------------------------------------------------ publish

    def publish(self, chat: str, turn: int, body: d.DeltaBody) -> int:
        """Number and log one delta; it is fanned out once committed (`_committed`).
        Synchronous; never waits on anyone."""
        return self.publish_many(chat, turn, (body,))

    def publish_many(self, chat: str, turn: int, bodies: Sequence[d.DeltaBody]) -> int:
        """Number and log deltas of one turn, in order; returns the last one's seq (the
        head's if `bodies` is empty). Synchronous; never waits on anyone.

        A batch (the text chunks of one read of an agent's output) costs one clock read
        (every delta of it has the same `ts`), one hand-over to the store (one ticket: the
        batch is committed as a whole) and one delivery once committed. All or nothing:
        a body too large to frame raises before anything is numbered or logged. The hub
        keeps `bodies` until the batch is delivered: the caller must not change it."""
        ch = self._channels[chat]
        seq = ch.numbered
        ts = self._clock()
        pack, max_frame, tail_at = self._pack, self._max_frame, ch.log_tail_at
        delta_type = d.Delta
        entries: list[Entry] = []
        rows: list[tuple[str, int, float, bytes]] = []
        add_entry, add_row = entries.append, rows.append
        nbytes = 0
        for body in bodies:
            seq += 1
            delta = delta_type(chat, seq, ts, turn, body)
            # Encoded once; the frame is header + payload and the log gets the payload's
            # tail (`logged_tail`, inlined: this loop runs once per streamed chunk).
            payload = pack(delta)
            size = len(payload)
            if size > max_frame:
                raise FrameTooLarge(size, max_frame)
            start = tail_at + (1 if seq < 0x80 else 2 if seq < 0x100 else 3 if seq < 0x10000
                               else 5 if seq < 0x100000000 else 9)
            tail = payload[start:] if payload.startswith(TURN_KEY, start) else payload
            nbytes += len(tail)
            add_row((chat, seq, ts, tail))
            add_entry(Entry(seq, delta, frame_header(size) + payload))
        if not entries:
            return seq
        ticket = self._store.append_deltas(rows, nbytes)
        ch.numbered = seq
        ch.undelivered.append((ticket, turn, entries, bodies))
        if chat not in self._unsettled:
            self._unsettled[chat] = ch
        self.published += len(entries)
        if self._tap is not None:
            self._observe(chat, ts, turn, bodies)
        return seq

    def _observe(self, chat: str, ts: float, turn: int, bodies: Sequence[d.DeltaBody]
                 ) -> None:
        """Show the tap a published batch: every delta, except that of a run of text
        chunks of one kind only the first (all the tap's consumers note of a chunk is
        whether it is its turn's first output, and the run's deltas share their ts)."""
        tap = self._tap
        assert tap is not None
        last: type | None = None
        for body in bodies:
            kind = type(body)
            if kind is last and kind in _RUNS:
                continue
            last = kind
            try:
                tap(chat, ts, turn, body)
            except Exception:  # metrics must never cost a delta
                self._log.exception("the delta tap failed", chat=chat)

    def _committed(self, ticket: int) -> None:
        """The store committed everything up to `ticket`: deliver what waited for it."""
        settled: list[str] = []
        for chat, ch in self._unsettled.items():
            waiting = ch.undelivered
            ready: list[list[Entry]] = []
            while waiting and waiting[0][0] <= ticket:
                _, turn, entries, bodies = waiting.popleft()
                self._settle(ch, turn, entries, bodies)
                ready.append(entries)
            if ready:
                self._fan_out(ch, ready[0] if len(ready) == 1 else
                              list(itertools.chain.from_iterable(ready)))
            if not waiting:
                settled.append(chat)
        for chat in settled:
            del self._unsettled[chat]

    def _settle(self, ch: Channel, turn: int, entries: list[Entry],
                bodies: Sequence[d.DeltaBody]) -> None:
        """A committed batch joins the ring, the view and the head."""
        first = entries[0].seq
        ch.ring.extend(entries)
        ch.view.apply_batch(first, turn, bodies)
        if ch.floor > first:
            ch.floor = first
        ch.head = entries[-1].seq
        self.delivered += len(entries)

    def _fan_out(self, ch: Channel, entries: list[Entry]) -> None:
        """Offer what one commit delivered to every live subscriber, as one batch
        (`Outbox.offer_batch`); one whose queue is at its bound lags from the batch's
        first delta."""
        live = ch.live
        if not live:
            return
        frames: dict[Mode, tuple[list[bytes], int]] = {}
        lagged: list[Subscription] | None = None
        last = entries[-1].seq
        for sub in live:
            mode = sub.mode
            made = frames.get(mode)
            if made is None:
                rendered = ([entry.frame for entry in entries] if mode == "framed"
                            else [entry.render(mode) for entry in entries])
                made = frames[mode] = (rendered, sum(map(len, rendered)))
            if sub.outbox.offer_batch(*made):
                sub.cursor = last
            else:
                if lagged is None:
                    lagged = []
                lagged.append(sub)
        if lagged:
            for sub in lagged:
                live.remove(sub)
                sub.announce = "lagged"
                sub.lag_from = sub.cursor + 1
                self.lag_events += 1
                sub.outbox.add_lagging(sub)

    # ------------------------------------------------------------------ subscribe

    def subscribe(self, chat: str, outbox: Outbox, mode: Mode, cursor: int,
                  keep_live: bool = True, request: int | None = None) -> Subscription:
        """Register a subscriber that has seen everything up to `cursor` (see
        `replay.start_cursor`). The connection's writer replays what follows through
        `catch_up`, which also sends `replay_complete` and joins the live set: even a
        subscriber already at the head goes through it once, so its `replay_complete` is
        queued after the subscribe reply."""
        ch = self._channels[chat]
        sub = Subscription(ch, outbox, mode, min(max(cursor, 0), ch.head), keep_live, request)
        outbox.add_lagging(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.active = False
        try:
            sub.channel.live.remove(sub)
        except ValueError:
            pass
        try:
            sub.outbox.lagging.remove(sub)
        except ValueError:
            pass

    def _control(self, sub: Subscription, message: object) -> bytes:
        return encode_message(message, sub.mode)

    async def catch_up(self, sub: Subscription) -> None:
        """Queue what `sub` is missing, as far as its outbox has room. Called by the
        connection's writer when its queue is empty. Puts `sub` back in the live set once it
        is at the head; otherwise leaves it in the outbox's lagging list for next time."""
        ch = sub.channel
        outbox = sub.outbox
        if sub.announce == "lagged":
            outbox.put(self._control(sub, Lagged(
                chat=ch.chat, from_seq=sub.lag_from, head_seq=ch.head,
                missed=ch.head - sub.lag_from + 1)))
            sub.announce = "replay"
            sub.request = None
        stalled = 0
        while sub.active and outbox.has_room():
            source = next_source(cursor=sub.cursor, head=ch.head, ring_first=ch.ring_first,
                                 floor=ch.floor)
            if source is Source.LIVE:
                break
            before = sub.cursor
            stalled = stalled + 1 if before == sub._last_cursor else 0
            if stalled > 3:
                # Never spin: a bug here must cost this subscriber a resync, not the
                # whole daemon its event loop.
                self._log.error("catch-up made no progress; resyncing subscriber",
                                chat=ch.chat, cursor=sub.cursor, head=ch.head)
                outbox.put(self._control(sub, ResyncRequired(
                    chat=ch.chat, epoch=ch.epoch, seq=ch.head,
                    reason="internal error during replay",
                    snapshot=ch.view.snapshot(ch.chat))))
                sub.cursor = ch.head
                break
            sub._last_cursor = before
            if source is Source.RING:
                # By seq, from the cursor on: O(1) per entry wherever the replay starts.
                ring, mode, offer = ch.ring, sub.mode, outbox.offer
                seq, last = sub.cursor + 1, ch.head
                while seq <= last and offer(ring.get(seq).render(mode)):
                    sub.cursor = seq
                    seq += 1
                continue
            if source is Source.LOG:
                upto = ch.ring_first - 1
                room = max(1, outbox.max_frames - len(outbox.frames))
                rows = await self._store.read_deltas(ch.chat, sub.cursor, upto,
                                                     limit=min(2000, room))
                if _inactive(sub):
                    return
                if not rows:
                    # Retention removed them between our check and the read.
                    ch.floor = max(ch.floor, upto + 1)
                    continue
                prefix = ch.log_prefix
                for seq, ts, data in rows:
                    if seq != sub.cursor + 1:
                        # A hole in the log (should not happen): treat as lost history.
                        ch.floor = max(ch.floor, seq)
                        break
                    # Bounded like the ring's: `put` ignored the byte bound, so a batch of
                    # large logged deltas passed the hard limit and closed the connection of
                    # a client that was reading ("client not reading"). The first offer
                    # always fits (the loop checked for room), so each pass progresses.
                    if not outbox.offer(render_logged(logged_payload(prefix, seq, ts, data),
                                                      sub.mode)):
                        break
                    sub.cursor = seq
                continue
            # Source.GONE: what it needs is no longer retained.
            outbox.put(self._control(sub, ResyncRequired(
                chat=ch.chat, epoch=ch.epoch, seq=ch.head,
                reason=f"deltas after {sub.cursor} are no longer retained (floor {ch.floor})",
                snapshot=ch.view.snapshot(ch.chat))))
            sub.cursor = ch.head
        if _inactive(sub):
            return
        if sub.cursor >= ch.head:
            try:
                outbox.lagging.remove(sub)
            except ValueError:
                pass
            outbox.put(self._control(sub, ReplayComplete(chat=ch.chat, head_seq=ch.head,
                                                         request=sub.request)))
            sub.request = None
            if sub.keep_live:
                ch.live.append(sub)
            else:
                sub.active = False
        # else: stays lagging; the writer calls again once the queue drained.

    # ------------------------------------------------------------------ retention

    async def prune(self, *, retain_deltas: int, retain_age: float,
                    retain_transitions: float | None = None) -> int:
        """Delete logged deltas beyond the retention (and, with `retain_transitions`, state
        transitions older than that); returns how many chats changed."""
        cutoff = self._clock() - retain_age
        if retain_transitions is not None:
            self._store.prune_transitions(self._clock() - retain_transitions)
        changed = 0
        for ch in list(self._channels.values()):
            keep_from = max(1, ch.head - retain_deltas + 1)
            self._store.execute(
                "DELETE FROM deltas WHERE chat=? AND (seq<? OR ts<?)", (ch.chat, keep_from, cutoff),
                bulk=True)
        await self._store.flush()
        # The oldest retained seq of each channel, by primary key (chat, seq): a probe per
        # chat. (A `GROUP BY chat` read the whole log: ~85 ms per million deltas, at every
        # startup before the socket opens.)
        chats = list(self._channels)
        lows = await self._store.query_each("SELECT MIN(seq) FROM deltas WHERE chat=?",
                                            [(chat,) for chat in chats])
        floors = {chat: int(rows[0][0]) for chat, rows in zip(chats, lows, strict=True)
                  if rows and rows[0][0] is not None}
        queried = set(chats)
        for ch in self._channels.values():
            if ch.chat not in queried:
                continue  # opened while we read: measured by the next pass
            ring_first = ch.ring_first
            floor = min(floors.get(ch.chat, ch.head + 1), ring_first)
            if floor != ch.floor:
                ch.floor = floor
                changed += 1
        return changed

    def statistics(self) -> dict[str, int]:
        return {
            "channels": len(self._channels),
            "published": self.published,
            "undelivered": self.published - self.delivered,
            "lag_events": self.lag_events,
            "live_subscribers": sum(len(ch.live) for ch in self._channels.values()),
        }

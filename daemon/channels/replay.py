"""The replay window: which source serves a subscriber's next delta. Pure.

A channel retains deltas in two places: the in-memory ring (the newest `ring_size`) and the
persisted log (everything from `floor` up, subject to retention). A subscriber whose last
delivered seq is `cursor` needs `cursor + 1` next:

    floor <= ring_first <= head + 1        (ring_first = head + 1 when the ring is empty)

    cursor + 1 > head           -> LIVE  (caught up: join the live set)
    cursor + 1 >= ring_first    -> RING
    cursor + 1 >= floor         -> LOG
    otherwise                   -> GONE  (resync_required with a snapshot)
"""

from __future__ import annotations

import enum


class Source(enum.Enum):
    LIVE = "live"
    RING = "ring"
    LOG = "log"
    GONE = "gone"


def next_source(*, cursor: int, head: int, ring_first: int, floor: int) -> Source:
    nxt = cursor + 1
    if nxt > head:
        return Source.LIVE
    if nxt >= ring_first:
        return Source.RING
    if nxt >= floor:
        return Source.LOG
    return Source.GONE


def start_cursor(*, since_seq: int | None, since_epoch: str | None, epoch: str, head: int,
                 floor: int) -> tuple[int, str | None]:
    """Where a new subscription starts, and why it must resync (None if it need not).

    `since_seq is None` means live only. `since_seq == 0` means everything retained (start
    at the floor, whatever the epoch). A cursor from another epoch, or one below what is
    retained, cannot be served: the subscriber resyncs from the head.
    """
    if since_seq is None:
        return head, None
    if since_seq == 0:
        return max(floor - 1, 0), None
    if since_epoch is not None and since_epoch != epoch:
        return head, f"epoch changed ({since_epoch} -> {epoch}): the chat's history was lost"
    if since_seq > head:
        return head, f"cursor {since_seq} is ahead of the head {head}"
    if since_seq + 1 < floor:
        return head, f"deltas after {since_seq} are no longer retained (oldest is {floor})"
    return since_seq, None

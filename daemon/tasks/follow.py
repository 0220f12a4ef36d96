"""Following a chat's deltas in-process: a subscriber like a client's, without a socket.

The hub fans deltas out to outboxes; this one's reader decodes them and hands each delta
to a callback. Replays from a cursor go through the hub's own catch-up (ring, then log),
so a follower started after a restart sees the turn it waits for from its first delta,
exactly as a client would: no second way of reading history.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from daemon.channels.channel import Outbox
from daemon.channels.hub import Hub
from protocol import deltas as d
from protocol import messages as m

_decoder = msgspec.msgpack.Decoder(d.Delta | m.ReplayComplete | m.Lagged | m.ResyncRequired)


async def follow(hub: Hub, chat: str, cursor: int, on_delta: Callable[[d.Delta], None]
                 ) -> None:
    """Call `on_delta` with every delta of `chat` after `cursor`, in order, until
    cancelled."""
    outbox = Outbox(max_frames=1024, max_bytes=8 << 20, hard_max_bytes=64 << 20)
    sub = hub.subscribe(chat, outbox, "msgpack", cursor)
    try:
        while True:
            await outbox.wait()
            for lagging in list(outbox.lagging):
                await hub.catch_up(lagging)
            for frame in outbox.take(1 << 20):
                message = _decoder.decode(frame)
                if isinstance(message, d.Delta):
                    on_delta(message)
    finally:
        hub.unsubscribe(sub)

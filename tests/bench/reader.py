"""A counting subscriber in its own process, for the fan-out floors.

`python -m tests.bench.reader daemon SOCKET CHAT` connects to the daemon, subscribes live to
CHAT and prints "ready"; `python -m tests.bench.reader raw SOCKET` connects to a pump
(`pump.py`) and prints "ready". Either then counts frames (`wire.RawSubscriber`, no decoding
of deltas) until the frame holding `turn_ended`, and prints one JSON line: deltas, lag
events, resync, and `ended_at` (`time.perf_counter()`, CLOCK_MONOTONIC on Linux, so it
compares with the driver's clock).

Readers in separate processes take the counting off the driver's one core: with them the
pump is a floor (what a bare server that encodes each delta can deliver), not the ceiling of
what one process can count.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import trio

from .wire import RawSubscriber


async def main(argv: list[str]) -> None:
    mode, socket = argv[0], Path(argv[1])
    if mode == "daemon":
        sub = await RawSubscriber.unix(socket)
        await sub.subscribe(argv[2], None)
    else:
        stream = await trio.open_unix_socket(os.fspath(socket))
        sub = RawSubscriber(stream, "unix")
    print("ready", flush=True)
    tally = await sub.count_until(b"turn_ended")
    await sub.aclose()
    print(json.dumps({"deltas": tally.deltas, "lagged": tally.lagged,
                      "resynced": tally.resynced, "ended_at": tally.ended_at}), flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])

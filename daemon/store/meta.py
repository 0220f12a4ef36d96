"""The `meta` table's records: this database's instance id, whether the last daemon exited
cleanly, and how it delivered deltas. (The schema version, also in `meta`, is the store's
own: `sqlite.Store.open`.)"""

from __future__ import annotations

import contextlib
import secrets

from daemon.store.faults import FLUSH_PATIENCE, StorageUnavailable
from daemon.store.sqlite import Store


async def instance_id(store: Store) -> str:
    """This database's id, made on first use: it marks the agents this daemon starts, so a
    later daemon on the same database recognises its orphans and no other daemon's."""
    rows = await store.query("SELECT value FROM meta WHERE key='instance'")
    if rows:
        return str(rows[0][0])
    instance = secrets.token_hex(6)
    store.execute("INSERT INTO meta(key, value) VALUES ('instance', ?)", (instance,))
    await store.flush()
    return instance


async def swap_clean_exit(store: Store, value: str) -> str | None:
    """Record `value` ("0" while running, "1" after an orderly stop) and return what the
    previous daemon left ("0": it did not stop cleanly), committed before returning."""
    rows = await store.query("SELECT value FROM meta WHERE key='clean_exit'")
    store.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean_exit', ?)", (value,))
    # A stop on a full disk must not wait for the disk: the marker then stays "0", which is
    # the truth (writes were lost), and the next start treats the exit as unclean.
    await _flush_if_possible(store)
    return str(rows[0][0]) if rows else None


async def _flush_if_possible(store: Store) -> None:
    """Commit what is enqueued, unless the store cannot commit for its `patience` (a full
    disk): then it stays enqueued, committed once the store can write again."""
    patience = FLUSH_PATIENCE.set(store.patience)
    try:
        with contextlib.suppress(StorageUnavailable):
            await store.flush()
    finally:
        FLUSH_PATIENCE.reset(patience)


DELIVERY_AFTER_COMMIT = "after_commit"
"""A daemon that delivers a delta to subscribers only once it is committed to the log
(`channels.hub`): after its crash, every delta a client holds is in the log."""


async def swap_delivery(store: Store) -> str | None:
    """Record that this daemon delivers after commit and return what the database's previous
    daemon recorded (None: an older daemon, which delivered before the commit, so after its
    crash clients may hold deltas the log lacks)."""
    rows = await store.query("SELECT value FROM meta WHERE key='delivery'")
    store.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('delivery', ?)",
                  (DELIVERY_AFTER_COMMIT,))
    await _flush_if_possible(store)
    return str(rows[0][0]) if rows else None

"""The `meta` table's records: this database's instance id and whether the last daemon exited
cleanly. (The schema version, also in `meta`, is the store's own: `sqlite.Store.open`.)"""

from __future__ import annotations

import secrets

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
    await store.flush()
    return str(rows[0][0]) if rows else None

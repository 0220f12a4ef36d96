"""The database's tables: one schema, created at start with `IF NOT EXISTS`; columns added
later are added by `opening.migrate`. Each subsystem's tables are commented with the module that
writes them.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chats (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    cwd TEXT NOT NULL,
    workspace TEXT,
    computer TEXT,
    policy TEXT,
    title TEXT,
    mcp BLOB,
    epoch TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    closed INTEGER NOT NULL DEFAULT 0,
    next_turn INTEGER NOT NULL DEFAULT 1,
    head_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS actors (
    chat TEXT NOT NULL,
    agent TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    session_id TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    pgid INTEGER,
    pid_start REAL,
    computer TEXT,
    marker TEXT,
    info BLOB,
    usage BLOB,
    turns INTEGER NOT NULL DEFAULT 0,
    last_activity REAL,
    updated REAL NOT NULL,
    PRIMARY KEY (chat, agent)
);
CREATE TABLE IF NOT EXISTS deltas (
    chat TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (chat, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS prompts (
    chat TEXT NOT NULL,
    turn INTEGER NOT NULL,
    agent TEXT NOT NULL,
    content BLOB NOT NULL,
    by TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (chat, turn)
);
CREATE TABLE IF NOT EXISTS transitions (
    chat TEXT NOT NULL,
    agent TEXT NOT NULL,
    ts REAL NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    generation INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS transitions_ts ON transitions (ts);
CREATE INDEX IF NOT EXISTS transitions_chat ON transitions (chat, agent, ts);
-- workspaces subsystem (daemon/workspaces.py): one git worktree per workspace, and a
-- tombstone per soft delete (the reaper's journal: an interrupted delete is finished from it)
CREATE TABLE IF NOT EXISTS workspaces (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    path TEXT NOT NULL,
    branch TEXT NOT NULL,
    base TEXT NOT NULL,
    computer TEXT,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    orphaned_at REAL,
    reason TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    common_dir TEXT NOT NULL DEFAULT '',
    diff_hash TEXT NOT NULL DEFAULT '',
    tombstone TEXT
);
CREATE TABLE IF NOT EXISTS tombstones (
    id TEXT PRIMARY KEY,
    workspace TEXT,
    path TEXT NOT NULL,
    trash TEXT NOT NULL,
    computer TEXT,
    common_dir TEXT NOT NULL DEFAULT '',
    branch TEXT NOT NULL DEFAULT '',
    head TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    trashed_at REAL,
    purged_at REAL
);
-- tasks subsystem (daemon/tasks/): a task is a chat with a parent; its SQL is in
-- daemon/tasks/records.py
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    agent TEXT NOT NULL,
    title TEXT NOT NULL,
    origin TEXT NOT NULL,
    depth INTEGER NOT NULL,
    state TEXT NOT NULL,
    prompt TEXT NOT NULL DEFAULT '',
    turn INTEGER,
    since INTEGER NOT NULL DEFAULT 0,
    result TEXT NOT NULL DEFAULT '',
    stop_reason TEXT,
    error TEXT,
    notified INTEGER NOT NULL DEFAULT 1,
    tokens INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    ended REAL
);
CREATE INDEX IF NOT EXISTS tasks_parent ON tasks (parent);
-- workflows subsystem (daemon/workflows/): runs, their steps (each a task) and the cache of
-- step results by spec; its SQL is in daemon/workflows/records.py
CREATE TABLE IF NOT EXISTS workflow_runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    source TEXT NOT NULL,
    inputs TEXT NOT NULL,
    cwd TEXT NOT NULL,
    base TEXT NOT NULL DEFAULT '',
    chat TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    created REAL NOT NULL,
    ended REAL,
    origin TEXT
);
CREATE TABLE IF NOT EXISTS workflow_units (
    run TEXT NOT NULL,
    unit TEXT NOT NULL,
    step TEXT NOT NULL,
    idx INTEGER,
    item TEXT,
    state TEXT NOT NULL,
    key TEXT NOT NULL DEFAULT '',
    prompt TEXT NOT NULL DEFAULT '',
    task TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT NOT NULL DEFAULT '',
    tokens INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    started REAL,
    ended REAL,
    PRIMARY KEY (run, unit)
);
CREATE TABLE IF NOT EXISTS workflow_cache (
    key TEXT PRIMARY KEY,
    result TEXT NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
"""

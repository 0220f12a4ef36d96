"""The durable records of chats, actors and prompts: every SQL statement on the `chats`,
`actors`, `prompts` and `transitions` tables, and the typed rows they read.

One owner module for the SQL means the column lists are written once: the pool and the
actors read rows by name (`ChatRow.next_turn`), never by position, and a schema change is a
change here. Writes are enqueued on the store's one writer (`Store.execute`, never blocking);
reads go through its reader in a worker thread. The delta log's own statements stay in
`daemon.store.sqlite`, except `log_ends`, which the pool's start-up needs per chat.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from daemon.actors.lifecycle import State
from daemon.execution.local import ProcessIdentity
from daemon.store.sqlite import Store
from protocol.messages import ContentBlock, UsageTotals

_msgpack = msgspec.msgpack.Encoder()
_content_decoder = msgspec.msgpack.Decoder(list[ContentBlock])
_usage_decoder = msgspec.msgpack.Decoder(UsageTotals)


# --------------------------------------------------------------------------- chats


@dataclass(slots=True)
class Chat:
    """One conversation, as the pool keeps it in memory and the `chats` table stores it."""

    id: str
    agent: str
    cwd: str
    epoch: str
    created: float
    updated: float
    workspace: str | None = None
    computer: str | None = None
    policy: str | None = None
    title: str | None = None
    closed: bool = False
    next_turn: int = 1
    mcp: list[dict[str, Any]] = field(default_factory=list)


class ChatRow(msgspec.Struct, kw_only=True, frozen=True):
    """A row of `chats`."""

    id: str
    agent: str
    cwd: str
    workspace: str | None
    computer: str | None
    policy: str | None
    title: str | None
    mcp: list[dict[str, Any]]
    epoch: str
    created: float
    updated: float
    closed: bool
    next_turn: int
    head_seq: int

    def chat(self, epoch: str | None = None) -> Chat:
        return Chat(id=self.id, agent=self.agent, cwd=self.cwd, epoch=epoch or self.epoch,
                    created=self.created, updated=self.updated, workspace=self.workspace,
                    computer=self.computer, policy=self.policy, title=self.title,
                    closed=self.closed, next_turn=self.next_turn, mcp=self.mcp)


_CHAT_COLUMNS = ("id, agent, cwd, workspace, computer, policy, title, mcp, epoch, created,"
                 " updated, closed, next_turn, head_seq")


async def load_chats(store: Store) -> list[ChatRow]:
    rows = await store.query(f"SELECT {_CHAT_COLUMNS} FROM chats")
    return [
        ChatRow(id=r[0], agent=r[1], cwd=r[2], workspace=r[3], computer=r[4], policy=r[5],
                title=r[6], mcp=msgspec.msgpack.decode(r[7]) if r[7] else [], epoch=r[8],
                created=r[9], updated=r[10], closed=bool(r[11]), next_turn=int(r[12]),
                head_seq=int(r[13] or 0))
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class LogEnds:
    """The highest and lowest seq in a chat's delta log (None: the log is empty)."""

    head: int | None
    floor: int | None


async def log_ends(store: Store, chats: Sequence[str]) -> dict[str, LogEnds]:
    """Head and floor of each chat's log by primary-key probes, in one thread trip: two
    `GROUP BY chat` scans would read the whole log before the socket opens."""
    found = await store.query_each(
        "SELECT (SELECT MAX(seq) FROM deltas WHERE chat=?1),"
        " (SELECT MIN(seq) FROM deltas WHERE chat=?1)", [(chat,) for chat in chats])
    return {chat: LogEnds(head=None if rows[0][0] is None else int(rows[0][0]),
                          floor=None if rows[0][1] is None else int(rows[0][1]))
            for chat, rows in zip(chats, found, strict=True)}


def save_chat(store: Store, chat: Chat, head_seq: int) -> None:
    """Insert or update `chat`; its id, cwd, workspace, computer, epoch and creation time
    never change once written (a new epoch goes through `renew_epoch`)."""
    store.execute(
        f"INSERT INTO chats({_CHAT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT(id) DO UPDATE SET agent=excluded.agent, policy=excluded.policy,"
        " title=excluded.title, mcp=excluded.mcp, updated=excluded.updated,"
        " closed=excluded.closed, next_turn=excluded.next_turn,"
        " head_seq=excluded.head_seq",
        (chat.id, chat.agent, chat.cwd, chat.workspace, chat.computer, chat.policy,
         chat.title, _msgpack.encode(chat.mcp), chat.epoch, chat.created, chat.updated,
         int(chat.closed), chat.next_turn, head_seq),
    )


def renew_epoch(store: Store, chat: str, epoch: str) -> None:
    store.execute("UPDATE chats SET epoch=? WHERE id=?", (epoch, chat))


# --------------------------------------------------------------------------- actors


class ActorRecord(msgspec.Struct, kw_only=True):
    """What the store keeps of an actor between lives."""

    state: State = State.HIBERNATED
    reason: str = ""
    session_id: str | None = None
    generation: int = 0
    turns: int = 0
    info: dict[str, Any] = {}
    usage: UsageTotals = msgspec.field(default_factory=UsageTotals)
    last_activity: float | None = None


class ActorRow(msgspec.Struct, kw_only=True, frozen=True):
    """A row of `actors`: the record, plus where its agent process ran (if it ran)."""

    chat: str
    agent: str
    record: ActorRecord
    process: ProcessIdentity | None
    """Set when the row names a process: the daemon stopped without stopping it."""


async def load_actors(store: Store) -> list[ActorRow]:
    rows = await store.query(
        "SELECT chat, agent, state, reason, session_id, generation, pid, pgid, pid_start,"
        " computer, marker, info, usage, turns, last_activity FROM actors")
    out: list[ActorRow] = []
    for (chat, agent, state, reason, session_id, generation, pid, pgid, pid_start,
         computer, marker, info, usage, turns, last_activity) in rows:
        process = None if pid is None else ProcessIdentity(
            pid=int(pid), pgid=int(pgid or pid), start_time=float(pid_start or 0.0),
            computer=computer, actor=marker or "")
        record = ActorRecord(
            state=_state(state), reason=reason, session_id=session_id,
            generation=int(generation or 0), turns=int(turns or 0),
            info=msgspec.msgpack.decode(info) if info else {},
            usage=_usage_decoder.decode(usage) if usage else UsageTotals(),
            last_activity=last_activity)
        out.append(ActorRow(chat=chat, agent=agent, record=record, process=process))
    return out


def _state(value: str) -> State:
    """A stored state; one this daemon does not know (a newer daemon wrote it) reads as
    hibernated, the state that assumes nothing about a process."""
    try:
        return State(value)
    except ValueError:
        return State.HIBERNATED


def save_actor(store: Store, chat: str, agent: str, record: ActorRecord,
               process: ProcessIdentity | None) -> None:
    store.execute(
        "INSERT INTO actors(chat, agent, state, reason, session_id, generation, pid, pgid,"
        " pid_start, computer, marker, info, usage, turns, last_activity, updated)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT(chat, agent) DO UPDATE SET state=excluded.state,"
        " reason=excluded.reason, session_id=excluded.session_id,"
        " generation=excluded.generation, pid=excluded.pid, pgid=excluded.pgid,"
        " pid_start=excluded.pid_start, computer=excluded.computer,"
        " marker=excluded.marker, info=excluded.info,"
        " usage=excluded.usage, turns=excluded.turns,"
        " last_activity=excluded.last_activity, updated=excluded.updated",
        (
            chat, agent, record.state.value, record.reason, record.session_id,
            record.generation,
            process.pid if process else None, process.pgid if process else None,
            process.start_time if process else None,
            process.computer if process else None,
            process.actor if process else None,
            _msgpack.encode(record.info), _msgpack.encode(record.usage), record.turns,
            record.last_activity, time.time(),
        ),
    )


def record_transition(store: Store, chat: str, agent: str, state: State, reason: str,
                      generation: int) -> None:
    store.execute(
        "INSERT INTO transitions(chat, agent, ts, state, reason, generation) "
        "VALUES (?,?,?,?,?,?)",
        (chat, agent, time.time(), state.value, reason, generation),
    )


async def restarts_since(store: Store, since: float) -> int:
    rows = await store.query(
        "SELECT COUNT(*) FROM transitions WHERE state='restarting' AND ts>=?", (since,))
    return int(rows[0][0]) if rows else 0


# --------------------------------------------------------------------------- prompts


class PromptRow(msgspec.Struct, kw_only=True, frozen=True):
    """A row of `prompts`: a turn accepted and not yet ended."""

    chat: str
    turn: int
    agent: str
    content: list[ContentBlock]
    by: str
    running: bool
    """The turn had started when the row was last written."""
    created: float


async def load_prompts(store: Store) -> list[PromptRow]:
    rows = await store.query(
        "SELECT chat, turn, agent, content, by, state, created FROM prompts"
        " ORDER BY chat, turn")
    return [PromptRow(chat=chat, turn=int(turn), agent=agent,
                      content=_content_decoder.decode(content), by=by,
                      running=state == "running", created=created)
            for chat, turn, agent, content, by, state, created in rows]


def queue_prompt(store: Store, chat: str, turn: int, agent: str,
                 content: list[ContentBlock], by: str, created: float) -> None:
    store.execute(
        "INSERT INTO prompts(chat, turn, agent, content, by, state, created)"
        " VALUES (?,?,?,?,?,?,?)",
        (chat, turn, agent, _msgpack.encode(content), by, "queued", created))


def mark_prompt_running(store: Store, chat: str, turn: int) -> None:
    store.execute("UPDATE prompts SET state='running' WHERE chat=? AND turn=?", (chat, turn))


def delete_prompt(store: Store, chat: str, turn: int) -> None:
    store.execute("DELETE FROM prompts WHERE chat=? AND turn=?", (chat, turn))

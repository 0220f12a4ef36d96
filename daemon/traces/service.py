"""The `trace` and `stats` requests, answered from the delta log.

A trace reads one chat's retained deltas (in pages, from the store's reader connection,
never the writer) and folds them with `model.turn_traces`. Statistics read the deltas
logged since `since` of every chat updated since then, plus the actors' `transitions` for
hibernations. Both are slow routes (their own task per request): a chat with the default
retention (100,000 deltas) takes a few hundred milliseconds to fold.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec

from daemon.channels.frames import log_prefix, logged_payload
from daemon.errors import BadRequest, UnknownChat
from daemon.router import Routes
from daemon.store.sqlite import Store
from daemon.traces import model
from protocol import deltas as d
from protocol import messages as m

PAGE = 5000
DEFAULT_WINDOW = 7 * 86400.0
MAX_LAST = 1000

_decoder = msgspec.msgpack.Decoder(d.Delta)


class TraceService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def _deltas(self, chat: str, since: float | None = None) -> list[d.Delta]:
        """Every retained delta of `chat` (logged at or after `since`), oldest first."""
        out: list[d.Delta] = []
        after = 0
        prefix = log_prefix(chat)
        while True:
            if since is None:
                rows = await self.store.query(
                    "SELECT seq, ts, data FROM deltas WHERE chat=? AND seq>? "
                    "ORDER BY seq LIMIT ?", (chat, after, PAGE))
            else:
                rows = await self.store.query(
                    "SELECT seq, ts, data FROM deltas WHERE chat=? AND seq>? AND ts>=? "
                    "ORDER BY seq LIMIT ?", (chat, after, since, PAGE))
            out.extend(_decoder.decode(logged_payload(prefix, int(seq), float(ts), bytes(data)))
                       for seq, ts, data in rows)
            if len(rows) < PAGE:
                return out
            after = int(rows[-1][0])

    async def trace(self, req: m.Trace) -> m.TraceResult:
        if not 1 <= req.last <= MAX_LAST:
            raise BadRequest(f"last must be between 1 and {MAX_LAST}")
        if not await self.store.query("SELECT 1 FROM chats WHERE id=?", (req.chat,)):
            raise UnknownChat(req.chat)
        await self.store.flush()  # what subscribers were sent is in the log
        deltas = await self._deltas(req.chat)
        traces = model.turn_traces(deltas)
        first_turn = min((t.turn for t in traces), default=None)
        if req.turn is not None:
            picked = [t for t in traces if t.turn == req.turn]
            if not picked:
                raise BadRequest(f"chat {req.chat!r} has no turn {req.turn} in its log"
                                 + (f" (it holds turns {first_turn}..{traces[-1].turn})"
                                    if traces else " (it holds no turns)"))
            truncated = False
        else:
            picked = traces[-req.last:]
            # An older turn's start fell out of the log (retention) if deltas of a turn
            # before the first started one are still there.
            truncated = any(x.turn and first_turn is not None and x.turn < first_turn
                            for x in deltas)
        return m.TraceResult(chat=req.chat, turns=picked, truncated=truncated)

    async def stats(self, req: m.Stats) -> m.StatsResult:
        since = req.since if req.since is not None else time.time() - DEFAULT_WINDOW
        await self.store.flush()
        chats = await self.store.query(
            "SELECT c.id, COALESCE(w.project, c.cwd) FROM chats c "
            "LEFT JOIN workspaces w ON w.id = c.workspace WHERE c.updated >= ?", (since,))
        project = {str(chat): str(where) for chat, where in chats}
        traced: list[tuple[str, m.TurnTrace]] = []
        for chat in project:
            for trace in model.turn_traces(await self._deltas(chat, since)):
                traced.append((chat, trace))

        def key(chat: str, trace: m.TurnTrace) -> str:
            return _key(req.by, trace.agent, project.get(chat, ""), trace.accepted)

        rows = model.stats(traced, key, since)
        hibernated = await self.store.query(
            "SELECT chat, agent, ts FROM transitions WHERE state='hibernated' AND ts>=?",
            (since,))
        by_key = {row.key: row for row in rows}
        for chat, agent, ts in hibernated:
            name = _key(req.by, str(agent), project.get(str(chat), ""), float(ts))
            row = by_key.get(name)
            if row is None:
                row = by_key[name] = m.StatsRow(key=name)
                rows.append(row)
            row.hibernations += 1
        return m.StatsResult(by=req.by, since=since, rows=rows, chats=len(project))


def _key(by: str, agent: str, project: str, ts: float) -> str:
    if by == "agent":
        return agent
    if by == "project":
        return project
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


ROUTES: Routes[TraceService] = Routes("traces")


@ROUTES.handles(m.Trace, slow=True)
async def trace(service: TraceService, req: m.Trace, client: str) -> m.TraceResult:
    return await service.trace(req)


@ROUTES.handles(m.Stats, slow=True)
async def stats(service: TraceService, req: m.Stats, client: str) -> m.StatsResult:
    return await service.stats(req)

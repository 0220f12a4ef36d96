"""Start-up: what a new daemon life takes over from the last one.

In order: the chats (their channels reopened at the log's head, a new epoch for each only if
the last daemon died uncleanly *and* delivered deltas before committing them), the actor
records (reclaiming agent processes a crashed daemon left behind, `Executor.reclaim`), then
the prompt queue (turns that were running when the daemon stopped end as interrupted; queued
ones are delivered again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from daemon.actors import mailbox as mb
from daemon.actors import records
from daemon.actors.backend.turns import summarize
from daemon.actors.lifecycle import State
from daemon.actors.records import ActorRecord, Chat
from daemon.actors.ref import ActorRef
from daemon.channels.hub import Hub, new_epoch
from daemon.errors import UnknownAgent, UnknownComputer
from daemon.execution.local import Executor
from daemon.log import Log
from daemon.store import meta
from daemon.store.sqlite import Store
from protocol import deltas as d

MakeActor = Callable[[Chat, str, ActorRecord, bool], ActorRef]
"""(chat, agent, record, reclaimed) -> the actor's ref; raises UnknownAgent or
UnknownComputer when the config no longer has its agent or computer."""
ActorFor = Callable[[Chat, str], ActorRef]


@dataclass(frozen=True, slots=True)
class Restored:
    """What start-up found, for the log."""

    chats: int
    reclaimed: int
    interrupted: int
    requeued: int
    new_epochs: int


async def restore(*, store: Store, hub: Hub, chats: dict[str, Chat], unclean: bool,
                  executors: Callable[[str | None], Executor], make_actor: MakeActor,
                  actor_for: ActorFor, log: Log) -> Restored:
    """Fill `chats` from the store and bring back their actors and queued prompts."""
    renewed = await _restore_chats(store, hub, chats, unclean=unclean)
    reclaimed = await _restore_actors(store, hub, chats, executors, make_actor, log)
    interrupted, requeued = await _requeue_prompts(store, hub, chats, actor_for)
    return Restored(chats=len(chats), reclaimed=reclaimed, interrupted=interrupted,
                    requeued=requeued, new_epochs=renewed)


async def _restore_chats(store: Store, hub: Hub, chats: dict[str, Chat], *,
                         unclean: bool) -> int:
    rows = await records.load_chats(store)
    ends = await records.log_ends(store, [row.id for row in rows])
    # A daemon that delivers only committed deltas leaves nothing a client saw out of the
    # log, even when killed: the history goes on under the same epoch.
    lossy = await meta.swap_delivery(store) != meta.DELIVERY_AFTER_COMMIT
    renewed = 0
    for row in rows:
        epoch = row.epoch
        if unclean and lossy:
            # An older daemon's live subscribers may have seen deltas of its last few
            # milliseconds that never reached the log; their seq numbers would now be
            # reused for other deltas. The history may be incomplete: a new history.
            epoch = new_epoch()
            records.renew_epoch(store, row.id, epoch)
            renewed += 1
        log_end = ends[row.id]
        head = max(row.head_seq, log_end.head or 0)
        chat = row.chat(epoch)
        chats[chat.id] = chat
        floor = log_end.floor if log_end.floor is not None else head + 1
        hub.open_channel(chat.id, epoch, head=head, floor=floor)
        hub.seed_view(chat.id, agent=chat.agent,
                      state="closed" if chat.closed else State.HIBERNATED.value,
                      last_turn=chat.next_turn - 1)
    return renewed


async def _restore_actors(store: Store, hub: Hub, chats: dict[str, Chat],
                          executors: Callable[[str | None], Executor], make_actor: MakeActor,
                          log: Log) -> int:
    reclaimed = 0
    for row in await records.load_actors(store):
        chat = chats.get(row.chat)
        if chat is None:
            continue
        if row.process is not None:
            # Reclaim where the process ran, even if the config moved the agent since.
            try:
                if await executors(row.process.computer).reclaim(row.process):
                    reclaimed += 1
            except Exception:
                log.exception("orphan reclaim failed", chat=row.chat, agent=row.agent)
        if chat.closed:
            continue
        stored = row.record
        kept = stored.state in (State.FAILED, State.CLOSED)
        record = ActorRecord(
            state=stored.state if kept else State.HIBERNATED,
            reason="daemon restarted" if row.process is not None else stored.reason,
            session_id=stored.session_id, generation=stored.generation, turns=stored.turns,
            info=stored.info, usage=stored.usage, last_activity=stored.last_activity)
        if record.state is State.CLOSED:
            continue
        if row.agent == chat.agent:
            hub.seed_view(chat.id, agent=row.agent, state=record.state.value,
                          last_turn=chat.next_turn - 1)
        try:
            make_actor(chat, row.agent, record, row.process is not None)
        except (UnknownAgent, UnknownComputer) as exc:
            # Its agent or computer left the config: the chat stays; using it says why.
            log.warning("actor not restored", chat=row.chat, agent=row.agent,
                        error=exc.message)
    return reclaimed


async def _requeue_prompts(store: Store, hub: Hub, chats: dict[str, Chat],
                           actor_for: ActorFor) -> tuple[int, int]:
    interrupted = requeued = 0
    for row in await records.load_prompts(store):
        chat = chats.get(row.chat)
        if chat is None or chat.closed or row.running:
            if chat is not None:
                hub.publish(row.chat, row.turn, d.TurnEnded(
                    error="interrupted: the daemon stopped while this turn ran"))
            records.delete_prompt(store, row.chat, row.turn)
            interrupted += 1
            continue
        job = mb.PromptJob(turn=row.turn, content=row.content, summary=summarize(row.content),
                           by=row.by, accepted_at=row.created)
        try:
            ref = actor_for(chat, row.agent)
        except (UnknownAgent, UnknownComputer) as exc:
            hub.publish(row.chat, row.turn, d.TurnEnded(
                error=f"agent {row.agent!r} is no longer configured" if isinstance(
                    exc, UnknownAgent) else exc.message))
            records.delete_prompt(store, row.chat, row.turn)
            interrupted += 1
            continue
        ref.send(job)
        requeued += 1
    return interrupted, requeued

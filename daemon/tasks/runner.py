"""Running the tasks: starting each under its parent's limit, following it to its end,
cancelling (with the cascade) and bringing the results back to the parent.

A task's life:

    queued --a free slot under the parent's max_running--> running
    running --its turn ends--> done | failed | cancelled | interrupted
    any ended state --task_send--> queued (a follow-up prompt in the same chat)

Every change is written to the `tasks` table and announced by a `task` delta on the
parent's channel. The runner follows (in-process, `follow`) the channel of every running
task, to collect its text and see its `turn_ended`, and of every parent with unfinished
tasks or results still to bring back, to see the parent's turns end (cancel cascade,
`notify = "prompt"`) and the parent close. After a restart the follower of a running task
replays its turn from the log: it either finishes then or was ended "interrupted" by the
pool's restore, and the task ends the same way.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from daemon.actors.pool import Pool
from daemon.actors.settings import Settings
from daemon.channels.hub import Hub
from daemon.config.file import TasksConfig
from daemon.errors import StokerError
from daemon.log import Log
from daemon.store.sqlite import Store
from daemon.tasks import limits, records
from daemon.tasks.follow import follow
from daemon.tasks.records import Task, TaskState
from protocol import deltas as d
from protocol.messages import TextBlock

BY = "tasks"
"""The `by` of the prompts this service sends (a task's prompt, a parent's report)."""

_EVENTS: dict[TaskState, Any] = {
    TaskState.DONE: "finished",
    TaskState.FAILED: "failed",
    TaskState.CANCELLED: "cancelled",
    TaskState.INTERRUPTED: "interrupted",
}


class Runner:
    """The tasks in memory and what moves them. The service (service.py) answers the
    requests and owns the lifecycle; it sets `nursery` while it serves, and the followers and
    background steps run there."""

    def __init__(self, *, pool: Pool, hub: Hub, store: Store, settings: Settings, log: Log
                 ) -> None:
        self._pool = pool
        self._hub = hub
        self._store = store
        self._settings = settings
        self._log = log
        self.tasks: dict[str, Task] = {}
        self.children: dict[str, list[Task]] = {}
        self._followed: dict[str, trio.CancelScope] = {}
        self._cancelling: set[str] = set()
        """Running tasks whose cancel was asked before their prompt was accepted."""
        self.nursery: trio.Nursery | None = None
        self.max_running: dict[str, int] = {}
        """Parents driven by another service (a workflow run's chat): their own limit of
        running tasks, and no result reports (they have no agent to read them)."""

    @property
    def config(self) -> TasksConfig:
        return self._settings.config.tasks

    # ================================================================== bookkeeping

    def add(self, task: Task) -> None:
        self.tasks[task.id] = task
        self.children.setdefault(task.parent, []).append(task)

    def save(self, task: Task) -> None:
        records.save(self._store, task)

    def publish(self, task: Task, event: Any) -> None:
        if self._hub.channel(task.parent) is None:
            return
        summary = limits.summary(task.result) if event == "finished" else ""
        self._hub.publish(task.parent, 0, d.Task(
            task=task.id, event=event, agent=task.agent, title=task.title,
            state=task.state.value, summary=summary, stop_reason=task.stop_reason,
            error=task.error))

    def _soon(self, fn: Any, *args: Any) -> None:
        if self.nursery is not None:
            self.nursery.start_soon(self._guarded, fn, *args)

    async def _guarded(self, fn: Any, *args: Any) -> None:
        """A background step: a bug in it is logged, it never takes the daemon down."""
        try:
            await fn(*args)
        except Exception:
            self._log.exception("task step failed", step=getattr(fn, "__name__", "?"))

    # ================================================================== following

    def _interesting(self, chat: str) -> bool:
        task = self.tasks.get(chat)
        if task is not None and task.state is TaskState.RUNNING:
            return True
        return any(t.unfinished or not t.notified for t in self.children.get(chat, []))

    def follow_chat(self, chat: str, cursor: int) -> None:
        if chat in self._followed or self.nursery is None or self._hub.channel(chat) is None:
            return
        scope = trio.CancelScope()
        self._followed[chat] = scope
        self.nursery.start_soon(self._follower, chat, cursor, scope)

    async def _follower(self, chat: str, cursor: int, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await follow(self._hub, chat, cursor, lambda delta: self._on_delta(chat, delta))
        except Exception:
            self._log.exception("following a chat failed", chat=chat)
        finally:
            if self._followed.get(chat) is scope:
                del self._followed[chat]

    def _unfollow_if_done(self, chat: str) -> None:
        scope = self._followed.get(chat)
        if scope is not None and not self._interesting(chat):
            del self._followed[chat]
            scope.cancel()

    def _on_delta(self, chat: str, delta: d.Delta) -> None:
        body = delta.body
        task = self.tasks.get(chat)
        if task is not None and task.state is TaskState.RUNNING and delta.turn == task.turn:
            if isinstance(body, d.Text):
                task.text.append(body.text)
                task.text_size += len(body.text)
                if task.text_size > 2 * limits.RESULT_CHARS:
                    task.text[:] = [limits.clip("".join(task.text))]
                    task.text_size = len(task.text[0])
            elif isinstance(body, d.Usage):
                task.turn_tokens += limits.tokens_of(body)
            elif isinstance(body, d.TurnStarted):
                task.text.clear()
                task.text_size = 0
                task.turn_tokens = 0
            elif isinstance(body, d.TurnEnded):
                self._finish(task, body.stop_reason, body.error)
        if chat in self.children:
            if isinstance(body, d.TurnEnded):
                if body.stop_reason == "cancelled" and self.config.cascade:
                    self._cascade(chat)
                self._notify(chat)
            elif isinstance(body, d.Status) and body.state == "closed":
                self.closed(chat)
        self._unfollow_if_done(chat)

    # ================================================================== state changes

    def _finish(self, task: Task, stop_reason: str | None, error: str | None) -> None:
        task.result = limits.clip("".join(task.text))
        task.text.clear()
        task.text_size = 0
        task.tokens += task.turn_tokens
        task.turn_tokens = 0
        task.stop_reason = stop_reason
        task.error = error
        task.state = limits.outcome(stop_reason, error)
        task.ended = time.time()
        self._cancelling.discard(task.id)
        if self.config.notify == "prompt" and task.parent not in self.max_running:
            task.notified = False
        self.save(task)
        task.settled.set()
        self.publish(task, _EVENTS[task.state])
        self._log.info("task ended", task=task.id, parent=task.parent,
                       state=task.state.value, error=error)
        self.parent_changed(task.parent)

    def closed(self, chat: str) -> None:
        """`chat` was closed: with `cascade`, its unfinished tasks are cancelled and its
        task chats closed too, all the way down (no task outlives its parent's chat)."""
        if chat not in self.children:
            return
        self.parent_changed(chat)
        if self.config.cascade:
            for task in self.children[chat]:
                self._soon(self._close_task_chat, task.id)

    async def _close_task_chat(self, chat: str) -> None:
        try:
            closed = self._pool.get_chat(chat).closed
        except StokerError:
            return
        if not closed:
            await self._pool.close(chat, reason="its parent chat was closed")
        self.closed(chat)

    def parent_changed(self, parent: str) -> None:
        """Something changed under `parent`: cascade if it closed, start what may start,
        bring results back, follow it while that matters."""
        try:
            closed = self._pool.get_chat(parent).closed
        except StokerError:
            closed = True
        if closed:
            if self.config.cascade:
                self._cascade(parent)
            for task in self.children.get(parent, []):
                if not task.notified:
                    task.notified = True
                    self.save(task)
        else:
            for task in limits.to_start(self.children.get(parent, []),
                                        self.max_running.get(parent,
                                                              self.config.max_running)):
                task.state = TaskState.RUNNING
                self._soon(self._launch, task)
            self._notify(parent)
        if self._interesting(parent):
            self.follow_chat(parent, self._hub.head(parent))
        else:
            self._unfollow_if_done(parent)

    async def _launch(self, task: Task) -> None:
        """Send a task's prompt to its chat (the task is already counted as running)."""
        try:
            chat = self._pool.get_chat(task.id)
            task.since = self._hub.head(task.id)
            task.turn = chat.next_turn
            task.started = time.time()
            task.text.clear()
            task.text_size = 0
            self.save(task)
            self.follow_chat(task.id, task.since)
            self.publish(task, "started")
            accepted = await self._pool.prompt(
                chat_id=task.id, content=[TextBlock(text=task.prompt)], agent=task.agent,
                by=BY)
        except StokerError as exc:
            if task.state is TaskState.RUNNING:
                self._finish(task, None, f"the task could not start: {exc.message}")
            return
        if accepted.turn != task.turn:  # another client prompted the chat in between
            task.turn = accepted.turn
            self.save(task)
        if task.id in self._cancelling:
            await self._pool.cancel(task.id, queued=True, by=BY)

    def _cascade(self, parent: str) -> None:
        for task in list(self.children.get(parent, [])):
            if task.unfinished:
                self.cancel(task)

    def cancel(self, task: Task) -> None:
        if task.state is TaskState.QUEUED:
            task.state = TaskState.CANCELLED
            task.stop_reason = "cancelled"
            task.ended = time.time()
            self.save(task)
            task.settled.set()
            self.publish(task, "cancelled")
        elif task.state is TaskState.RUNNING:
            self._cancelling.add(task.id)
            self._soon(self._cancel_running, task.id)
        self._cascade(task.id)

    async def _cancel_running(self, chat: str) -> None:
        try:
            await self._pool.cancel(chat, queued=True, by=BY)
        except StokerError as exc:
            self._log.warning("cannot cancel a task", task=chat, error=exc.message)

    def _notify(self, parent: str) -> None:
        """notify = "prompt": prompt an idle parent with the results it has not seen."""
        if self.config.notify != "prompt":
            return
        pending = [t for t in self.children.get(parent, [])
                   if not t.notified and not t.unfinished]
        if not pending or self._hub.channel(parent) is None:
            return
        if self._hub.snapshot(parent).turn is not None:
            return  # busy: its turn_ended brings us back
        for task in pending:
            task.notified = True
            self.save(task)
        self._soon(self._prompt_parent, parent, limits.report(pending))

    async def _prompt_parent(self, parent: str, text: str) -> None:
        try:
            await self._pool.prompt(chat_id=parent, content=[TextBlock(text=text)],
                                    agent=None, by=BY)
        except StokerError as exc:
            self._log.warning("cannot bring task results back", chat=parent,
                              error=exc.message)

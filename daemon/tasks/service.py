"""The tasks service: creates tasks, starts them under their parent's limit, follows them to
their end, brings the results back, and answers the task requests (`ROUTES`).

A task is a chat of the pool with a parent link kept here. Its life:

    queued --a free slot under the parent's max_running--> running
    running --its turn ends--> done | failed | cancelled | interrupted
    any ended state --task_send--> queued (a follow-up prompt in the same chat)

Every change is written to the `tasks` table and announced by a `task` delta on the
parent's channel. The service follows (in-process, `follow`) the channel of every running
task, to collect its text and see its `turn_ended`, and of every parent with unfinished
tasks or results still to bring back, to see the parent's turns end (cancel cascade,
`notify = "prompt"`) and the parent close. After a restart the follower of a running task
replays its turn from the log: it either finishes then or was ended "interrupted" by the
pool's restore, and the task ends the same way.
"""

from __future__ import annotations

import os
import time
from typing import Any

import trio

from daemon.actors.pool import Pool
from daemon.actors.settings import Settings
from daemon.channels.hub import Hub
from daemon.config.file import Config, TasksConfig
from daemon.errors import (
    BadRequest,
    InvalidState,
    LimitReached,
    NotFound,
    StokerError,
    UnknownAgent,
)
from daemon.log import Log
from daemon.mcp import credentials, offer
from daemon.router import Routes
from daemon.store.sqlite import Store
from daemon.tasks import limits, records
from daemon.tasks.follow import follow
from daemon.tasks.records import Task, TaskState
from daemon.workspaces.service import WorkspaceService
from protocol import deltas as d
from protocol import messages as m
from protocol.errors import ErrorCode
from protocol.messages import TextBlock

BY = "tasks"
"""The `by` of the prompts this service sends (a task's prompt, a parent's report)."""

MAX_WAIT = 3600.0
"""The longest a `task` request waits for a task to end."""

_EVENTS: dict[TaskState, Any] = {
    TaskState.DONE: "finished",
    TaskState.FAILED: "failed",
    TaskState.CANCELLED: "cancelled",
    TaskState.INTERRUPTED: "interrupted",
}


class Unauthorized(StokerError):
    """A forged credential, or one of another chat."""

    code = ErrorCode.UNAUTHORIZED


class TaskService:
    def __init__(self, *, pool: Pool, hub: Hub, store: Store, settings: Settings,
                 workspaces: WorkspaceService, socket: str | None) -> None:
        self._pool = pool
        self._hub = hub
        self._store = store
        self._settings = settings
        self._workspaces = workspaces
        self._log = Log("tasks")
        self._tasks: dict[str, Task] = {}
        self._children: dict[str, list[Task]] = {}
        self._followed: dict[str, trio.CancelScope] = {}
        self._cancelling: set[str] = set()
        """Running tasks whose cancel was asked before their prompt was accepted."""
        self._nursery: trio.Nursery | None = None
        self._socket = socket
        self._max_running: dict[str, int] = {}
        """Parents driven by another service (a workflow run's chat): their own limit of
        running tasks, and no result reports (they have no agent to read them)."""

    async def offer_mcp(self, nursery: trio.Nursery) -> None:
        """Offer Stoker's MCP server to the sessions opened from now on. Its own child of the
        tree, started before the pool restores chats: a session opened for a prompt that
        survived a restart gets the server too (its calls reach the daemon once the
        socket listens)."""
        del nursery
        offer.configure(self._socket)

    async def withdraw_mcp(self) -> None:
        offer.configure(None)

    @property
    def config(self) -> TasksConfig:
        return self._settings.config.tasks

    # ================================================================== lifecycle

    async def start(self, nursery: trio.Nursery) -> None:
        """Load the tasks, resume following the running ones (each replays its turn from
        the log) and the parents, start what may start."""
        await nursery.start(self._run)

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                   ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for task in await records.load(self._store):
                self._add(task)
            for task in list(self._tasks.values()):
                if task.state is TaskState.RUNNING:
                    self._follow(task.id, task.since)
            for parent in list(self._children):
                self._parent_changed(parent)
            self._log.info("loaded", tasks=len(self._tasks),
                           running=sum(t.state is TaskState.RUNNING
                                       for t in self._tasks.values()))
            task_status.started()
            await trio.sleep_forever()

    async def stop(self) -> None:
        """Stop following channels. Running tasks are the pool's to end (it stops after
        this); the next start reads how they ended from the log."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
            self._nursery = None

    def reload(self, config: Config) -> None:
        """After a config reload (the live settings already hold `config`): a raised
        `max_running` starts queued tasks now, not at the next change."""
        del config
        for parent in list(self._children):
            self._parent_changed(parent)

    # ================================================================== bookkeeping

    def _add(self, task: Task) -> None:
        self._tasks[task.id] = task
        self._children.setdefault(task.parent, []).append(task)

    def _save(self, task: Task) -> None:
        records.save(self._store, task)

    def _get(self, task_id: str, caller: str | None) -> Task:
        task = self._tasks.get(task_id)
        if task is None or (caller is not None and task.parent != caller):
            whose = f" of chat {caller!r}" if caller is not None else ""
            raise NotFound(f"no task {task_id!r}{whose}; list_tasks shows the tasks you "
                           "started")
        return task

    def drive(self, parent: str, max_running: int) -> None:
        """`parent` is driven by another service (a workflow run, which collects its tasks'
        results itself): it runs up to `max_running` tasks at once instead of
        `tasks.max_running`, and is never prompted with their results (notify = "prompt")."""
        self._max_running[parent] = max_running

    def depth_of(self, chat: str) -> int:
        task = self._tasks.get(chat)
        return task.depth if task is not None else 0

    def root_of(self, chat: str) -> str:
        """The top-level chat of `chat`'s task tree."""
        task = self._tasks.get(chat)
        while task is not None:
            chat = task.parent
            task = self._tasks.get(chat)
        return chat

    def tree_tokens(self, root: str) -> int:
        """Tokens the tasks below `root` used so far (running turns included)."""
        return sum(t.tokens + t.turn_tokens for t in self._tasks.values()
                   if self.root_of(t.id) == root)

    def _budget_use(self, chat: str) -> int:
        """The tokens used by the task tree `chat` belongs to (0 without a budget: the sum
        is not worth computing then)."""
        if self.config.token_budget is None:
            return 0
        return self.tree_tokens(self.root_of(chat))

    def unfinished(self) -> int:
        return sum(1 for t in self._tasks.values() if t.unfinished)

    def info(self, task: Task) -> m.TaskInfo:
        try:
            chat = self._pool.get_chat(task.id)
            cwd, workspace = chat.cwd, chat.workspace
        except StokerError:
            cwd, workspace = "", None
        return m.TaskInfo(
            task=task.id, parent=task.parent, agent=task.agent, title=task.title,
            origin=task.origin, state=task.state.value, depth=task.depth, cwd=cwd,
            created_at=task.created, workspace=workspace, started_at=task.started,
            ended_at=task.ended, turn=task.turn, result=task.result,
            stop_reason=task.stop_reason, error=task.error,
            tokens=task.tokens + task.turn_tokens)

    def annotate(self, detail: m.ChatDetail) -> m.ChatDetail:
        """`inspect`'s answer with the chat's parent and tasks."""
        task = self._tasks.get(detail.chat.chat)
        detail.parent = task.parent if task is not None else None
        detail.tasks = [t.id for t in self._children.get(detail.chat.chat, [])]
        return detail

    def _publish(self, task: Task, event: Any) -> None:
        if self._hub.channel(task.parent) is None:
            return
        summary = limits.summary(task.result) if event == "finished" else ""
        self._hub.publish(task.parent, 0, d.Task(
            task=task.id, event=event, agent=task.agent, title=task.title,
            state=task.state.value, summary=summary, stop_reason=task.stop_reason,
            error=task.error))

    def _soon(self, fn: Any, *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._guarded, fn, *args)

    async def _guarded(self, fn: Any, *args: Any) -> None:
        """A background step: a bug in it is logged, it never takes the daemon down."""
        try:
            await fn(*args)
        except Exception:
            self._log.exception("task step failed", step=getattr(fn, "__name__", "?"))

    # ================================================================== following

    def _interesting(self, chat: str) -> bool:
        task = self._tasks.get(chat)
        if task is not None and task.state is TaskState.RUNNING:
            return True
        return any(t.unfinished or not t.notified for t in self._children.get(chat, []))

    def _follow(self, chat: str, cursor: int) -> None:
        if chat in self._followed or self._nursery is None or self._hub.channel(chat) is None:
            return
        scope = trio.CancelScope()
        self._followed[chat] = scope
        self._nursery.start_soon(self._follower, chat, cursor, scope)

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
        task = self._tasks.get(chat)
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
        if chat in self._children:
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
        if self.config.notify == "prompt" and task.parent not in self._max_running:
            task.notified = False
        self._save(task)
        task.settled.set()
        self._publish(task, _EVENTS[task.state])
        self._log.info("task ended", task=task.id, parent=task.parent,
                       state=task.state.value, error=error)
        self._parent_changed(task.parent)

    def closed(self, chat: str) -> None:
        """`chat` was closed: with `cascade`, its unfinished tasks are cancelled and its
        task chats closed too, all the way down (no task outlives its parent's chat)."""
        if chat not in self._children:
            return
        self._parent_changed(chat)
        if self.config.cascade:
            for task in self._children[chat]:
                self._soon(self._close_task_chat, task.id)

    async def _close_task_chat(self, chat: str) -> None:
        try:
            closed = self._pool.get_chat(chat).closed
        except StokerError:
            return
        if not closed:
            await self._pool.close(chat, reason="its parent chat was closed")
        self.closed(chat)

    def _parent_changed(self, parent: str) -> None:
        """Something changed under `parent`: cascade if it closed, start what may start,
        bring results back, follow it while that matters."""
        try:
            closed = self._pool.get_chat(parent).closed
        except StokerError:
            closed = True
        if closed:
            if self.config.cascade:
                self._cascade(parent)
            for task in self._children.get(parent, []):
                if not task.notified:
                    task.notified = True
                    self._save(task)
        else:
            for task in limits.to_start(self._children.get(parent, []),
                                        self._max_running.get(parent,
                                                              self.config.max_running)):
                task.state = TaskState.RUNNING
                self._soon(self._launch, task)
            self._notify(parent)
        if self._interesting(parent):
            self._follow(parent, self._hub.head(parent))
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
            self._save(task)
            self._follow(task.id, task.since)
            self._publish(task, "started")
            accepted = await self._pool.prompt(
                chat_id=task.id, content=[TextBlock(text=task.prompt)], agent=task.agent,
                by=BY)
        except StokerError as exc:
            if task.state is TaskState.RUNNING:
                self._finish(task, None, f"the task could not start: {exc.message}")
            return
        if accepted.turn != task.turn:  # another client prompted the chat in between
            task.turn = accepted.turn
            self._save(task)
        if task.id in self._cancelling:
            await self._pool.cancel(task.id, queued=True, by=BY)

    def _cascade(self, parent: str) -> None:
        for task in list(self._children.get(parent, [])):
            if task.unfinished:
                self._cancel(task)

    def _cancel(self, task: Task) -> None:
        if task.state is TaskState.QUEUED:
            task.state = TaskState.CANCELLED
            task.stop_reason = "cancelled"
            task.ended = time.time()
            self._save(task)
            task.settled.set()
            self._publish(task, "cancelled")
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
        pending = [t for t in self._children.get(parent, [])
                   if not t.notified and not t.unfinished]
        if not pending or self._hub.channel(parent) is None:
            return
        if self._hub.snapshot(parent).turn is not None:
            return  # busy: its turn_ended brings us back
        for task in pending:
            task.notified = True
            self._save(task)
        self._soon(self._prompt_parent, parent, limits.report(pending))

    async def _prompt_parent(self, parent: str, text: str) -> None:
        try:
            await self._pool.prompt(chat_id=parent, content=[TextBlock(text=text)],
                                    agent=None, by=BY)
        except StokerError as exc:
            self._log.warning("cannot bring task results back", chat=parent,
                              error=exc.message)

    # ================================================================== requests

    def _caller(self, req: Any) -> str | None:
        """The chat a request acts for (None: a client, which may act on any chat)."""
        if req.caller is None and req.credential is None:
            return None
        if req.caller is None or req.credential is None:
            raise Unauthorized("give both caller and credential, or neither")
        if not credentials.valid(req.caller, req.credential):
            raise Unauthorized(f"the credential does not belong to chat {req.caller!r}: "
                               "this MCP server may only act for the chat it was "
                               "started for")
        return str(req.caller)

    async def new(self, req: m.TaskNew) -> m.TaskInfo:
        caller = self._caller(req)
        if caller is not None and req.parent != caller:
            raise Unauthorized(f"chat {caller!r} may only start its own tasks")
        parent = self._pool.get_chat(req.parent)
        if parent.closed:
            raise InvalidState(f"chat {req.parent!r} is closed")
        prompt = req.prompt.strip()
        if not prompt:
            raise BadRequest("empty prompt: say what the task should do")
        agent = req.agent or parent.agent
        depth = self.depth_of(parent.id) + 1
        why = limits.refusal(self.config, depth=depth, agent=agent,
                             known_agents=self._settings.agents, unfinished=self.unfinished(),
                             tree_tokens=self._budget_use(parent.id))
        if why is not None:
            if agent not in self._settings.agents:
                raise UnknownAgent(agent, list(self._settings.agents))
            raise LimitReached(why)
        title = (req.title or " ".join(prompt.split())[:60]).strip()
        chat = await self._open_chat(req, parent, agent, title)
        task = Task(id=chat.chat, parent=parent.id, agent=agent, title=title,
                    origin="agent" if caller is not None else req.origin, depth=depth,
                    state=TaskState.QUEUED, prompt=prompt, created=time.time())
        self._add(task)
        self._save(task)
        self._publish(task, "spawned")
        self._log.info("task created", task=task.id, parent=task.parent, agent=agent,
                       depth=depth)
        self._parent_changed(parent.id)
        await self._store.flush()
        return self.info(task)

    async def _open_chat(self, req: m.TaskNew, parent: Any, agent: str, title: str
                         ) -> m.ChatInfo:
        where = req.workspace or "parent"
        if where == "worktree":
            return await self._workspaces.open_chat(m.OpenChat(
                id=0, agent=agent, project=parent.cwd, policy=parent.policy, title=title,
                computer=parent.computer), BY)
        if where == "parent":
            cwd = parent.cwd
        else:
            if not os.path.isabs(where):
                raise BadRequest(f"workspace must be 'parent', 'worktree' or an absolute "
                                 f"directory, not {where!r}")
            cwd = os.path.realpath(where)
            if not limits.inside(cwd, parent.cwd):
                raise BadRequest(f"workspace {where} is outside the parent's directory "
                                 f"{parent.cwd}; a task works inside it")
            if not os.path.isdir(cwd):
                raise BadRequest(f"workspace {where} is not a directory")
        return await self._pool.open_chat(chat_id=None, agent=agent, cwd=cwd,
                                          policy=parent.policy, title=title,
                                          computer=parent.computer)

    def list(self, req: m.ListTasks) -> m.TaskList:
        caller = self._caller(req)
        parent = req.parent if req.parent is not None else caller
        if caller is not None and parent != caller and not self._below(parent, caller):
            raise Unauthorized(f"chat {caller!r} may only list its own tasks")
        if parent is None:
            tasks = list(self._tasks.values())
        else:
            tasks = []
            level = list(self._children.get(parent, []))
            while level:
                tasks.extend(level)
                level = [c for t in level for c in self._children.get(t.id, [])
                         ] if req.recursive else []
        tasks.sort(key=lambda t: t.created)
        return m.TaskList(tasks=[self.info(t) for t in tasks],
                          agents=limits.allowed(self.config, self._settings.agents))

    def _below(self, chat: str | None, ancestor: str) -> bool:
        task = self._tasks.get(chat) if chat is not None else None
        while task is not None:
            if task.parent == ancestor:
                return True
            task = self._tasks.get(task.parent)
        return False

    async def get(self, req: m.GetTask) -> m.TaskInfo:
        caller = self._caller(req)
        task = self._get(req.task, caller)
        self._log.debug("task asked", task=task.id, wait=req.wait, state=task.state.value)
        if req.wait > 0 and task.unfinished:
            with trio.move_on_after(min(req.wait, MAX_WAIT)):
                await task.settled.wait()
        if caller is not None and not task.unfinished and not task.notified:
            task.notified = True  # the parent has the result: no report prompt for it
            self._save(task)
        info = self.info(task)
        if info.workspace is not None and not task.unfinished:
            try:
                diff = await self._workspaces.diff(m.WorkspaceDiff(
                    id=0, workspace=info.workspace, patch=False))
                info.files_changed = [f.path for f in diff.files]
            except StokerError as exc:
                self._log.warning("no diff for a task", task=task.id, error=exc.message)
        return info

    async def send(self, req: m.TaskSend) -> m.TaskInfo:
        caller = self._caller(req)
        task = self._get(req.task, caller)
        if task.unfinished:
            raise InvalidState(f"task {task.id!r} is still {task.state.value}; wait for "
                               "its result (task_result) before sending it more")
        if self._pool.get_chat(task.parent).closed:
            raise InvalidState(f"the parent chat {task.parent!r} is closed")
        prompt = req.prompt.strip()
        if not prompt:
            raise BadRequest("empty prompt")
        over = limits.over_budget(self.config, self._budget_use(task.id))
        if over is not None:
            raise LimitReached(over)
        if self.unfinished() >= self.config.max_tasks:
            raise LimitReached(f"too many unfinished tasks in the daemon (tasks.max_tasks = "
                               f"{self.config.max_tasks}); wait and try again")
        task.prompt = prompt
        task.state = TaskState.QUEUED
        task.result = ""
        task.stop_reason = task.error = None
        task.ended = None
        task.notified = True
        task.settled = trio.Event()
        self._save(task)
        self._publish(task, "spawned")
        self._parent_changed(task.parent)
        await self._store.flush()
        return self.info(task)

    async def cancel(self, req: m.TaskCancel) -> m.TaskInfo:
        caller = self._caller(req)
        task = self._get(req.task, caller)
        self._cancel(task)
        await self._store.flush()
        return self.info(task)


ROUTES: Routes[TaskService] = Routes("tasks")


@ROUTES.handles(m.TaskNew, slow=True)
async def task_new(tasks: TaskService, req: m.TaskNew, client: str) -> m.TaskInfo:
    return await tasks.new(req)


@ROUTES.handles(m.ListTasks)
async def list_tasks(tasks: TaskService, req: m.ListTasks, client: str) -> m.TaskList:
    return tasks.list(req)


@ROUTES.handles(m.GetTask, slow=True)
async def get_task(tasks: TaskService, req: m.GetTask, client: str) -> m.TaskInfo:
    return await tasks.get(req)


@ROUTES.handles(m.TaskSend, slow=True)
async def task_send(tasks: TaskService, req: m.TaskSend, client: str) -> m.TaskInfo:
    return await tasks.send(req)


@ROUTES.handles(m.TaskCancel, slow=True)
async def task_cancel(tasks: TaskService, req: m.TaskCancel, client: str) -> m.TaskInfo:
    return await tasks.cancel(req)

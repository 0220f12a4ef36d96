"""The tasks service: creates tasks, loads them at start-up, answers the task requests
(`ROUTES`) and the questions other parts ask about tasks (depth, tree, tokens). What moves a
task (starting, following, finishing, cancelling, reporting) is the runner's (runner.py).
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
from daemon.mcp import credentials, offer, presence
from daemon.router import Routes
from daemon.store.sqlite import Store
from daemon.tasks import limits, records
from daemon.tasks.records import Task, TaskState
from daemon.tasks.runner import BY, Runner
from daemon.workspaces.service import WorkspaceService
from protocol import messages as m
from protocol.errors import ErrorCode

MAX_WAIT = 3600.0
"""The longest a `task` request waits for a task to end."""


class Unauthorized(StokerError):
    """A forged credential, or one of another chat."""

    code = ErrorCode.UNAUTHORIZED


class TaskService:
    """The tasks child of the tree: the tasks' lifecycle and the task requests."""

    def __init__(self, *, pool: Pool, hub: Hub, store: Store, settings: Settings,
                 workspaces: WorkspaceService, socket: str | None) -> None:
        self._pool = pool
        self._store = store
        self._settings = settings
        self._workspaces = workspaces
        self._log = Log("tasks")
        self._socket = socket
        self._runner = Runner(pool=pool, hub=hub, store=store, settings=settings,
                              log=self._log)
        self._tasks = self._runner.tasks
        self._children = self._runner.children
        """The runner's own dicts (never rebound), read here."""

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
            self._runner.nursery = nursery
            for task in await records.load(self._store):
                self._runner.add(task)
            for task in list(self._tasks.values()):
                if task.state is TaskState.RUNNING:
                    self._runner.follow_chat(task.id, task.since)
            for parent in list(self._children):
                self._runner.parent_changed(parent)
            self._log.info("loaded", tasks=len(self._tasks),
                           running=sum(t.state is TaskState.RUNNING
                                       for t in self._tasks.values()))
            task_status.started()
            await trio.sleep_forever()

    async def stop(self) -> None:
        """Stop following channels. Running tasks are the pool's to end (it stops after
        this); the next start reads how they ended from the log."""
        if self._runner.nursery is not None:
            self._runner.nursery.cancel_scope.cancel()
            self._runner.nursery = None

    def reload(self, config: Config) -> None:
        """After a config reload (the live settings already hold `config`): a raised
        `max_running` starts queued tasks now, not at the next change."""
        del config
        for parent in list(self._children):
            self._runner.parent_changed(parent)

    # ================================================================== bookkeeping

    def _get(self, task_id: str, caller: str | None) -> Task:
        task = self._tasks.get(task_id)
        if task is None or (caller is not None and task.parent != caller):
            if caller is not None:  # an agent, through Stoker's MCP server
                raise NotFound(f"no task {task_id!r} of chat {caller!r}; list_tasks shows "
                               "the tasks you started")
            raise NotFound(f"no task {task_id!r}; `stoker tasks CHAT` lists a chat's tasks")
        return task

    def drive(self, parent: str, max_running: int) -> None:
        """`parent` is driven by another service (a workflow run, which collects its tasks'
        results itself): it runs up to `max_running` tasks at once instead of
        `tasks.max_running`, and is never prompted with their results (notify = "prompt")."""
        self._runner.max_running[parent] = max_running

    def closed(self, chat: str) -> None:
        """`chat` was closed (the runner cascades to its tasks)."""
        self._runner.closed(chat)

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
        self._runner.add(task)
        self._runner.save(task)
        self._runner.publish(task, "spawned")
        self._log.info("task created", task=task.id, parent=task.parent, agent=agent,
                       depth=depth)
        self._runner.parent_changed(parent.id)
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
            self._runner.save(task)
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
        self._runner.save(task)
        self._runner.publish(task, "spawned")
        self._runner.parent_changed(task.parent)
        await self._store.flush()
        return self.info(task)

    async def cancel(self, req: m.TaskCancel) -> m.TaskInfo:
        caller = self._caller(req)
        task = self._get(req.task, caller)
        self._runner.cancel(task)
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


@ROUTES.handles(m.McpUp)
async def mcp_up(tasks: TaskService, req: m.McpUp, client: str) -> m.Ok:
    """`stoker mcp` says the agent got past its MCP handshake (daemon/mcp/presence.py)."""
    if not credentials.valid(req.chat, req.credential):
        raise Unauthorized(f"the credential does not belong to chat {req.chat!r}")
    presence.up(req.chat, req.agent)
    return m.Ok()

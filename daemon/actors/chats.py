"""The pool's book of chats: lookup, creation (with its directory checked where the agent
will run), the durable row, and the `ChatInfo` clients see.

A chat outlives its actors: it is created here, its row stays when its agents hibernate,
and `closed` is a flag on it (a reopened chat keeps its history).
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from daemon.actors import records
from daemon.actors.lifecycle import State
from daemon.actors.records import Chat
from daemon.actors.ref import ActorSnapshot
from daemon.actors.settings import Settings
from daemon.channels.hub import Hub, new_epoch
from daemon.errors import BadRequest, UnknownAgent, UnknownChat
from daemon.execution.fs import AccessDenied, FileProblem
from daemon.execution.local import Executor, SpawnError
from daemon.store.sqlite import Store
from protocol.messages import ChatInfo, ChatSummary

CHAT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def new_chat_id() -> str:
    return secrets.token_hex(5)


def check_chat_id(chat_id: str) -> None:
    if not CHAT_ID.match(chat_id):
        raise BadRequest(f"invalid chat id {chat_id!r}: use 1-64 letters, digits, '.', "
                         "'_', '-', starting with a letter or digit")


def summary(chat: Chat, actor: ActorSnapshot | None, rss: int | None) -> ChatSummary:
    """A chat's line in `list_chats`, with its current agent's actor if it has one."""
    return ChatSummary(
        chat=chat.id, agent=chat.agent,
        state=actor.state.value if actor else (
            "closed" if chat.closed else State.HIBERNATED.value),
        cwd=chat.cwd, pid=actor.pid if actor else None,
        generation=actor.generation if actor else 0, rss=rss,
        idle=actor.idle if actor else None,
        turns=actor.turns if actor else 0, queued=actor.queued if actor else 0,
        title=chat.title or (actor.title if actor else None),
        workspace=chat.workspace, updated_at=chat.updated, closed=chat.closed,
        process=actor.process if actor else None)


class ChatBook:
    """Every chat the daemon knows, open or closed, by id."""

    def __init__(self, *, store: Store, hub: Hub, settings: Settings,
                 executors: Callable[[str | None], Executor]) -> None:
        self._store = store
        self._hub = hub
        self._settings = settings
        self._executors = executors
        self.chats: dict[str, Chat] = {}

    def get(self, chat_id: str) -> Chat:
        chat = self.chats.get(chat_id)
        if chat is None:
            raise UnknownChat(chat_id)
        return chat

    def find(self, chat_id: str | None) -> Chat | None:
        return self.chats.get(chat_id) if chat_id else None

    def select(self, include_closed: bool = False, cwd: str | None = None) -> Iterable[Chat]:
        real_cwd = None if cwd is None else os.path.realpath(cwd)
        for chat in self.chats.values():
            if chat.closed and not include_closed:
                continue
            if real_cwd is not None and chat.cwd != real_cwd:
                continue
            yield chat

    @property
    def open_count(self) -> int:
        return sum(1 for c in self.chats.values() if not c.closed)

    def info(self, chat: Chat, created: bool = False) -> ChatInfo:
        return ChatInfo(
            chat=chat.id, agent=chat.agent, cwd=chat.cwd, epoch=chat.epoch,
            head_seq=self._hub.head(chat.id), created=created, workspace=chat.workspace,
            computer=chat.computer,
            policy=chat.policy or self._settings.config.permissions.policy,
            title=chat.title, closed=chat.closed)

    def check_agent(self, agent: str) -> None:
        if agent not in self._settings.agents:
            raise UnknownAgent(agent, list(self._settings.agents))

    def persist(self, chat: Chat) -> None:
        chat.updated = time.time()
        records.save_chat(self._store, chat, self._hub.head(chat.id))

    async def create(self, *, chat_id: str | None, agent: str | None, cwd: str | None,
                     policy: str | None, title: str | None, workspace: str | None,
                     computer: str | None, mcp: list[dict[str, Any]] | None) -> Chat:
        """A new chat, its channel opened and its row written (not yet flushed)."""
        agent = agent or self._settings.config.daemon.default_agent
        self.check_agent(agent)
        spec = self._settings.agents.get(agent)
        where = computer or (spec.computer if spec else None)
        if where is not None:
            real = await self._remote_directory(where, cwd)
        else:
            directory = cwd or os.path.expanduser("~")
            if not os.path.isabs(directory):
                raise BadRequest(f"cwd must be an absolute path, not {directory!r}")
            if not os.path.isdir(directory):
                raise BadRequest(f"cwd {directory} is not a directory")
            real = os.path.realpath(directory)
        now = time.time()
        chat = Chat(id=chat_id or self._fresh_id(), agent=agent, cwd=real, epoch=new_epoch(),
                    created=now, updated=now, workspace=workspace, computer=computer,
                    policy=policy, title=title, mcp=mcp or [])
        self.chats[chat.id] = chat
        self._hub.open_channel(chat.id, chat.epoch)
        self.persist(chat)
        return chat

    async def _remote_directory(self, computer: str, cwd: str | None) -> str:
        """The real path of a new chat's cwd on `computer` (its login directory when None),
        checked there: this machine's file system says nothing about another's."""
        if cwd is not None and not (os.path.isabs(cwd) or cwd.startswith("~")):
            raise BadRequest(f"cwd must be an absolute path, not {cwd!r}")
        executor = self._executors(computer)
        try:
            return await executor.files(cwd or "~").directory(None)
        except (AccessDenied, FileProblem, SpawnError) as exc:
            raise BadRequest(f"cwd {cwd or '~'} on computer {computer!r}: {exc}") from None

    def _fresh_id(self) -> str:
        while True:
            chat_id = new_chat_id()
            if chat_id not in self.chats:
                return chat_id

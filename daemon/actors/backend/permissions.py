"""Permission requests from the agent (`session/request_permission`), forwarded to the
chat's clients or answered by the chat's policy, with a timeout.

Every request ends exactly once, with a `permission_resolved` delta: chosen by a client,
picked by the policy or the timeout, or cancelled because its turn or its agent ended. An
answered request is remembered (a bounded window) so a late second answer is told it came
too late instead of "not found".
"""

from __future__ import annotations

import collections
import enum
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import trio

from daemon.acp import types as acp
from daemon.actors import mailbox as mb
from daemon.actors.lifecycle import pick_option
from daemon.actors.settings import Settings
from daemon.errors import AlreadyAnswered, BadRequest, NotFound
from protocol import deltas as d

ANSWERED_MEMORY = 256
"""How many answered request ids are remembered for `AlreadyAnswered`."""


class Outcome(enum.Enum):
    """How a permission request ended (ACP's `RequestPermissionOutcome`)."""

    SELECTED = "selected"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class Pending:
    """One request waiting for its answer."""

    request: str
    job: mb.PromptJob | None
    options: list[tuple[str, str]]
    event: trio.Event
    outcome: Outcome = Outcome.CANCELLED
    option: str | None = None
    by: str = ""


class Host(Protocol):
    """What permissions need of their actor (its `Core`)."""

    agent: str
    policy: str
    current: mb.PromptJob | None
    settings: Settings

    def publish(self, body: d.DeltaBody, turn: int = 0) -> int: ...

    def touch(self) -> None: ...


class Permissions:
    """The actor's open and recently answered permission requests."""

    def __init__(self, core: Host) -> None:
        self._core = core
        self._pending: dict[str, Pending] = {}
        self._answered: collections.OrderedDict[str, str] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def ids(self) -> list[str]:
        return list(self._pending)

    def knows(self, request: str) -> bool:
        return request in self._pending or request in self._answered

    def resolve(self, pending: Pending, option: str | None, *, by: str,
                outcome: Outcome = Outcome.SELECTED) -> None:
        if pending.event.is_set():
            return
        pending.outcome = outcome
        pending.option = option
        pending.by = by
        pending.event.set()
        self._pending.pop(pending.request, None)
        self._answered[pending.request] = by
        while len(self._answered) > ANSWERED_MEMORY:
            self._answered.popitem(last=False)
        turn = pending.job.turn if pending.job else 0
        self._core.publish(d.PermissionResolved(
            request=pending.request, outcome=outcome.value, option=option, by=by), turn=turn)
        self._core.touch()

    def resolve_turn(self, job: mb.PromptJob, by: str) -> None:
        """Cancel the requests of a turn that ended or is being cancelled."""
        for pending in list(self._pending.values()):
            if pending.job is job:
                self.resolve(pending, None, by=by, outcome=Outcome.CANCELLED)

    def cancel_all(self, by: str) -> None:
        """Cancel every open request: the agent that asked is gone."""
        for pending in list(self._pending.values()):
            self.resolve(pending, None, by=by, outcome=Outcome.CANCELLED)

    def permit(self, message: mb.Permit) -> None:
        """A client's answer (`option` None: cancel the request)."""
        pending = self._pending.get(message.request)
        if pending is None:
            if message.request in self._answered:
                message.reply.fail(AlreadyAnswered(
                    f"permission request {message.request} was already answered "
                    f"(by {self._answered[message.request]})"))
            else:
                message.reply.fail(NotFound(
                    f"no pending permission request {message.request!r} for agent "
                    f"{self._core.agent!r}"))
            return
        if message.option is None:
            self.resolve(pending, None, by=message.by, outcome=Outcome.CANCELLED)
        else:
            ids = [option_id for option_id, _ in pending.options]
            if message.option not in ids:
                message.reply.fail(BadRequest(
                    f"unknown option {message.option!r}; choose one of: {', '.join(ids)}"))
                return
            self.resolve(pending, message.option, by=message.by)
        message.reply.set(None)

    async def request(self, params: msgspec.Raw | None) -> Any:
        """Serve `session/request_permission`: the agent's answer once decided."""
        core = self._core
        req = msgspec.json.decode(params or b"{}", type=acp.RequestPermission)
        job = core.current
        options = [(o.option_id, o.kind) for o in req.options]
        raw_options = [msgspec.to_builtins(o) for o in req.options]
        request_id = f"p{secrets.token_hex(3)}"
        while self.knows(request_id):
            request_id = f"p{secrets.token_hex(3)}"
        turn = job.turn if job else 0
        pending = Pending(request_id, job, options, trio.Event())
        if job is not None and job.cancel_requested:
            return {"outcome": {"outcome": "cancelled"}}
        timeout = float(core.settings.config.permissions.timeout)
        policy = core.policy
        self._pending[request_id] = pending
        core.touch()
        core.publish(d.PermissionRequest(
            request=request_id, agent=core.agent, tool_call=req.tool_call, options=raw_options,
            policy=policy if policy in ("allow", "deny") else "ask",  # type: ignore[arg-type]
            expires_at=None if policy != "ask" else time.time() + timeout), turn=turn)
        try:
            if policy in ("allow", "deny"):
                choice = pick_option(options, policy)
                self.resolve(pending, choice, by=f"policy:{policy}",
                             outcome=Outcome.SELECTED if choice else Outcome.CANCELLED)
            else:
                with trio.move_on_after(timeout):
                    await pending.event.wait()
                if not pending.event.is_set():
                    choice = pick_option(options, "deny")
                    self.resolve(pending, choice, by="timeout",
                                 outcome=Outcome.SELECTED if choice else Outcome.CANCELLED)
        finally:
            if not pending.event.is_set():
                self.resolve(pending, None, by="agent stopped", outcome=Outcome.CANCELLED)
        if pending.outcome is Outcome.SELECTED and pending.option is not None:
            return {"outcome": {"outcome": "selected", "optionId": pending.option}}
        return {"outcome": {"outcome": "cancelled"}}

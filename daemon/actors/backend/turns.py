"""Running one turn (`session/prompt` to its stop reason), telling a slow agent from a hung
one while it runs, cancelling it, and counting its token usage.

Every turn ends exactly once, through `Core.end_turn`; a turn still open when its generation
ends is ended by the actor with the generation's reason.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
import trio

from daemon.acp import types as acp
from daemon.acp.rpc import (
    AUTH_REQUIRED,
    ConnectionLost,
    JsonRpcConnection,
    RpcError,
    SentRequest,
)
from daemon.acp.updates import usage_body
from daemon.actors import mailbox as mb
from daemon.actors import records
from daemon.actors.backend.core import Core, wall
from daemon.actors.backend.generation import Ending, EndKind, Generation
from daemon.actors.backend.session import Session, add_tokens
from daemon.actors.lifecycle import (
    Liveness,
    State,
    liveness,
    next_liveness_check,
    transient_match,
    turn_retry,
    unanswered_probe,
)
from daemon.errors import AuthRequired
from protocol import deltas as d
from protocol.messages import AudioBlock, ContentBlock, ImageBlock, ResourceBlock

CANCEL_GRACE_MIN = 5.0
"""An agent gets at least this long to honour `session/cancel` before it counts as broken."""
_STOP_REASONS = frozenset({"end_turn", "max_tokens", "max_turn_requests", "refusal", "cancelled"})


def summarize(content: list[ContentBlock]) -> str:
    """A prompt as one line of text, for deltas and listings."""
    parts: list[str] = []
    for block in content:
        if isinstance(block, ImageBlock):
            parts.append(f"[image {block.mime_type}]")
        elif isinstance(block, AudioBlock):
            parts.append(f"[audio {block.mime_type}]")
        elif isinstance(block, ResourceBlock):
            parts.append(f"[file {block.resource.get('uri', '?')}]")
        elif hasattr(block, "uri"):
            parts.append(f"[link {block.uri}]")
        else:
            parts.append(block.text)
    return " ".join(parts)


def content_problem(content: list[ContentBlock], caps: acp.PromptCapabilities,
                    agent: str) -> str | None:
    """Why `content` cannot be sent to an agent with these prompt capabilities."""
    for block in content:
        if isinstance(block, ImageBlock) and not caps.image:
            return f"agent {agent!r} does not accept images (promptCapabilities.image is false)"
        if isinstance(block, AudioBlock) and not caps.audio:
            return f"agent {agent!r} does not accept audio (promptCapabilities.audio is false)"
        if isinstance(block, ResourceBlock) and not caps.embedded_context:
            return (f"agent {agent!r} does not accept embedded files "
                    "(promptCapabilities.embeddedContext is false); send a link instead")
    return None


class TurnTimeout:
    """One turn's `lifecycle.turn_timeout`: the limit (None: off) and, once it struck, the
    error the turn ends with."""

    __slots__ = ("limit", "reason")

    def __init__(self, limit: float | None) -> None:
        self.limit = float(limit) if limit else None
        self.reason: str | None = None


def _error_text(exc: RpcError) -> str:
    """An agent's error as the transient patterns see it: `CODE MESSAGE DATA-JSON`."""
    text = f"{exc.code} {exc.message}"
    if exc.data is not None:
        with contextlib.suppress(TypeError, msgspec.EncodeError):
            text += " " + msgspec.json.encode(exc.data).decode()
    return text


def _stop_reason(value: str) -> d.TurnStop | None:
    return value if value in _STOP_REASONS else None  # type: ignore[return-value]


class Turns:
    """Runs one actor's turns on the current generation."""

    def __init__(self, core: Core, session: Session) -> None:
        self._core = core
        self._session = session
        self._wake: trio.Event | None = None
        """Set by a cancel while the running turn waits to retry a transient failure."""
        self._sent: tuple[mb.PromptJob, SentRequest] | None = None
        """The current turn's `session/prompt`, written by `take_next` (`run` waits for
        its answer)."""

    def take_next(self, rpc: JsonRpcConnection) -> mb.PromptJob | None:
        """The next queued turn that can run, made current (state busy); turns the agent
        cannot take (content it does not accept) end on the way.

        Its `session/prompt` goes into the agent's pipe first, when the pipe takes it
        without waiting (`start_request`): the agent starts on the turn while the daemon
        records it, rather than after (issue 22). Nothing the agent answers is read before
        this returns, so the chat still sees the state turn busy before any output."""
        core = self._core
        while core.queue:
            job = core.queue.popleft()
            if job.ended:
                continue
            caps = core.prompt_capabilities or acp.PromptCapabilities()
            problem = content_problem(job.content, caps, core.agent)
            if problem is not None:
                core.end_turn(job, error=problem)
                continue
            core.current = job
            job.started = True
            job.started_at = wall()
            if not job.cancel_requested:
                sent = rpc.start_request("session/prompt", self._prompt_params(job))
                self._sent = (job, sent) if sent is not None else None
            records.mark_prompt_running(core.store, core.chat, job.turn)
            core.set_state(State.BUSY, f"turn {job.turn}")
            return job
        return None

    async def run(self, gen: Generation, rpc: JsonRpcConnection, job: mb.PromptJob) -> None:
        """Run `job` to its end. `take_next` has made it current and the state busy."""
        try:
            await self._run(gen, rpc, job, job.answered)
        finally:
            job.answered.set()

    async def _run(self, gen: Generation, rpc: JsonRpcConnection, job: mb.PromptJob,
                   done: trio.Event) -> None:
        core = self._core
        sent, self._sent = self._sent, None
        first = sent[1] if sent is not None and sent[0] is job else None
        if job.cancel_requested and first is None:
            core.end_turn(job, stop_reason="cancelled")
            return
        lost = False
        timeout = TurnTimeout(core.settings.config.lifecycle.turn_timeout)
        async with trio.open_nursery() as turn_nursery:
            turn_nursery.start_soon(self._probe_loop, gen, rpc, job, done)
            if timeout.limit is not None:
                turn_nursery.start_soon(self._time_out, gen, rpc, job, timeout)
            try:
                raw = await self._prompt(rpc, job, first, timeout)
                if raw is None:
                    # Cancelled (by a client or the turn timeout) while waiting to retry.
                    core.end_turn(job, stop_reason="cancelled", error=timeout.reason)
                    return
                result = msgspec.json.decode(raw, type=acp.PromptResult)
                self._account(result, job)
                stop = _stop_reason(result.stop_reason)
                if timeout.reason is not None:
                    # The agent's answer to our cancel: the turn ends for the timeout.
                    core.end_turn(job, error=timeout.reason)
                else:
                    core.end_turn(job, stop_reason=stop, error=None if stop
                                  else f"agent stopped: {result.stop_reason}")
            except RpcError as exc:
                message = exc.message
                if exc.code == AUTH_REQUIRED:
                    try:
                        self._session.raise_if_auth(exc)
                    except AuthRequired as auth:
                        message = auth.message
                core.end_turn(job, error=timeout.reason or f"agent error {exc.code}: {message}")
            except msgspec.ValidationError as exc:
                core.end_turn(job, error=f"agent sent an invalid prompt response: {exc}")
            except ConnectionLost:
                lost = True
            finally:
                done.set()
                turn_nursery.cancel_scope.cancel()
        if lost:
            await gen.await_watcher()

    def _prompt_params(self, job: mb.PromptJob) -> dict[str, Any]:
        return {"sessionId": self._core.session_id,
                "prompt": [msgspec.to_builtins(b) for b in job.content]}

    async def _prompt(self, rpc: JsonRpcConnection, job: mb.PromptJob,
                      first: SentRequest | None, timeout: TurnTimeout) -> msgspec.Raw | None:
        """`session/prompt` (`first`: already written by `take_next`), sent again after an
        error the agent marked transient while nothing of the turn was published
        (`lifecycle.turn_retry` decides), each retry told to the chat in a `notice`. None:
        the turn was cancelled while waiting to retry."""
        core = self._core
        lc = core.settings.config.lifecycle
        retries = 0
        while True:
            try:
                if first is not None:
                    sent, first = first, None
                    return await sent.answer()
                return await rpc.request("session/prompt", self._prompt_params(job))
            except RpcError as exc:
                text = _error_text(exc)
                pattern = transient_match(text, lc.transient_regexes())
                retry = turn_retry(
                    transient=pattern is not None, output_published=core.output_turn == job.turn,
                    cancelled=job.cancel_requested or timeout.reason is not None,
                    retries_done=retries, max_retries=lc.transient_retries,
                    backoff=float(lc.transient_backoff),
                    backoff_max=float(lc.transient_backoff_max))
                if retry is None:
                    raise
                retries = retry.attempt
                core.log.warning("transient agent error; retrying the turn", turn=job.turn,
                                 error=text[:300], pattern=pattern, attempt=retry.attempt,
                                 delay=retry.delay)
                core.publish(d.Notice(
                    level="warning",
                    message=(f"agent error {exc.code}: {exc.message} (transient); retrying "
                             f"in {retry.delay:g}s (retry {retry.attempt} of "
                             f"{lc.transient_retries})")), turn=job.turn)
                self._wake = trio.Event()
                with trio.move_on_after(retry.delay):
                    await self._wake.wait()
                self._wake = None
                if job.cancel_requested or timeout.reason is not None:
                    return None

    def _wake_retry(self) -> None:
        """A cancel: a turn waiting to retry stops waiting (and ends cancelled)."""
        if self._wake is not None:
            self._wake.set()

    async def _time_out(self, gen: Generation, rpc: JsonRpcConnection, job: mb.PromptJob,
                        timeout: TurnTimeout) -> None:
        """`lifecycle.turn_timeout`: a turn still running after it is cancelled (as a
        client's cancel is) and ends with an error naming the timeout."""
        assert timeout.limit is not None
        await trio.sleep(timeout.limit)
        if job.ended or job.cancel_requested:
            return  # a client's cancel is already under way
        timeout.reason = (f"turn timed out: still running after {timeout.limit:g}s "
                          "(lifecycle.turn_timeout); cancelled")
        self._core.log.warning("turn timed out; cancelling", turn=job.turn,
                               limit=timeout.limit)
        job.cancel_requested = True
        self._wake_retry()
        await self.cancel(gen, rpc, job, "turn timeout", error=timeout.reason)

    def _account(self, result: acp.PromptResult, job: mb.PromptJob) -> None:
        usage = result.usage
        if usage is None or job.streamed_usage:
            return
        add_tokens(self._core, usage_body(usage))
        self._core.publish(usage_body(usage), turn=job.turn)

    async def _probe_loop(self, gen: Generation, rpc: JsonRpcConnection, job: mb.PromptJob,
                          done: trio.Event) -> None:
        """While the turn runs: tell a slow agent from a hung one (`lifecycle.liveness`
        decides; this loop only sleeps until its next deadline, probes and acts)."""
        core = self._core
        lc = core.settings.config.lifecycle
        interval = float(lc.probe_interval)
        grace = float(lc.stale_grace)
        if interval <= 0:
            return
        started = trio.current_time()
        probe_sent: float | None = None
        """The first probe sent since the agent was last heard (None once anything is)."""
        async with trio.open_nursery() as probes:
            while True:
                now = trio.current_time()
                heard = rpc.last_traffic
                probe_sent = unanswered_probe(probe_sent, heard)
                verdict = liveness(busy=True, now=now, turn_started=started, last_heard=heard,
                                   probe_sent=probe_sent, probe_interval=interval,
                                   stale_grace=grace)
                if verdict is Liveness.SUSPECT:
                    if probe_sent is None:
                        probe_sent = now
                    probes.start_soon(_probe, rpc, interval)
                elif verdict is Liveness.STALE:
                    assert probe_sent is not None
                    if gen.view is not None and gen.view.process_heard_since(probe_sent):
                        # A shared process that answers: this session is stuck, not it.
                        await self._stale_session(gen, rpc, job, done,
                                                  now - max(started, heard))
                        return
                    unanswered = now - probe_sent
                    reason = (f"agent unresponsive: no answer to a liveness probe for "
                              f"{unanswered:.1f}s (stale grace {grace:g}s)")
                    core.log.warning("agent unresponsive; cancelling and restarting",
                                     turn=job.turn, unanswered=round(unanswered, 1),
                                     quiet=round(now - max(started, heard), 1))
                    with trio.move_on_after(1):
                        with contextlib.suppress(ConnectionLost):
                            await rpc.notify("session/cancel", {"sessionId": core.session_id})
                    with trio.move_on_after(min(2.0, grace)):
                        await done.wait()
                    gen.end(Ending(EndKind.STALE, reason, reason))
                    gen.kill()
                    return
                await trio.sleep_until(next_liveness_check(
                    now=now, turn_started=started, last_heard=heard, probe_sent=probe_sent,
                    probe_interval=interval, stale_grace=grace))

    async def _stale_session(self, gen: Generation, rpc: JsonRpcConnection,
                             job: mb.PromptJob, done: trio.Event, quiet: float) -> None:
        """Shared mode: the turn's session said nothing for a probe interval plus the stale
        grace while its process answered probes. The turn ends (stale) and the session is
        cancelled; the neighbours on the process go on. A session that ignores the cancel
        too ends this chat's generation (its session is closed and resumed), not the
        process."""
        core = self._core
        reason = (f"session unresponsive: nothing from it for {quiet:.1f}s while its shared "
                  "agent process answers probes; cancelled")
        core.log.warning("session unresponsive; cancelling it", turn=job.turn,
                         quiet=round(quiet, 1))
        core.end_turn(job, error=reason)
        with trio.move_on_after(1), contextlib.suppress(ConnectionLost):
            await rpc.notify("session/cancel", {"sessionId": core.session_id})
        grace = max(float(core.settings.config.lifecycle.stale_grace), CANCEL_GRACE_MIN)
        with trio.move_on_after(grace):
            await done.wait()
            return
        gen.end(Ending(EndKind.STALE, f"{reason}; the session ignored session/cancel"))

    def request_cancel(self, message: mb.Cancel, gen: Generation | None) -> None:
        """A client's cancel: queued turns end `cancelled` at once; the running one is
        asked to stop (`cancel`)."""
        core = self._core
        if message.queued:
            core.end_queued(None, cancelled=True)
        job = core.current
        if message.turn is not None and (job is None or job.turn != message.turn):
            # Not the running turn: drop it from the queue if it waits there.
            for queued in list(core.queue):
                if queued.turn == message.turn:
                    core.queue.remove(queued)
                    core.end_turn(queued, stop_reason="cancelled")
            return
        if job is None or job.cancel_requested or job.ended:
            return
        job.cancel_requested = True
        self._wake_retry()
        if gen is not None and gen.rpc is not None and gen.nursery is not None:
            gen.nursery.start_soon(self.cancel, gen, gen.rpc, job, message.by or "cancel")
        else:
            core.permissions.resolve_turn(job, by=message.by or "cancel")

    async def cancel(self, gen: Generation, rpc: JsonRpcConnection, job: mb.PromptJob,
                     by: str, *, error: str | None = None) -> None:
        """`session/cancel` (never a kill), then `cancelled` for the turn's pending permission
        requests, in that order: an agent that got its permission answer first could finish
        the turn normally before it learns of the cancel. An agent that ignores the cancel for
        the cancel grace is broken: its turn ends `cancelled` (or with `error`, when the
        daemon cancelled it for a reason) and it is restarted."""
        core = self._core
        core.log.info("cancelling turn", gen=core.generation, turn=job.turn)
        try:
            await rpc.notify("session/cancel", {"sessionId": core.session_id})
        except ConnectionLost:
            return
        finally:
            core.permissions.resolve_turn(job, by=by)
        grace = max(float(core.settings.config.lifecycle.stale_grace), CANCEL_GRACE_MIN)
        with trio.move_on_after(grace):
            await job.answered.wait()
            return
        if not job.ended and core.current is job:
            core.end_turn(job, stop_reason="cancelled", error=error)
            gen.end(Ending(EndKind.CRASH, f"agent ignored session/cancel for {grace:g}s"))


async def _probe(rpc: JsonRpcConnection, timeout: float) -> None:
    """Any answer, even an error, proves the agent is reading and answering."""
    with contextlib.suppress(RpcError, ConnectionLost, trio.TooSlowError):
        await rpc.request("_stoker/ping", {}, timeout=timeout)

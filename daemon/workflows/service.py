"""The workflows service: starts runs, drives each as an actor, and answers the workflow
requests (`ROUTES`).

A run is an actor (one trio task) that owns its units. It wakes at every change (a unit
ended, a request, a free slot in another run) and advances:

    waiting --its needs done--> pending (or cached: the spec's result is in the cache)
    pending --a free slot (the run's concurrency, workflows.max_running)--> running
    running --its task ended--> done | failed (after its retries) | cancelled
    waiting --a need failed--> skipped

A running unit is a task (daemon.tasks) under the run's chat, visible and attachable like
any chat; each attempt is a new task. Everything is in the store: after a daemon restart
(`kill -9` included) each running run's actor starts again, finished units stay finished,
a unit whose task still runs (or was queued) is followed to its end, and one whose turn
was cut by the restart (the task ends `interrupted`) runs again without counting an
attempt.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio

from daemon.actors.pool import Pool
from daemon.actors.settings import Settings
from daemon.channels.hub import Hub
from daemon.errors import BadRequest, InvalidState, LimitReached, NotFound, StokerError
from daemon.log import Log
from daemon.mcp import credentials
from daemon.router import Routes
from daemon.store.sqlite import Store
from daemon.tasks import limits
from daemon.tasks.service import TaskService, Unauthorized
from daemon.workflows import catalog, plan, records, retention, spec
from daemon.workflows.records import (
    ENDED,
    FINISHED,
    Run,
    RunState,
    Unit,
    UnitState,
)
from daemon.workflows.spec import Workflow, WorkflowError
from protocol import deltas as d
from protocol import messages as m

MAX_WAIT = 3600.0
BUDGET_POLL = 0.5
"""While a run or step has a token budget, its running tasks' token use is read this often
(agents report usage as they go; no event says a total crossed a line)."""

_TASK_UNFINISHED = ("queued", "running")


class WorkflowService:
    def __init__(self, *, pool: Pool, hub: Hub, tasks: TaskService, store: Store,
                 settings: Settings, config_dir: Path | None) -> None:
        self._pool = pool
        self._hub = hub
        self._tasks = tasks
        self._store = store
        self._settings = settings
        self._config_dir = config_dir
        self._log = Log("workflows")
        self._runs: dict[str, Run] = {}
        self._specs: dict[str, Workflow] = {}
        self._chat_locks: dict[str, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None

    # ================================================================== lifecycle

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self._serve)

    async def _serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                     ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for run in await records.load(self._store):
                self._runs[run.id] = run
                if run.state is RunState.RUNNING:
                    self._launch(run)
            self._log.info("loaded", runs=len(self._runs),
                           running=sum(r.state is RunState.RUNNING
                                       for r in self._runs.values()))
            wake = await self._prune_safely()  # before the first request sees the runs
            nursery.start_soon(self._pruner, wake)
            task_status.started()
            await trio.sleep_forever()

    async def _pruner(self, wake: float) -> None:
        """Retention (retention.py): sleep until the next deadline, prune, again."""
        while True:
            await trio.sleep_until(trio.current_time() + wake)
            wake = await self._prune_safely()

    async def _prune_safely(self) -> float:
        """`_prune`; a failure is logged and tried again later, never fatal."""
        try:
            return await self._prune()
        except Exception:
            self._log.exception("pruning workflow runs failed")
            return retention.MAX_SLEEP

    async def _prune(self) -> float:
        """Delete the expired runs and cache entries; the seconds until the next look."""
        config = self._settings.config.workflows
        now = time.time()
        gone = retention.expired(self._runs.values(), now, config)
        for run in gone:  # no await in this loop: a resume cannot slip in between
            del self._runs[run.id]
            self._specs.pop(run.id, None)
            self._chat_locks.pop(run.id, None)
            records.delete_run(self._store, run.id)
        records.cache_prune(self._store, retention.cache_cutoff(now, config))
        await self._store.flush()
        if gone:
            self._log.info("pruned runs", runs=len(gone))
        oldest = await records.cache_oldest(self._store)
        return retention.next_wake(self._runs.values(), oldest, now, config)

    async def stop(self) -> None:
        """Stop driving runs; they stay `running` in the store and go on at the next start
        (the pool, stopped after this, ends their tasks' turns)."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
            self._nursery = None

    def _launch(self, run: Run) -> None:
        try:
            wf = spec.parse(run.source, run.path)
        except WorkflowError as exc:  # cannot happen for a run that started; be safe
            self._end(run, RunState.FAILED, f"the workflow no longer parses: {exc}")
            return
        self._specs[run.id] = wf
        if run.chat is not None:
            self._tasks.drive(run.chat, spec.MAX_CONCURRENCY)
        if self._nursery is not None:
            self._nursery.start_soon(self._actor, run, wf)

    # ================================================================== the run's actor

    async def _actor(self, run: Run, wf: Workflow) -> None:
        try:
            async with trio.open_nursery() as units:
                drivers = self._drivers(run)
                for unit in run.units.values():
                    if unit.state is UnitState.RUNNING and unit.unit in drivers:
                        units.start_soon(self._drive, run, wf, unit)
                while True:
                    changed = run.changed
                    await self._advance(run, wf, units)
                    if run.state is not RunState.RUNNING:
                        break
                    await changed.wait()
        except Exception:
            self._log.exception("a workflow run failed", run=run.id)
            self._end(run, RunState.FAILED, "internal error (see the daemon log)")

    async def _advance(self, run: Run, wf: Workflow, nursery: trio.Nursery) -> None:
        units = run.units
        running = [u for u in units.values() if u.state is UnitState.RUNNING
                   and (u.index is not None or wf.steps[u.step].for_each is None)]
        if run.stopping is not None:
            for unit in units.values():
                if unit.state in (UnitState.WAITING, UnitState.PENDING):
                    self._set(run, unit, UnitState.CANCELLED, error=run.stopping)
            if not running:
                for unit in units.values():  # the fan-outs whose items ended
                    if unit.state not in ENDED:
                        self._set(run, unit, UnitState.CANCELLED, error=run.stopping)
                state = RunState.CANCELLED if run.stopping == "cancelled" else RunState.FAILED
                self._end(run, state, run.stopping)
            return
        progress = True
        while progress:
            progress = False
            for name, step in wf.steps.items():
                head = units[name]
                if head.state is UnitState.WAITING:
                    # The heads' states: a fan-out's is settled (below) before a step
                    # after it looks, its result joined.
                    needs = {n: units[n].state for n in step.needs}
                    bad = [(n, s) for n, s in needs.items() if s in ENDED - FINISHED]
                    if bad:
                        n, s = bad[0]
                        self._set(run, head, UnitState.SKIPPED,
                                  error=f"step {n!r} it needs {s.value}")
                        progress = True
                    elif all(s in FINISHED for s in needs.values()):
                        await self._ready(run, wf, head)
                        progress = True
                elif head.state is UnitState.RUNNING and step.for_each is not None:
                    fan = plan.step_state(wf, name, units)
                    if fan is not UnitState.RUNNING:
                        parts = self._items(run, name)
                        error = next((f"{u.unit}: {u.error}" for u in parts if u.error
                                      and u.state not in FINISHED), None)
                        head.result = plan.joined([u.result for u in parts])
                        head.tokens = 0
                        head.ended = time.time()
                        self._set(run, head, fan, error=error)
                        progress = True
        heads = [units[n] for n in wf.steps]
        if all(h.state in ENDED for h in heads):  # done even if the last step went over
            failed = [h for h in heads if h.state not in FINISHED]
            if failed:
                first = next((h for h in failed if h.state is not UnitState.SKIPPED),
                             failed[0])
                self._end(run, RunState.FAILED, f"step {first.unit!r} "
                          f"{first.state.value}: {first.error or 'no reason given'}")
            else:
                self._end(run, RunState.DONE, None)
            return
        budget = wf.budget
        if budget is not None and run.tokens() >= budget:
            self._stop(run, f"token budget exceeded: the run used {run.tokens()} tokens of "
                       f"its budget of {budget}")
            return
        limit = self._settings.config.workflows.max_running
        free_here = wf.concurrency - len(running)
        for unit in units.values():
            if free_here <= 0 or self._running() >= limit:
                break
            if unit.state is UnitState.PENDING:
                unit.started = time.time()
                self._set(run, unit, UnitState.RUNNING)
                nursery.start_soon(self._drive, run, wf, unit)
                free_here -= 1

    async def _ready(self, run: Run, wf: Workflow, head: Unit) -> None:
        """`head`'s needs are done: render its prompt (each item's, for a fan-out) and see
        whether the cache already has its result."""
        step = wf.steps[head.step]
        before = wf.ancestors(step.name)
        results = {n: run.units[n].result for n in before}
        lists = {n: [u.result for u in self._items(run, n)] for n in before
                 if wf.steps[n].for_each is not None}
        needs = {n: self._keys(run, n) for n in step.needs}
        if step.for_each is None:
            await self._resolve(run, wf, head, plan.context(run.inputs, results,
                                                            lists=lists), needs)
            return
        items = plan.items(step, run.inputs, results)
        for i, item in enumerate(items):
            name = plan.unit_name(step.name, i)
            unit = run.units.get(name) or Unit(run=run.id, unit=name, step=step.name,
                                              index=i, item=item)
            run.units[name] = unit
            if unit.state in FINISHED:  # kept by a resume
                continue
            await self._resolve(run, wf, unit, plan.context(run.inputs, results, item=item,
                                                            index=i, lists=lists), needs)
        head.started = time.time()
        self._set(run, head, UnitState.RUNNING)

    async def _resolve(self, run: Run, wf: Workflow, unit: Unit, ctx: dict[str, Any],
                       needs: dict[str, list[str]]) -> None:
        step = wf.steps[unit.step]
        unit.prompt = plan.render(step, ctx)
        unit.key = plan.cache_key(agent=step.agent, prompt=unit.prompt,
                                  workspace=step.workspace, base=run.base, cwd=run.cwd,
                                  inputs=plan.used_inputs(step, run.inputs), needs=needs,
                                  item=unit.item)
        cached = await records.cache_get(self._store, unit.key)
        if cached is not None:
            unit.result = cached
            unit.ended = time.time()
            self._set(run, unit, UnitState.CACHED)
        else:
            self._set(run, unit, UnitState.PENDING)

    def _keys(self, run: Run, step: str) -> list[str]:
        items = self._items(run, step)
        return [u.key for u in items] if items else [run.units[step].key]

    @staticmethod
    def _items(run: Run, step: str) -> list[Unit]:
        return sorted((u for u in run.units.values() if u.step == step and u.index is not None),
                      key=lambda u: u.index or 0)

    def _running(self) -> int:
        return sum(1 for r in self._runs.values() for u in r.units.values()
                   if u.state is UnitState.RUNNING and u.unit in self._drivers(r))

    def _drivers(self, run: Run) -> set[str]:
        wf = self._specs.get(run.id)
        if wf is None:
            return set()
        return {u.unit for u in run.units.values()
                if u.index is not None or wf.steps[u.step].for_each is None}

    # ================================================================== one unit

    async def _drive(self, run: Run, wf: Workflow, unit: Unit) -> None:
        """Run `unit` to its end: a task per attempt, retries with backoff, the step's
        timeout and budget; follow the task already recorded after a restart."""
        step = wf.steps[unit.step]
        state: str
        error: str | None
        try:
            while True:
                if unit.task is None:
                    if run.stopping is not None:
                        self._set(run, unit, UnitState.CANCELLED, error=run.stopping)
                        return
                    unit.attempts += 1
                    try:
                        chat = await self._run_chat(run, wf, step.agent)
                        info = await self._tasks.new(m.TaskNew(
                            id=0, parent=chat, prompt=unit.prompt, agent=step.agent,
                            title=f"{run.name} {unit.unit}",
                            workspace="worktree" if step.workspace == "worktree"
                            else "parent"))
                    except StokerError as exc:
                        state, error, tokens, result = "failed", exc.message, 0, ""
                    else:
                        unit.task = info.task
                        unit.error = None
                        records.save_unit(self._store, unit)
                        await self._store.flush()
                        run.touch()
                        if _stopping(run):  # stopped while the task was being made
                            await self._cancel_task(info.task)
                        state, error, tokens, result = await self._watch(run, wf, unit)
                else:
                    state, error, tokens, result = await self._watch(run, wf, unit)
                unit.tokens += tokens
                unit.live_tokens = 0
                if state == "done" and error is None:
                    unit.result = result
                    unit.ended = time.time()
                    records.cache_put(self._store, unit.key, result, tokens)
                    self._set(run, unit, UnitState.DONE)
                    return
                if _stopping(run):
                    unit.ended = time.time()
                    self._set(run, unit, UnitState.CANCELLED, error=run.stopping)
                    return
                unit.task = None
                if state == "interrupted":  # the daemon stopped under it: not an attempt
                    unit.attempts -= 1
                    self._set(run, unit, UnitState.RUNNING, error="interrupted by a daemon "
                              "restart; running it again")
                    continue
                if unit.attempts <= step.retries:
                    self._set(run, unit, UnitState.RUNNING,
                              error=f"attempt {unit.attempts} {state}: {error}; retrying")
                    with trio.move_on_after(plan.backoff(unit.attempts)):
                        while not _stopping(run):  # a stop ends the backoff at once
                            await run.changed.wait()
                    continue
                unit.ended = time.time()
                self._set(run, unit, UnitState.FAILED, error=error)
                return
        finally:
            self._poke()

    async def _watch(self, run: Run, wf: Workflow, unit: Unit
                     ) -> tuple[str, str | None, int, str]:
        """Wait for the unit's task to end: (its state, the error, its tokens, its text).
        A timeout or the step's budget cancels it (an error then)."""
        step = wf.steps[unit.step]
        assert unit.task is not None
        limit = step.timeout
        deadline = trio.current_time() + limit if limit is not None else float("inf")
        polled = wf.budget is not None or step.budget is not None
        ours: str | None = None
        while True:
            wait = min(deadline - trio.current_time(), MAX_WAIT)
            if polled:
                wait = min(wait, BUDGET_POLL)
            try:
                info = await self._tasks.get(m.GetTask(id=0, task=unit.task,
                                                       wait=max(wait, 0.0)))
            except NotFound:
                return "failed", "its task is gone", 0, ""
            if info.state not in _TASK_UNFINISHED:
                break
            if info.tokens != unit.live_tokens:
                unit.live_tokens = info.tokens
                if wf.budget is not None and run.tokens() >= wf.budget:
                    run.touch()  # the actor stops the run
            if ours is None and run.stopping is None:
                if step.budget is not None and info.tokens >= step.budget:
                    ours = (f"used {info.tokens} tokens, over the step's budget of "
                            f"{step.budget}")
                elif trio.current_time() >= deadline:
                    ours = f"timed out after {limit:g} s"
                if ours is not None:
                    await self._cancel_task(unit.task)
                    deadline = float("inf")
        if ours is not None:
            return "failed", ours, info.tokens, info.result
        error = info.error or (f"its task ended {info.state}" if info.state != "done"
                               else None)
        return info.state, error, info.tokens, info.result

    async def _cancel_task(self, task: str) -> None:
        try:
            await self._tasks.cancel(m.TaskCancel(id=0, task=task))
        except StokerError as exc:
            self._log.warning("cannot cancel a step's task", task=task, error=exc.message)

    async def _run_chat(self, run: Run, wf: Workflow, agent: str) -> str:
        """The run's chat, the parent of its steps' tasks, made at the first task."""
        lock = self._chat_locks.setdefault(run.id, trio.Lock())
        async with lock:
            if run.chat is None:
                info = await self._pool.open_chat(
                    chat_id=None, agent=agent, cwd=run.cwd, policy=wf.policy,
                    title=f"workflow {run.name} ({run.id})")
                run.chat = info.chat
                self._tasks.drive(run.chat, spec.MAX_CONCURRENCY)
                records.save_run(self._store, run)
                await self._store.flush()
                self._publish(run, run.state.value)
            return run.chat

    # ================================================================== state changes

    def _set(self, run: Run, unit: Unit, state: UnitState, *, error: str | None = None
             ) -> None:
        unit.state = state
        unit.error = error
        if state in ENDED and unit.ended is None:
            unit.ended = time.time()
        records.save_unit(self._store, unit)
        run.touch()
        self._publish(run, unit.state.value, unit=unit.unit, error=error)

    def _publish(self, run: Run, state: str, *, unit: str | None = None,
                 error: str | None = None) -> None:
        """A `workflow` delta on the run's chat's channel (once it has a chat)."""
        if run.chat is None or self._hub.channel(run.chat) is None:
            return
        self._hub.publish(run.chat, 0, d.Workflow(run=run.id, state=state, unit=unit,
                                                  error=error, tokens=run.tokens()))

    def _stop(self, run: Run, reason: str) -> None:
        """Stop `run`: nothing more starts, running units are cancelled; the run ends with
        `reason` once none runs."""
        if run.stopping is not None or run.state is not RunState.RUNNING:
            return
        run.stopping = reason
        self._log.info("stopping a run", run=run.id, reason=reason)
        for unit in run.units.values():
            if unit.state is UnitState.RUNNING and unit.task is not None \
                    and self._nursery is not None:
                self._nursery.start_soon(self._cancel_task, unit.task)
        run.touch()

    def _end(self, run: Run, state: RunState, reason: str | None) -> None:
        run.state = state
        run.reason = reason
        run.ended = time.time()
        run.stopping = None
        records.save_run(self._store, run)
        run.touch()
        self._publish(run, state.value, error=reason)
        self._log.info("run ended", run=run.id, state=state.value, reason=reason)

    def _poke(self) -> None:
        """A slot may be free: every running run with pending units looks again."""
        for run in self._runs.values():
            if run.state is RunState.RUNNING and any(
                    u.state is UnitState.PENDING for u in run.units.values()):
                run.touch()

    # ================================================================== requests

    def _get(self, run_id: str) -> Run:
        run = self._runs.get(run_id)
        if run is None:
            raise NotFound(f"no workflow run {run_id!r}; `stoker workflow ls` lists them")
        return run

    def _caller(self, req: m.WorkflowRun | m.GetWorkflow) -> str | None:
        """The chat a request acts for (None: a client, which may act on any run)."""
        if req.caller is None and req.credential is None:
            return None
        if req.caller is None or req.credential is None:
            raise Unauthorized("give both caller and credential, or neither")
        if not credentials.valid(req.caller, req.credential):
            raise Unauthorized(f"the credential does not belong to chat {req.caller!r}")
        return req.caller

    def _caller_cwd(self, caller: str, given: str | None) -> str:
        """Where an agent's run works: its own directory, or one inside it. An agent that is
        itself a step of a run may not start runs (no workflow recursion)."""
        if self._tasks.root_of(caller) in {r.chat for r in self._runs.values() if r.chat}:
            raise LimitReached("a workflow step may not start workflows; do the work "
                               "yourself or spawn a task")
        home = self._pool.get_chat(caller).cwd
        if given is None:
            return home
        cwd = os.path.realpath(given)
        if not limits.inside(cwd, home):
            raise BadRequest(f"{given} is outside your directory {home}")
        return cwd

    async def run(self, req: m.WorkflowRun) -> m.WorkflowInfo:
        caller = self._caller(req)
        if caller is not None:
            cwd: str | None = self._caller_cwd(caller, req.cwd)
        else:
            cwd = os.path.realpath(req.cwd) if req.cwd else None
        path, source = self._source(req, cwd)
        cwd = cwd or os.path.dirname(path)
        if not os.path.isdir(cwd):
            raise BadRequest(f"the run's directory {cwd} is not a directory")
        try:
            wf = spec.parse(source, path, known_agents=self._settings.agents)
            inputs = spec.bind(wf, req.inputs)
        except WorkflowError as exc:
            raise BadRequest(str(exc)) from None
        except ValueError as exc:
            raise BadRequest(f"{path}: inputs: {exc}") from None
        run = Run(id=secrets.token_hex(5), name=wf.name, path=path, source=source,
                  inputs=inputs, cwd=cwd, base=await _git_head(cwd), created=time.time(),
                  origin=caller)
        for name in wf.steps:
            run.units[name] = Unit(run=run.id, unit=name, step=name)
        self._runs[run.id] = run
        records.save_run(self._store, run)
        for unit in run.units.values():
            records.save_unit(self._store, unit)
        await self._store.flush()
        self._log.info("run started", run=run.id, workflow=wf.name, path=path,
                       steps=len(wf.steps))
        self._launch(run)
        return self.info(run, results=False)

    def _source(self, req: m.WorkflowRun, cwd: str | None) -> tuple[str, str]:
        if req.source is not None:
            return os.path.abspath(os.path.join(cwd or os.getcwd(), req.workflow)), req.source
        found = catalog.find(req.workflow, cwd=cwd, config_dir=self._config_dir)
        if found is None:
            raise NotFound(f"no workflow {req.workflow!r}: not a file, nor a name in "
                           f"{', '.join(catalog.places(cwd, self._config_dir)) or 'any place'}")
        try:
            return str(found), found.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadRequest(f"cannot read {found}: {exc}") from None

    def list(self, req: m.ListWorkflows) -> m.WorkflowList:
        runs = sorted(self._runs.values(), key=lambda r: r.created, reverse=True)
        available: list[m.WorkflowFile] = []
        if req.available:
            for name, path in catalog.discover(
                    os.path.realpath(req.cwd) if req.cwd else None, self._config_dir):
                available.append(self._describe(name, path))
        return m.WorkflowList(runs=[self.info(r, results=False, steps=False) for r in runs],
                              available=available)

    def _describe(self, name: str, path: Path) -> m.WorkflowFile:
        try:
            wf = spec.parse(path.read_text(encoding="utf-8"), str(path),
                            known_agents=self._settings.agents)
        except WorkflowError as exc:
            return m.WorkflowFile(name=name, path=str(path), error=str(exc))
        except (OSError, UnicodeDecodeError) as exc:
            return m.WorkflowFile(name=name, path=str(path), error=str(exc))
        return m.WorkflowFile(name=name, path=str(path), description=wf.description)

    async def get(self, req: m.GetWorkflow) -> m.WorkflowInfo:
        caller = self._caller(req)
        run = self._get(req.run)
        if caller is not None and run.origin != caller:
            raise NotFound(f"no workflow run {req.run!r} of chat {caller!r}")
        if req.wait > 0 and run.version == req.version and run.state is RunState.RUNNING:
            with trio.move_on_after(min(req.wait, MAX_WAIT)):
                await run.changed.wait()
        return self.info(run)

    async def cancel(self, req: m.WorkflowCancel) -> m.WorkflowInfo:
        run = self._get(req.run)
        if run.state is RunState.RUNNING:
            self._stop(run, "cancelled")
            with trio.move_on_after(30):
                while run.state is RunState.RUNNING:
                    await run.changed.wait()
        await self._store.flush()
        return self.info(run, results=False)

    async def resume(self, req: m.WorkflowResume) -> m.WorkflowInfo:
        run = self._get(req.run)
        if run.state is RunState.RUNNING:
            raise InvalidState(f"run {run.id} is still running")
        if run.state is RunState.DONE:
            raise InvalidState(f"run {run.id} is done; run the workflow again to redo "
                               "what changed")
        for name in [u.unit for u in run.units.values()]:
            unit = run.units[name]
            if unit.state in FINISHED:
                continue
            if unit.index is not None:
                del run.units[name]
                records.delete_unit(self._store, unit)
                continue
            run.units[name] = Unit(run=run.id, unit=name, step=unit.step)
            records.save_unit(self._store, run.units[name])
        run.state = RunState.RUNNING
        run.reason = None
        run.ended = None
        records.save_run(self._store, run)
        await self._store.flush()
        self._launch(run)
        return self.info(run, results=False)

    # ================================================================== answers

    def info(self, run: Run, *, results: bool = True, steps: bool = True) -> m.WorkflowInfo:
        wf = self._specs.get(run.id)
        if wf is None:
            try:
                wf = self._specs[run.id] = spec.parse(run.source, run.path)
            except WorkflowError:
                wf = None
        infos: list[m.WorkflowStepInfo] = []
        if steps and wf is not None:
            for name, step in wf.steps.items():
                for unit in [run.units[name], *self._items(run, name)]:
                    infos.append(m.WorkflowStepInfo(
                        unit=unit.unit, step=name, state=unit.state.value,
                        agent=step.agent, needs=list(step.needs), index=unit.index,
                        item=unit.item, task=unit.task, attempts=unit.attempts,
                        tokens=unit.tokens + unit.live_tokens, started_at=unit.started,
                        ended_at=unit.ended, error=unit.error,
                        result=unit.result if results else ""))
        return m.WorkflowInfo(
            run=run.id, name=run.name, path=run.path, state=run.state.value, cwd=run.cwd,
            created_at=run.created, version=run.version, reason=run.reason or run.stopping,
            chat=run.chat, origin=run.origin, ended_at=run.ended, tokens=run.tokens(),
            budget=wf.budget if wf else None,
            concurrency=wf.concurrency if wf else spec.DEFAULT_CONCURRENCY,
            inputs=run.inputs, steps=infos)

    def runs(self) -> Iterable[Run]:
        return self._runs.values()


def _stopping(run: Run) -> bool:
    """Whether `run` is stopping (read after an await: it may have changed meanwhile)."""
    return run.stopping is not None


async def _git_head(cwd: str) -> str:
    """The commit checked out in `cwd` ("" outside a git work tree)."""
    try:
        done = await trio.run_process(["git", "-C", cwd, "rev-parse", "HEAD"],
                                      capture_stdout=True, capture_stderr=True, check=False)
    except OSError:
        return ""
    return done.stdout.decode().strip() if done.returncode == 0 else ""


ROUTES: Routes[WorkflowService] = Routes("workflows")


@ROUTES.handles(m.WorkflowRun, slow=True)
async def workflow_run(flows: WorkflowService, req: m.WorkflowRun, client: str
                       ) -> m.WorkflowInfo:
    return await flows.run(req)


@ROUTES.handles(m.ListWorkflows, slow=True)
async def list_workflows(flows: WorkflowService, req: m.ListWorkflows, client: str
                         ) -> m.WorkflowList:
    return flows.list(req)


@ROUTES.handles(m.GetWorkflow, slow=True)
async def get_workflow(flows: WorkflowService, req: m.GetWorkflow, client: str
                       ) -> m.WorkflowInfo:
    return await flows.get(req)


@ROUTES.handles(m.WorkflowCancel, slow=True)
async def workflow_cancel(flows: WorkflowService, req: m.WorkflowCancel, client: str
                          ) -> m.WorkflowInfo:
    return await flows.cancel(req)


@ROUTES.handles(m.WorkflowResume, slow=True)
async def workflow_resume(flows: WorkflowService, req: m.WorkflowResume, client: str
                          ) -> m.WorkflowInfo:
    return await flows.resume(req)

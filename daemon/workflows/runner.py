"""One workflow run as an actor: it owns its units and drives each to its end.

A run is one trio task. It wakes at every change (a unit ended, a request, a free slot in
another run) and advances:

    waiting --its needs done--> pending (or cached: the spec's result is in the cache)
    pending --a free slot (the run's concurrency, workflows.max_running)--> running
    running --its task ended--> done | failed (after its retries) | cancelled
    waiting --a need failed--> skipped

A running unit is a task (daemon.tasks) under the run's chat, visible and attachable like
any chat; each attempt is a new task. Every change is saved (`records`) and announced by a
`workflow` delta on the run's chat's channel. After a daemon restart (`kill -9` included)
each running run's actor starts again, finished units stay finished, a unit whose task
still runs (or was queued) is followed to its end, and one whose turn was cut by the
restart (the task ends `interrupted`) runs again without counting an attempt.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from daemon.actors.pool import Pool
from daemon.actors.settings import Settings
from daemon.channels.hub import Hub
from daemon.errors import NotFound, StokerError
from daemon.log import Log
from daemon.store.sqlite import Store
from daemon.tasks.service import TaskService
from daemon.workflows import plan, records, spec
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
"""The longest one wait on a task (or a `workflow` request on a run) lasts."""

BUDGET_POLL = 0.5
"""While a run or step has a token budget, its running tasks' token use is read this often
(agents report usage as they go; no event says a total crossed a line)."""

_TASK_UNFINISHED = ("queued", "running")


class Runner:
    """The runs in memory and their actors. The service (service.py) answers the requests
    and owns the lifecycle; it sets `nursery` while it serves, and the actors run there."""

    def __init__(self, *, pool: Pool, hub: Hub, tasks: TaskService, store: Store,
                 settings: Settings, log: Log) -> None:
        self._pool = pool
        self._hub = hub
        self._tasks = tasks
        self._store = store
        self._settings = settings
        self._log = log
        self.runs: dict[str, Run] = {}
        self.specs: dict[str, Workflow] = {}
        self._chat_locks: dict[str, trio.Lock] = {}
        self.nursery: trio.Nursery | None = None

    def forget(self, run_id: str) -> None:
        """Drop a run (pruned) from memory; the caller deletes its records."""
        del self.runs[run_id]
        self.specs.pop(run_id, None)
        self._chat_locks.pop(run_id, None)

    def launch(self, run: Run) -> None:
        """Start `run`'s actor (a run that is new, resumed, or running at start-up)."""
        try:
            wf = spec.parse(run.source, run.path)
        except WorkflowError as exc:  # cannot happen for a run that started; be safe
            self.end_run(run, RunState.FAILED, f"the workflow no longer parses: {exc}")
            return
        self.specs[run.id] = wf
        if run.chat is not None:
            self._tasks.drive(run.chat, spec.MAX_CONCURRENCY)
        if self.nursery is not None:
            self.nursery.start_soon(self._actor, run, wf)

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
            self.end_run(run, RunState.FAILED, "internal error (see the daemon log)")

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
                self.end_run(run, state, run.stopping)
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
                        parts = items_of(run, name)
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
                self.end_run(run, RunState.FAILED, f"step {first.unit!r} "
                             f"{first.state.value}: {first.error or 'no reason given'}")
            else:
                self.end_run(run, RunState.DONE, None)
            return
        budget = wf.budget
        if budget is not None and run.tokens() >= budget:
            self.stop_run(run, f"token budget exceeded: the run used {run.tokens()} tokens "
                          f"of its budget of {budget}")
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
        lists = {n: [u.result for u in items_of(run, n)] for n in before
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
        items = items_of(run, step)
        return [u.key for u in items] if items else [run.units[step].key]

    def _running(self) -> int:
        return sum(1 for r in self.runs.values() for u in r.units.values()
                   if u.state is UnitState.RUNNING and u.unit in self._drivers(r))

    def _drivers(self, run: Run) -> set[str]:
        wf = self.specs.get(run.id)
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

    def stop_run(self, run: Run, reason: str) -> None:
        """Stop `run`: nothing more starts, running units are cancelled; the run ends with
        `reason` once none runs."""
        if run.stopping is not None or run.state is not RunState.RUNNING:
            return
        run.stopping = reason
        self._log.info("stopping a run", run=run.id, reason=reason)
        for unit in run.units.values():
            if unit.state is UnitState.RUNNING and unit.task is not None \
                    and self.nursery is not None:
                self.nursery.start_soon(self._cancel_task, unit.task)
        run.touch()

    def end_run(self, run: Run, state: RunState, reason: str | None) -> None:
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
        for run in self.runs.values():
            if run.state is RunState.RUNNING and any(
                    u.state is UnitState.PENDING for u in run.units.values()):
                run.touch()



def _stopping(run: Run) -> bool:
    """Whether `run` is stopping (read after an await: it may have changed meanwhile)."""
    return run.stopping is not None



def items_of(run: Run, step: str) -> list[Unit]:
    """The items of fan-out `step` in `run`, in order (none for a plain step)."""
    return sorted((u for u in run.units.values() if u.step == step and u.index is not None),
                  key=lambda u: u.index or 0)

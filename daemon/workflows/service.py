"""The workflows service: starts runs, keeps them (retention), and answers the workflow
requests (`ROUTES`). Each run is driven by its actor (runner.py)."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

import trio

from daemon.actors.pool import Pool
from daemon.actors.settings import Settings
from daemon.channels.hub import Hub
from daemon.errors import BadRequest, InvalidState, LimitReached, NotFound
from daemon.log import Log
from daemon.mcp import credentials
from daemon.router import Routes
from daemon.store.sqlite import Store
from daemon.tasks import limits
from daemon.tasks.service import TaskService, Unauthorized
from daemon.workflows import catalog, records, retention, spec
from daemon.workflows.records import FINISHED, Run, RunState, Unit
from daemon.workflows.runner import MAX_WAIT, Runner, items_of
from daemon.workflows.spec import WorkflowError
from protocol import messages as m


class WorkflowService:
    """The workflows child of the tree: the runs' lifecycle and the workflow requests."""

    def __init__(self, *, pool: Pool, hub: Hub, tasks: TaskService, store: Store,
                 settings: Settings, config_dir: Path | None) -> None:
        self._pool = pool
        self._tasks = tasks
        self._store = store
        self._settings = settings
        self._config_dir = config_dir
        self._log = Log("workflows")
        self._runner = Runner(pool=pool, hub=hub, tasks=tasks, store=store,
                              settings=settings, log=self._log)
        self._runs = self._runner.runs
        """The runs by id: the runner's own dict (never rebound), read here."""

    # ================================================================== lifecycle

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self._serve)

    async def _serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                     ) -> None:
        async with trio.open_nursery() as nursery:
            self._runner.nursery = nursery
            for run in await records.load(self._store):
                self._runs[run.id] = run
                if run.state is RunState.RUNNING:
                    self._runner.launch(run)
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
            self._runner.forget(run.id)
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
        if self._runner.nursery is not None:
            self._runner.nursery.cancel_scope.cancel()
            self._runner.nursery = None

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
        self._runner.launch(run)
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
            self._runner.stop_run(run, "cancelled")
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
        self._runner.launch(run)
        return self.info(run, results=False)

    # ================================================================== answers

    def info(self, run: Run, *, results: bool = True, steps: bool = True) -> m.WorkflowInfo:
        wf = self._runner.specs.get(run.id)
        if wf is None:
            try:
                wf = self._runner.specs[run.id] = spec.parse(run.source, run.path)
            except WorkflowError:
                wf = None
        infos: list[m.WorkflowStepInfo] = []
        if steps and wf is not None:
            for name, step in wf.steps.items():
                for unit in [run.units[name], *items_of(run, name)]:
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

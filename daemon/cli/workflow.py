"""CLI commands for workflows (docs/WORKFLOWS.md): `workflow run FILE|NAME [--input k=v]
[--follow]`, `workflow ls [--available]`, `workflow show RUN [--follow]`, `workflow cancel
RUN`, `workflow resume RUN`.

`run` prints just the run id on stdout (`r=$(stoker workflow run review.toml)`), unless
`--follow`. `show` draws the run's steps as a DAG (each indented below the steps it needs)
with their state and duration; `--follow` redraws it at every change until the run ends
(on a terminal in place, else one line per change) and exits 0 if the run is done, 1 if
not. `--json` prints the daemon's typed result instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from daemon.cli.common import (
    Failure,
    UsageError,
    add_common,
    eprint,
    out_json,
    paths_from,
    print_table,
    run_async,
    show,
)
from protocol import messages as m

MARKS = {"waiting": "○", "pending": "…", "running": "▶", "done": "✓", "cached": "≡",
         "failed": "✗", "cancelled": "⊘", "skipped": "-"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    wf = sub.add_parser("workflow", help="run declarative workflows of several agents",
                        description="A workflow file (TOML) declares steps, each a task on "
                        "an agent, that run in parallel and in pipelines; see "
                        "docs/WORKFLOWS.md.")
    wsub = wf.add_subparsers(dest="workflow_command", metavar="ACTION")
    wsub.required = True

    def cmd(name: str, handler: Callable[[argparse.Namespace], int], help_text: str
            ) -> argparse.ArgumentParser:
        parser = wsub.add_parser(name, help=help_text, description=help_text)
        add_common(parser)
        parser.set_defaults(handler=handler)
        return parser

    p = cmd("run", cmd_run, "start a run of a workflow file (or a discovered workflow's "
            "name); prints the run id")
    p.add_argument("workflow", metavar="FILE|NAME")
    p.add_argument("--input", "-i", action="append", default=[], metavar="KEY=VALUE",
                   help="an input value (a list: comma-separated, or a JSON list)")
    p.add_argument("--cwd", help="where the steps work (default: the current directory)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="draw the run until it ends; exit 0 if it is done")

    p = cmd("ls", cmd_ls, "the runs, newest first (--available: the workflow files found)")
    p.add_argument("--available", action="store_true",
                   help="the workflows discovered in .stoker/workflows/ of this project "
                   "and in the config dir's workflows/")

    p = cmd("show", cmd_show, "a run's steps as a DAG, with their state and duration")
    p.add_argument("run", help="the run id (`stoker workflow ls` lists them)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="redraw at every change until the run ends; exit 0 if it is done")
    p.add_argument("--results", action="store_true", help="also print each step's result")

    p = cmd("cancel", cmd_cancel, "cancel a run and its running steps")
    p.add_argument("run", help="the run id (`stoker workflow ls` lists them)")

    p = cmd("resume", cmd_resume, "run a failed or cancelled run's unfinished steps again")
    p.add_argument("run", help="the run id (`stoker workflow ls` lists them)")


def _inputs(pairs: list[str]) -> dict[str, str]:
    inputs: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--input {pair!r}: write KEY=VALUE")
        inputs[key.strip()] = value
    return inputs


def cmd_run(args: argparse.Namespace) -> int:
    cwd = os.path.realpath(args.cwd or os.getcwd())
    path = Path(cwd) / args.workflow
    source: str | None = None
    workflow = args.workflow
    if path.is_file():
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise Failure(f"cannot read {path}: {exc}") from None
        workflow = str(path.resolve())
    request = m.WorkflowRun(id=0, workflow=workflow, source=source,
                            inputs=_inputs(args.input), cwd=cwd)

    async def main() -> int:
        from daemon.client import Client

        async with Client.connect(paths_from(args).socket, client="cli") as conn:
            info: m.WorkflowInfo = await conn.request(request)
            if not args.follow:
                if args.json:
                    out_json(info)
                else:
                    print(info.run, flush=True)
                    eprint(f"workflow {info.name}: run {info.run} started "
                           f"({len(info.steps)} steps, in {info.cwd})")
                return 0
            eprint(f"workflow {info.name}: run {info.run}")
            return await _follow(args, conn, info.run)

    return run_async(main)


async def _follow(args: argparse.Namespace, conn: object, run: str) -> int:
    from daemon.client import Client

    assert isinstance(conn, Client)
    tty = sys.stdout.isatty() and not args.json
    drawn = 0
    seen: dict[str, str] = {}
    version = -1
    while True:
        info: m.WorkflowInfo = await conn.request(m.GetWorkflow(
            id=0, run=run, wait=30.0, version=version))
        version = info.version
        ended = info.state != "running"
        if args.json:
            out_json(info)
        elif tty:
            lines = dag_lines(info, time.time())
            if drawn:
                sys.stdout.write(f"\x1b[{drawn}F\x1b[J")
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
            drawn = len(lines)
        else:
            for step in info.steps:
                if seen.get(step.unit) != step.state:
                    seen[step.unit] = step.state
                    extra = f" ({step.error})" if step.error else ""
                    print(f"{step.unit} {step.state}{extra}", flush=True)
            if ended:
                print("\n".join(dag_lines(info, time.time())), flush=True)
        if ended:
            if getattr(args, "results", False) and not args.json:
                _print_results(info)
            return 0 if info.state == "done" else 1


def _duration(step: m.WorkflowStepInfo, now: float) -> str:
    if step.started_at is None or step.state in ("cached", "waiting", "pending"):
        return ""
    seconds = (step.ended_at or now) - step.started_at
    return f"{seconds:.1f}s" if seconds < 60 else f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"


def dag_lines(info: m.WorkflowInfo, now: float) -> list[str]:
    """The run drawn as text: a header, then each step indented by its depth in the DAG
    (below the steps it needs, named after `<-`), a fan-out's items below their step. Pure,
    for tests."""
    heads = [s for s in info.steps if s.index is None]
    depth: dict[str, int] = {}
    for step in heads:  # in dependency order: a step's needs come before it
        depth[step.step] = 1 + max((depth.get(n, 0) for n in step.needs), default=-1)
    finished = sum(1 for s in heads if s.state in ("done", "cached"))
    head = (f"{info.name} {info.run}: {info.state}, {finished}/{len(heads)} steps, "
            f"{info.tokens} tokens")
    if info.budget is not None:
        head += f" of {info.budget}"
    lines = [head + (f" ({info.reason})" if info.reason else "")]
    rows: list[list[str]] = []
    for step in heads:
        indent = "  " * depth[step.step]
        needs = f"<- {', '.join(step.needs)}" if step.needs else ""
        rows.append([f"{indent}{MARKS.get(step.state, '?')} {step.step}", step.state,
                     _duration(step, now), needs, _note(step)])
        for item in (s for s in info.steps if s.step == step.step and s.index is not None):
            rows.append([f"{indent}    {MARKS.get(item.state, '?')} {item.unit} "
                         f"{_short(item.item or '')}", item.state, _duration(item, now),
                         "", _note(item)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))] if rows else []
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def _short(text: str, limit: int = 30) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def _note(step: m.WorkflowStepInfo) -> str:
    parts = []
    if step.attempts > 1:
        parts.append(f"attempt {step.attempts}")
    if step.error and step.state not in ("done", "cached"):
        parts.append(_short(step.error, 80))
    if step.task and step.state == "running":
        parts.append(f"task {step.task}")
    return "; ".join(parts)


def _print_results(info: m.WorkflowInfo) -> None:
    for step in info.steps:
        if step.index is None and step.result:
            print(f"\n--- {step.step}\n{step.result}")
    sys.stdout.flush()


def cmd_ls(args: argparse.Namespace) -> int:
    def render(listed: m.WorkflowList) -> None:
        if args.available:
            if not listed.available:
                eprint("no workflows found (.stoker/workflows/ in this project, or "
                       "workflows/ in the config dir)")
            rows = [[f.name, "invalid" if f.error else "ok", f.path,
                     _short(f.error or f.description, 60)] for f in listed.available]
            print_table(rows)
            return
        if not listed.runs:
            eprint("no workflow runs")
            return
        now = time.time()
        print_table([[r.run, r.name, r.state, f"{_ago(now - r.created_at)} ago",
                      _short(r.reason or "", 60)] for r in listed.runs])

    return show(args, m.ListWorkflows(id=0, available=args.available,
                                      cwd=os.getcwd()), render)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def cmd_show(args: argparse.Namespace) -> int:
    if args.follow:
        async def main() -> int:
            from daemon.client import Client

            async with Client.connect(paths_from(args).socket, client="cli") as conn:
                return await _follow(args, conn, args.run)

        return run_async(main)

    def render(info: m.WorkflowInfo) -> None:
        print("\n".join(dag_lines(info, time.time())), flush=True)
        if args.results:
            _print_results(info)

    return show(args, m.GetWorkflow(id=0, run=args.run), render)


def cmd_cancel(args: argparse.Namespace) -> int:
    return show(args, m.WorkflowCancel(id=0, run=args.run),
                lambda info: print("\n".join(dag_lines(info, time.time())), flush=True))


def cmd_resume(args: argparse.Namespace) -> int:
    return show(args, m.WorkflowResume(id=0, run=args.run),
                lambda info: print(f"run {info.run}: {info.state}", flush=True))

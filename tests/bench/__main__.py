"""The benchmark driver: `python -m tests.bench [--json] [--quick] [--only NAME ...]`.

Runs each scenario (each repeats its measurement `--runs` times and reports medians, with
its floor measured in the same run), prints a table per scenario as it finishes (on stderr
with `--json`, where stdout gets one JSON document with every figure), and exits 0 even
when a target does not hold: the numbers are the product, not a verdict.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import trio

from .common import Context, Result, load_average, machine

SCENARIOS: dict[str, str] = {
    "turn": "tests.bench.bench_turn",
    "cold": "tests.bench.bench_cold",
    "fanout": "tests.bench.bench_fanout",
    "ingest": "tests.bench.bench_ingest",
    "replay": "tests.bench.bench_replay",
    "scale": "tests.bench.bench_scale",
    "restart": "tests.bench.bench_restart",
    "stall": "tests.bench.bench_stall",
    "tasks": "tests.bench.bench_tasks",
    "tracing": "tests.bench.bench_tracing",
    "shared": "tests.bench.bench_shared",
    "mcp": "tests.bench.bench_mcp",
}
OPT_IN = ("shared",)
"""Run only when named in `--only`: `shared` warms 16 real qwen agents twice (minutes, and
~8 GiB while the per-chat half runs)."""


def table(result: Result) -> str:
    lines = [f"== {result.title}  ({result.seconds:.1f}s, load {result.load[0]:.2f} at the "
             f"start, {result.load[1]:.2f} at the end)"]
    width = max((len(f.name) for f in result.figures), default=10)
    for fig in result.figures:
        verdict = "" if fig.holds is None else ("  OK  " if fig.holds else "  MISS")
        target = f"  target {fig.target}" if fig.target else ""
        note = f"  ({fig.note})" if fig.note else ""
        lines.append(f"  {fig.name:<{width}}  {fig.shown():>14}{verdict}{target}{note}")
    for why in result.skipped:
        lines.append(f"  skipped: {why}")
    return "\n".join(lines)


async def _run(names: list[str], ctx: Context, out: TextIO) -> list[Result]:
    results: list[Result] = []
    for name in names:
        module = importlib.import_module(SCENARIOS[name])
        runner: Callable[[Context], Awaitable[Result]] = module.run
        load = load_average()
        ctx.say(f"-- {name} (load {load:.2f})")
        started = time.monotonic()
        try:
            result = await runner(ctx)
        except Exception as exc:
            result = Result(name, name)
            result.skipped.append(f"failed: {exc!r}")
            traceback.print_exc(file=sys.stderr)
        result.seconds = time.monotonic() - started
        result.load = (load, load_average())
        results.append(result)
        print(table(result), file=out, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and fewer runs (about 2 minutes)")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), metavar="NAME",
                        help=f"run only these scenarios ({', '.join(SCENARIOS)}; "
                             f"{', '.join(OPT_IN)} only when named here)")
    parser.add_argument("--runs", type=int, default=None,
                        help="repetitions per measurement (default 5, or 2 with --quick)")
    args = parser.parse_args(argv)
    names = args.only or [name for name in SCENARIOS if name not in OPT_IN]
    runs = args.runs or (2 if args.quick else 5)
    out = sys.stderr if args.json else sys.stdout

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    info = machine()
    print(f"stoker bench: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB, "
          f"kernel {info['kernel']}, Python {info['python']}, commit {info['commit']}, "
          f"load {info['load']}", file=out, flush=True)
    ctx = Context(quick=args.quick, runs=runs, progress=progress)
    started = time.monotonic()
    results = trio.run(_run, names, ctx, out)
    document: dict[str, Any] = {
        "machine": info,
        "quick": args.quick,
        "runs": runs,
        "seconds": round(time.monotonic() - started, 1),
        "load_after": round(load_average(), 2),
        "scenarios": {r.scenario: r.to_json() for r in results},
    }
    if args.json:
        json.dump(document, sys.stdout, indent=1)
        print()
    else:
        print(f"total {document['seconds']}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

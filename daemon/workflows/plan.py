"""A run's pure decisions: the spec a unit runs (its prompt rendered from the inputs and the
results of the steps it needs), the cache key of that spec, the items of a fan-out, the
backoff between attempts and how a run ends. No I/O."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from daemon.workflows import template
from daemon.workflows.records import FINISHED, Unit, UnitState
from daemon.workflows.spec import Step, Workflow

MAX_BACKOFF = 30.0


def unit_name(step: str, index: int) -> str:
    return f"{step}[{index}]"


def context(inputs: Mapping[str, Any], results: Mapping[str, str], *,
            item: str | None = None, index: int | None = None,
            lists: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """What a prompt may quote: `steps.NAME.result` (a fan-out's joined) and
    `steps.NAME.results` (its items' results, a list; a plain step's is its one result)."""
    lists = lists or {}
    ctx: dict[str, Any] = {"inputs": dict(inputs),
                           "steps": {name: {"result": r,
                                            "results": list(lists.get(name, [r]))}
                                     for name, r in results.items()}}
    if item is not None:
        ctx["item"] = item
        ctx["index"] = index
    return ctx


def render(step: Step, ctx: Mapping[str, Any]) -> str:
    return template.render(list(step.parts), ctx)


def used_inputs(step: Step, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs `step`'s prompt reads: only these are part of its spec, so changing
    another input does not re-run it. (A fan-out item's spec has its item instead of the
    list it came from: adding a file to the list runs only the new file's item.)"""
    names = {r.path[1] for r in template.refs(list(step.parts))
             if r.path[0] == "inputs" and len(r.path) == 2}
    return {n: inputs[n] for n in sorted(names) if n in inputs}


def cache_key(*, agent: str, prompt: str, workspace: str, base: str, cwd: str,
              inputs: Mapping[str, Any], needs: Mapping[str, Sequence[str]],
              item: str | None = None) -> str:
    """SHA-256 of a unit's resolved spec: its agent, rendered prompt, workspace and where
    it starts (the run's directory and its git HEAD), the inputs it reads, its item (in a
    fan-out), and the keys of the units it needs (so a changed step changes every step
    after it, even one that does not quote its result)."""
    spec = {"agent": agent, "prompt": prompt, "workspace": workspace, "base": base,
            "cwd": cwd, "inputs": dict(sorted(inputs.items())),
            "needs": {k: list(v) for k, v in sorted(needs.items())}, "item": item}
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def items(step: Step, inputs: Mapping[str, Any], results: Mapping[str, str]) -> list[str]:
    """The items a for_each step fans out over, now that its needs are done."""
    fe = step.for_each
    assert fe is not None
    if fe.items is not None:
        return list(fe.items)
    if fe.input is not None:
        return [str(v) for v in inputs[fe.input]]
    assert fe.step is not None
    return [line.strip() for line in results[fe.step].splitlines() if line.strip()]


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt `attempt + 1` (1, 2, 4 ... at most 30)."""
    return float(min(MAX_BACKOFF, 2.0 ** max(0, attempt - 1)))


def step_state(wf: Workflow, step: str, units: Mapping[str, Unit]) -> UnitState:
    """A step's state: its unit's, or for a fan-out the state of its items taken
    together once they exist."""
    head = units[step]
    if wf.steps[step].for_each is None or head.state is not UnitState.RUNNING:
        return head.state
    parts = [u for u in units.values() if u.step == step and u.index is not None]
    states = {u.state for u in parts}
    if states == {UnitState.CACHED}:
        return UnitState.CACHED
    if states <= FINISHED:
        return UnitState.DONE
    if states & {UnitState.WAITING, UnitState.PENDING, UnitState.RUNNING}:
        return UnitState.RUNNING
    if UnitState.CANCELLED in states:
        return UnitState.CANCELLED
    return UnitState.FAILED


def joined(results: Sequence[str]) -> str:
    """A fan-out's result: its items' results, one after another."""
    return "\n\n".join(r.strip() for r in results)

"""Workflow files: parse a TOML workflow, validate it whole and order its steps. Pure.

    name = "review"                  # optional; the file's stem by default
    concurrency = 3                  # steps of one run running at once
    budget = 200000                  # tokens the run may use (optional)
    policy = "allow"                 # permission requests of the steps (ask, allow, deny)
    agent = "echo"                   # the default agent of the steps

    [inputs]
    topic = "caching"                # a string input with a default
    files = { type = "list", default = ["a.py", "b.py"] }
    depth = { type = "int" }         # required: no default

    [steps.plan]
    prompt = "plan {{ inputs.topic }}"

    [steps.review]
    needs = ["plan"]
    for_each = "inputs.files"        # one task per item; {{ item }}, {{ index }}
    prompt = "review {{ item }} following {{ steps.plan.result }}"
    workspace = "worktree"           # or "inherit" (the run's directory, the default)
    timeout = 600                    # seconds per attempt
    retries = 2                      # more attempts after a failure, with backoff
    budget = 50000                   # tokens this step may use

Every problem found is reported, each naming the file, the line and the key (tomllib gives
no lines: `locate` finds the key's line in the text), and nothing runs: a cycle, an unknown
step or agent, a bad template, a value of the wrong type.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from daemon.workflows import template
from daemon.workflows.template import Part, TemplateError

INPUT_TYPES = ("string", "list", "int", "bool")
WORKSPACES = ("inherit", "worktree")
DEFAULT_CONCURRENCY = 3
MAX_CONCURRENCY = 64
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_TOP_KEYS = ("name", "description", "concurrency", "budget", "agent", "workspace",
             "timeout", "retries", "policy", "inputs", "steps")
POLICIES = ("ask", "allow", "deny")
_STEP_KEYS = ("agent", "prompt", "needs", "workspace", "for_each", "timeout", "retries",
              "budget", "title")
_INPUT_KEYS = ("type", "default", "description")


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    key: str
    message: str


class WorkflowError(ValueError):
    """A workflow that may not run: every problem found, each `FILE:LINE: KEY: message`."""

    def __init__(self, path: str, problems: Sequence[Problem]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__("\n".join(f"{path}:{p.line}: {p.key}: {p.message}"
                                   for p in self.problems))


@dataclass(frozen=True, slots=True)
class Input:
    name: str
    type: str
    default: Any = None
    """None: the input is required."""
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True, slots=True)
class ForEach:
    """What a step fans out over: a literal list, a list input, or the non-empty lines of an
    earlier step's result (known only once that step finished)."""

    items: tuple[str, ...] | None = None
    input: str | None = None
    step: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    agent: str
    prompt: str
    parts: tuple[Part, ...]
    needs: tuple[str, ...] = ()
    workspace: str = "inherit"
    for_each: ForEach | None = None
    timeout: float | None = None
    retries: int = 0
    budget: int | None = None
    title: str = ""


@dataclass(frozen=True, slots=True)
class Workflow:
    name: str
    path: str
    source: str
    description: str = ""
    concurrency: int = DEFAULT_CONCURRENCY
    budget: int | None = None
    policy: str | None = None
    """The permission policy of the run's chat, which its steps' chats inherit (None: the
    daemon's default)."""
    inputs: Mapping[str, Input] = field(default_factory=dict)
    steps: Mapping[str, Step] = field(default_factory=dict)
    """In an order where every step comes after the steps it needs."""

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.steps[name].needs)
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(self.steps[n].needs)
        return seen

    def dependents(self, name: str) -> set[str]:
        return {s for s in self.steps if name in self.ancestors(s)}


# ====================================================================== locating keys

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_ASSIGN = re.compile(r'^\s*("[^"]*"|\'[^\']*\'|[A-Za-z0-9_.-]+)\s*=')


def _unquote(name: str) -> str:
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "\"'":
        return name[1:-1]
    return name


def _dotted(text: str) -> tuple[str, ...]:
    return tuple(_unquote(p) for p in re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', text))


def locate(text: str, path: Sequence[str]) -> int:
    """The 1-based line of the key at `path` (e.g. ("steps", "a", "prompt")) in TOML `text`:
    the line assigning it, else that of the closest enclosing table or key found, else 1."""
    lines = text.splitlines()
    table: tuple[str, ...] = ()
    best_len, best = 0, 1
    want = tuple(path)
    for number, line in enumerate(lines, 1):
        header = _HEADER.match(line)
        if header is not None and not line.lstrip().startswith("#"):
            table = _dotted(header.group(1))
            if want[:len(table)] == table and len(table) > best_len:
                best_len, best = len(table), number
            continue
        assign = _ASSIGN.match(line)
        if assign is None:
            continue
        key = table + _dotted(assign.group(1))
        common = 0
        for a, b in zip(key, want, strict=False):
            if a != b:
                break
            common += 1
        # The key, a table enclosing it, or an inline table holding it (a = { want = 1 }).
        if common in (len(key), len(want)) and common > best_len:
            best_len, best = common, number
    return best


# ====================================================================== parsing


class _Checker:
    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text
        self.problems: list[Problem] = []

    def fail(self, keys: Sequence[str], message: str) -> None:
        self.problems.append(Problem(locate(self.text, keys), ".".join(keys), message))

    def int_(self, table: Mapping[str, Any], keys: tuple[str, ...], *, low: int = 0,
             high: int | None = None) -> int | None:
        value = table.get(keys[-1])
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(keys, f"must be an integer, not {_kind(value)}")
            return None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            self.fail(keys, f"must be {bound}, not {value}")
            return None
        return value

    def seconds(self, table: Mapping[str, Any], keys: tuple[str, ...]) -> float | None:
        value = table.get(keys[-1])
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            self.fail(keys, f"must be a positive number of seconds, not {value!r}")
            return None
        return float(value)

    def str_(self, table: Mapping[str, Any], keys: tuple[str, ...], default: str = ""
             ) -> str:
        value = table.get(keys[-1], default)
        if not isinstance(value, str):
            self.fail(keys, f"must be a string, not {_kind(value)}")
            return default
        return value

    def unknown(self, table: Mapping[str, Any], prefix: tuple[str, ...],
                allowed: Sequence[str]) -> None:
        for key in table:
            if key not in allowed:
                self.fail((*prefix, key), f"unknown key; the keys here are: "
                          f"{', '.join(allowed)}")


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def parse(text: str, path: str, *, known_agents: Collection[str] | None = None,
          default_agent: str | None = None) -> Workflow:
    """The workflow in `text` (read from `path`), validated whole, its steps in dependency
    order. `known_agents`: the agents a step may name (None: not checked). Raises
    WorkflowError with every problem found."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = int(found.group(1)) if found else 1
        raise WorkflowError(path, [Problem(line, "(syntax)", str(exc))]) from None
    c = _Checker(path, text)
    c.unknown(data, (), _TOP_KEYS)
    name = c.str_(data, ("name",), PurePath(path).stem) or PurePath(path).stem
    concurrency = c.int_(data, ("concurrency",), low=1, high=MAX_CONCURRENCY)
    budget = c.int_(data, ("budget",), low=1)
    agent_default = c.str_(data, ("agent",), default_agent or "") or None
    workspace_default = c.str_(data, ("workspace",), "inherit")
    if workspace_default not in WORKSPACES:
        c.fail(("workspace",), f"must be one of {', '.join(WORKSPACES)}, not "
               f"{workspace_default!r}")
        workspace_default = "inherit"
    timeout_default = c.seconds(data, ("timeout",))
    retries_default = c.int_(data, ("retries",), low=0, high=10) or 0
    policy: str | None = c.str_(data, ("policy",)) or None
    if policy is not None and policy not in POLICIES:
        c.fail(("policy",), f"must be one of {', '.join(POLICIES)}, not {policy!r}")
        policy = None

    inputs = _inputs(c, data.get("inputs", {}))
    raw_steps = data.get("steps")
    steps: dict[str, Step] = {}
    if not isinstance(raw_steps, dict) or not raw_steps:
        c.fail(("steps",), "a workflow needs at least one step: [steps.NAME] with a prompt")
        raw_steps = {}
    for step_name, raw in raw_steps.items():
        keys = ("steps", step_name)
        if not _NAME.match(step_name):
            c.fail(keys, "a step name is letters, digits, '_' and '-', starting with a "
                   "letter")
            continue
        if not isinstance(raw, dict):
            c.fail(keys, f"must be a table ([steps.{step_name}]), not {_kind(raw)}")
            continue
        c.unknown(raw, keys, _STEP_KEYS)
        agent = c.str_(raw, (*keys, "agent"), agent_default or "")
        if not agent:
            c.fail((*keys, "agent"), "no agent: give the step an agent, or the workflow a "
                   "default `agent`")
        elif known_agents is not None and agent not in known_agents:
            c.fail((*keys, "agent"), f"unknown agent {agent!r}; the agents are: "
                   f"{', '.join(sorted(known_agents))}")
        prompt = c.str_(raw, (*keys, "prompt"))
        parts: list[Part] = []
        if "prompt" not in raw or not prompt.strip():
            c.fail((*keys, "prompt"), "a step needs a prompt")
        else:
            try:
                parts = template.parse(prompt)
            except TemplateError as exc:
                c.fail((*keys, "prompt"), f"bad template: {exc}")
        needs_raw = raw.get("needs", [])
        if isinstance(needs_raw, str):
            needs_raw = [needs_raw]
        needs: list[str] = []
        if not isinstance(needs_raw, list) or not all(isinstance(n, str) for n in needs_raw):
            c.fail((*keys, "needs"), "must be a list of step names")
        else:
            for need in needs_raw:
                if need not in raw_steps:
                    c.fail((*keys, "needs"), f"unknown step {need!r}; the steps are: "
                           f"{', '.join(raw_steps)}")
                elif need == step_name:
                    c.fail((*keys, "needs"), "a step cannot need itself")
                elif need not in needs:
                    needs.append(need)
        workspace = c.str_(raw, (*keys, "workspace"), workspace_default)
        if workspace not in WORKSPACES:
            c.fail((*keys, "workspace"), f"must be one of {', '.join(WORKSPACES)}, not "
                   f"{workspace!r}")
            workspace = "inherit"
        for_each = _for_each(c, raw, keys, inputs, raw_steps)
        timeout = c.seconds(raw, (*keys, "timeout"))
        retries = c.int_(raw, (*keys, "retries"), low=0, high=10)
        step_budget = c.int_(raw, (*keys, "budget"), low=1)
        steps[step_name] = Step(
            name=step_name, agent=agent, prompt=prompt, parts=tuple(parts),
            needs=tuple(needs), workspace=workspace, for_each=for_each,
            timeout=timeout if timeout is not None else timeout_default,
            retries=retries if retries is not None else retries_default,
            budget=step_budget, title=c.str_(raw, (*keys, "title")))
    order = _order(c, steps)
    workflow = Workflow(name=name, path=path, source=text,
                        description=c.str_(data, ("description",)),
                        concurrency=concurrency or DEFAULT_CONCURRENCY, budget=budget,
                        policy=policy,
                        inputs=inputs, steps={n: steps[n] for n in order})
    for step in workflow.steps.values():
        _check_refs(c, workflow, step)
    if c.problems:
        raise WorkflowError(path, sorted(c.problems, key=lambda p: p.line))
    return workflow


def _inputs(c: _Checker, raw: Any) -> dict[str, Input]:
    if not isinstance(raw, dict):
        c.fail(("inputs",), f"must be a table ([inputs]), not {_kind(raw)}")
        return {}
    inputs: dict[str, Input] = {}
    for name, value in raw.items():
        keys = ("inputs", name)
        if not _NAME.match(name):
            c.fail(keys, "an input name is letters, digits, '_' and '-'")
            continue
        if isinstance(value, dict):
            c.unknown(value, keys, _INPUT_KEYS)
            kind = c.str_(value, (*keys, "type"), "")
            default = value.get("default")
            if not kind:
                kind = _type_of(default) if default is not None else "string"
            description = c.str_(value, (*keys, "description"))
        else:
            kind, default, description = _type_of(value), value, ""
        if kind not in INPUT_TYPES:
            c.fail((*keys, "type") if isinstance(value, dict) else keys,
                   f"an input's type is one of {', '.join(INPUT_TYPES)}, not {kind!r}")
            continue
        if default is not None:
            try:
                default = coerce(kind, default)
            except ValueError as exc:
                c.fail((*keys, "default") if isinstance(value, dict) else keys, str(exc))
                continue
        inputs[name] = Input(name=name, type=kind, default=default, description=description)
    return inputs


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    return _kind(value)


def coerce(kind: str, value: Any) -> Any:
    """`value` (from the file, or a `--input k=v` string) as an input of type `kind`."""
    if kind == "string":
        if isinstance(value, str):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
    elif kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1",
                                                        "0"):
            return value.lower() in ("true", "yes", "1")
    elif kind == "list":
        if isinstance(value, list):
            if all(isinstance(v, str | int | float) and not isinstance(v, bool)
                   for v in value):
                return [str(v) for v in value]
            raise ValueError("a list input holds strings or numbers")
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    loaded = json.loads(text)
                except ValueError:
                    raise ValueError(f"{value!r} is not a JSON list") from None
                return coerce(kind, loaded)
            return [v.strip() for v in text.split(",") if v.strip()]
    raise ValueError(f"must be {'a' if kind != 'int' else 'an'} {kind}, not {_kind(value)}")


def _for_each(c: _Checker, raw: Mapping[str, Any], keys: tuple[str, ...],
              inputs: Mapping[str, Input], steps: Mapping[str, Any]) -> ForEach | None:
    value = raw.get("for_each")
    where = (*keys, "for_each")
    if value is None:
        return None
    if isinstance(value, list):
        if not value or not all(isinstance(v, str | int | float) and not isinstance(v, bool)
                                for v in value):
            c.fail(where, "a literal for_each is a non-empty list of strings")
            return None
        return ForEach(items=tuple(str(v) for v in value))
    if not isinstance(value, str):
        c.fail(where, f"must be a list, 'inputs.NAME' or 'steps.NAME.lines', not "
               f"{_kind(value)}")
        return None
    path = value.strip().removeprefix("{{").removesuffix("}}").strip().split(".")
    if len(path) == 2 and path[0] == "inputs":
        found = inputs.get(path[1])
        if found is None:
            c.fail(where, f"unknown input {path[1]!r}")
        elif found.type != "list":
            c.fail(where, f"input {path[1]!r} is a {found.type}, not a list")
        else:
            return ForEach(input=path[1])
        return None
    if len(path) == 3 and path[0] == "steps" and path[2] == "lines":
        if path[1] not in steps:
            c.fail(where, f"unknown step {path[1]!r}")
            return None
        return ForEach(step=path[1])
    c.fail(where, f"{value!r}: a for_each is a list, 'inputs.NAME' (a list input) or "
           "'steps.NAME.lines' (the lines of an earlier step's result)")
    return None


def _order(c: _Checker, steps: Mapping[str, Step]) -> list[str]:
    """The steps in declaration order, each moved after the steps it needs; a cycle is a
    problem naming it."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the path, 2: placed

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*path[path.index(name):], name]
            c.fail(("steps", cycle[0], "needs"), f"a cycle: {' -> '.join(cycle)}")
            return
        state[name] = 1
        for need in steps[name].needs:
            if need in steps:
                visit(need, [*path, name])
        state[name] = 2
        order.append(name)

    for name in steps:
        visit(name, [])
    return order


def _check_refs(c: _Checker, wf: Workflow, step: Step) -> None:
    keys = ("steps", step.name, "prompt")
    before = wf.ancestors(step.name)
    if step.for_each is not None and step.for_each.step is not None \
            and step.for_each.step not in before:
        c.fail(("steps", step.name, "for_each"), f"step {step.for_each.step!r} must be in "
               "this step's needs (directly or through another step)")
    for ref in template.refs(list(step.parts)):
        p = ref.path
        if p[0] == "inputs" and len(p) == 2:
            if p[1] not in wf.inputs:
                c.fail(keys, f"bad template: unknown input in '{{{{ {ref} }}}}'; the inputs "
                       f"are: {', '.join(wf.inputs) or 'none'}")
        elif p[0] == "steps" and ((len(p) == 3 and p[2] in ("result", "results"))
                                  or (len(p) == 4 and p[2] == "results" and p[3].isdigit())):
            if p[1] not in wf.steps:
                c.fail(keys, f"bad template: unknown step in '{{{{ {ref} }}}}'")
            elif p[1] not in before:
                c.fail(keys, f"bad template: '{{{{ {ref} }}}}' is not ready when this step "
                       f"runs: add {p[1]!r} to its needs")
        elif p in (("item",), ("index",)):
            if step.for_each is None:
                c.fail(keys, f"bad template: '{{{{ {ref} }}}}' only has a value in a step "
                       "with for_each")
        else:
            c.fail(keys, f"bad template: '{{{{ {ref} }}}}' is none of inputs.NAME, "
                   "steps.NAME.result, steps.NAME.results, steps.NAME.results.N, item, "
                   "index")


def bind(wf: Workflow, given: Mapping[str, Any]) -> dict[str, Any]:
    """The run's inputs: `given` (strings from the command line, or typed values) checked
    and typed against the workflow's, defaults filled in. ValueError names each problem."""
    problems = []
    values: dict[str, Any] = {}
    for name in given:
        if name not in wf.inputs:
            problems.append(f"unknown input {name!r}; the inputs are: "
                            f"{', '.join(wf.inputs) or 'none'}")
    for name, spec in wf.inputs.items():
        if name in given:
            try:
                values[name] = coerce(spec.type, given[name])
            except ValueError as exc:
                problems.append(f"input {name!r} {exc}")
        elif spec.required:
            problems.append(f"input {name!r} is required ({spec.type}): give it with "
                            f"--input {name}=VALUE")
        else:
            values[name] = spec.default
    if problems:
        raise ValueError("; ".join(problems))
    return values

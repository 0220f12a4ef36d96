"""Workflow files (daemon/workflows/spec.py) and the prompt templater (template.py): parsing,
validation naming file, line and key, dependency order, input binding."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.workflows import spec, template
from daemon.workflows.spec import WorkflowError
from daemon.workflows.template import Ref, TemplateError

DIAMOND = """\
name = "diamond"
agent = "echo"
concurrency = 2

[inputs]
topic = "caching"
files = { type = "list", default = ["a.py", "b.py"] }

[steps.top]
prompt = "plan {{ inputs.topic }}"

[steps.left]
needs = ["top"]
prompt = "left of {{ steps.top.result }}"

[steps.right]
needs = ["top"]
for_each = "inputs.files"
prompt = "right {{ index }}: {{ item }}"
timeout = 30
retries = 2

[steps.bottom]
needs = ["right", "left"]
prompt = "join {{ steps.left.result }} and {{ steps.right.result }}"
"""


def problems(text: str, agents: set[str] | None = None) -> list[tuple[int, str, str]]:
    with pytest.raises(WorkflowError) as caught:
        spec.parse(text, "/w/flow.toml", known_agents=agents)
    assert str(caught.value).startswith("/w/flow.toml:")
    return [(p.line, p.key, p.message) for p in caught.value.problems]


def test_a_diamond_parses_in_dependency_order() -> None:
    wf = spec.parse(DIAMOND, "/w/diamond.toml", known_agents={"echo"})
    assert list(wf.steps) == ["top", "left", "right", "bottom"]
    assert wf.concurrency == 2
    right = wf.steps["right"]
    assert right.for_each == spec.ForEach(input="files")
    assert (right.timeout, right.retries, right.agent) == (30.0, 2, "echo")
    assert wf.ancestors("bottom") == {"top", "left", "right"}
    assert wf.dependents("left") == {"bottom"}
    assert wf.inputs["files"].default == ["a.py", "b.py"]


def test_steps_are_moved_after_what_they_need() -> None:
    text = ('agent = "echo"\n[steps.b]\nneeds = ["a"]\nprompt = "x"\n'
            '[steps.a]\nprompt = "y"\n')
    assert list(spec.parse(text, "f.toml").steps) == ["a", "b"]


def test_a_cycle_names_its_steps_and_line() -> None:
    text = ('agent = "echo"\n[steps.a]\nneeds = ["c"]\nprompt = "x"\n'
            '[steps.b]\nneeds = ["a"]\nprompt = "x"\n[steps.c]\nneeds = ["b"]\nprompt = "x"\n')
    [(line, key, message)] = problems(text)
    assert (line, key) == (3, "steps.a.needs")
    assert message == "a cycle: a -> c -> b -> a"


def test_an_unknown_step_and_agent_and_a_bad_template_are_all_reported() -> None:
    text = ('[steps.a]\nagent = "nope"\nprompt = "x {{ inputs.missing }}"\n'
            '[steps.b]\nagent = "echo"\nneeds = ["zz"]\nprompt = "{{ steps.a.result"\n')
    found = problems(text, {"echo", "claude"})
    assert [(line, key) for line, key, _ in found] == [
        (2, "steps.a.agent"), (3, "steps.a.prompt"), (6, "steps.b.needs"),
        (7, "steps.b.prompt")]
    assert "unknown agent 'nope'; the agents are: claude, echo" in found[0][2]
    assert "bad template: unknown input in '{{ inputs.missing }}'" in found[1][2]
    assert "unknown step 'zz'" in found[2][2]
    assert found[3][2].startswith("bad template: '{{' at character 0 is never closed")


def test_template_references_are_checked_against_inputs_and_needs() -> None:
    text = ('agent = "echo"\n[steps.a]\nprompt = "x"\n'
            '[steps.b]\nprompt = """\n{{ steps.a.result }} {{ item }} {{ inputs.q }}"""\n')
    found = problems(text)
    assert all(key == "steps.b.prompt" and line == 5 for line, key, _ in found)
    messages = " | ".join(m for _, _, m in found)
    assert "add 'a' to its needs" in messages
    assert "only has a value in a step with for_each" in messages
    assert "unknown input" in messages


def test_type_errors_name_the_key() -> None:
    text = ('agent = "echo"\nconcurrency = "many"\npolicy = "yolo"\n[inputs]\nn = { type = "int", '
            'default = "x" }\n[steps.a]\nprompt = "x"\ntimeout = -1\nretries = true\n'
            'for_each = 3\nworkspace = "elsewhere"\nbogus = 1\n')
    found = {key: (line, message) for line, key, message in problems(text)}
    assert found["concurrency"] == (2, "must be an integer, not a string")
    assert found["policy"] == (3, "must be one of ask, allow, deny, not 'yolo'")
    assert found["inputs.n.default"][0] == 5
    assert found["steps.a.timeout"][0] == 8
    assert found["steps.a.retries"] == (9, "must be an integer, not a boolean")
    assert found["steps.a.for_each"][0] == 10
    assert found["steps.a.workspace"][0] == 11
    assert found["steps.a.bogus"][0] == 12


def test_a_toml_syntax_error_keeps_its_line() -> None:
    [(line, key, _)] = problems('agent = "echo"\n[steps.a]\nprompt = "x\n')
    assert (line, key) == (3, "(syntax)")


def test_no_steps_and_no_agent() -> None:
    assert problems("")[0][1] == "steps"
    assert problems('[steps.a]\nprompt = "x"\n')[0][1:] == (
        "steps.a.agent", "no agent: give the step an agent, or the workflow a default "
        "`agent`")


def test_for_each_over_an_earlier_step_needs_it() -> None:
    text = ('agent = "echo"\n[steps.a]\nprompt = "x"\n[steps.b]\nfor_each = "steps.a.lines"\n'
            'prompt = "{{ item }}"\n')
    assert problems(text)[0][1] == "steps.b.for_each"
    ok = text.replace('[steps.b]\n', '[steps.b]\nneeds = ["a"]\n')
    assert spec.parse(ok, "f").steps["b"].for_each == spec.ForEach(step="a")


def test_bind_types_command_line_inputs() -> None:
    wf = spec.parse('agent = "e"\n[inputs]\nn = { type = "int" }\nfiles = { type = "list" }\n'
                    'go = true\n[steps.a]\nprompt = "{{ inputs.n }}"\n', "f")
    assert spec.bind(wf, {"n": "3", "files": "a, b,c"}) == {
        "n": 3, "files": ["a", "b", "c"], "go": True}
    assert spec.bind(wf, {"n": "3", "files": '["x y"]', "go": "no"})["files"] == ["x y"]
    with pytest.raises(ValueError, match="input 'n' must be an int"):
        spec.bind(wf, {"n": "three", "files": "a"})
    with pytest.raises(ValueError, match="input 'files' is required"):
        spec.bind(wf, {"n": "3"})
    with pytest.raises(ValueError, match="unknown input 'zz'"):
        spec.bind(wf, {"n": "3", "files": "a", "zz": "1"})


def test_locate_finds_keys_in_tables_and_inline_tables() -> None:
    text = ('top = 1\n[inputs]\nx = { type = "int" }\n\n[steps.a]\n# prompt = "no"\n'
            'prompt = "p"\n[steps."b"]\nneeds = []\n')
    assert spec.locate(text, ("top",)) == 1
    assert spec.locate(text, ("inputs", "x", "type")) == 3
    assert spec.locate(text, ("steps", "a", "prompt")) == 7
    assert spec.locate(text, ("steps", "a", "missing")) == 5
    assert spec.locate(text, ("steps", "b", "needs")) == 9
    assert spec.locate(text, ("nowhere",)) == 1


# ====================================================================== the templater


def test_template_renders_paths_and_lists() -> None:
    parts = template.parse("a {{ inputs.x }} b {{item}}{{{{ literal")
    assert parts == ["a ", Ref(("inputs", "x")), " b ", Ref(("item",)), "{{ literal"]
    assert template.render(parts, {"inputs": {"x": ["1", "2"]}, "item": True}) == (
        "a 1\n2 b true{{ literal")


def test_a_number_picks_a_list_item_and_json_quotes_a_value() -> None:
    parts = template.parse("{{ steps.r.results.1 }}|{{ steps.r.results.9 }}|"
                           "{{ steps.r.results | json }}|{{ inputs.t|json }}")
    assert parts[0] == Ref(("steps", "r", "results", "1"))
    assert parts[4] == Ref(("steps", "r", "results"), "json")
    context = {"steps": {"r": {"results": ["a", 'b "two"\nlines']}}, "inputs": {"t": "x"}}
    assert template.render(parts, context) == (
        'b "two"\nlines||["a", "b \\"two\\"\\nlines"]|"x"')


def test_results_are_checked_like_result() -> None:
    text = ('agent = "echo"\n[steps.a]\nfor_each = ["1", "2"]\nprompt = "{{ item }}"\n'
            '[steps.b]\nneeds = ["a"]\n'
            'prompt = "{{ steps.a.results | json }} {{ steps.a.results.0 }}"\n'
            '[steps.c]\nprompt = "{{ steps.a.results.x }} {{ steps.b.results }}"\n')
    found = problems(text)
    assert [key for _, key, _ in found] == ["steps.c.prompt"] * 2
    messages = " | ".join(m for _, _, m in found)
    assert "'{{ steps.a.results.x }}' is none of" in messages
    assert "add 'b' to its needs" in messages


@pytest.mark.parametrize("bad", ["{{", "{{ }}", "x }}", "{{ a b }}", "{{ a.__class__() }}",
                                 "{{ 1x }}", "{{ a | upper }}", "{{ a | json | json }}"])
def test_bad_templates_are_refused(bad: str) -> None:
    with pytest.raises(TemplateError):
        template.parse(bad)


_literal = st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=20)
_name = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)


@given(st.lists(st.one_of(_literal, st.lists(_name, min_size=1, max_size=3)), max_size=8),
       st.text(max_size=10))
def test_rendering_is_substitution(pieces: list[str | list[str]], value: str) -> None:
    """Any text without braces plus placeholders renders to the text with each placeholder
    replaced by its value, and nothing else changes."""
    source = "".join(p if isinstance(p, str) else "{{ " + ".".join(p) + " }}" for p in pieces)
    context: dict[str, object] = {}
    for p in pieces:
        if isinstance(p, list):
            node = context
            for name in p[:-1]:
                nxt = node.setdefault(name, {})
                if not isinstance(nxt, dict):
                    return  # a path that is a prefix of another: not a valid context
                node = nxt
            if isinstance(node.get(p[-1]), dict):
                return
            node[p[-1]] = value
    expected = "".join(p if isinstance(p, str) else value for p in pieces)
    assert template.render(template.parse(source), context) == expected


@given(st.lists(st.lists(st.integers(min_value=0, max_value=7), max_size=3), min_size=1,
                max_size=8))
def test_steps_are_ordered_after_their_needs_and_every_cycle_is_refused(
        needs: list[list[int]]) -> None:
    """Any graph of steps: it parses iff it has no cycle, and then every step comes after
    the steps it needs."""
    n = len(needs)
    graph = {f"s{i}": sorted({f"s{j % n}" for j in js if j % n != i})
             for i, js in enumerate(needs)}
    text = 'agent = "echo"\n' + "".join(
        f'[steps.{name}]\nneeds = {json.dumps(deps)}\nprompt = "x"\n'
        for name, deps in graph.items())

    def cyclic() -> bool:
        state: dict[str, int] = {}

        def visit(v: str) -> bool:
            if state.get(v) == 1:
                return True
            if state.get(v) == 2:
                return False
            state[v] = 1
            found = any(visit(w) for w in graph[v])
            state[v] = 2
            return found

        return any(visit(v) for v in graph)

    if cyclic():
        with pytest.raises(WorkflowError, match="a cycle: "):
            spec.parse(text, "g.toml")
        return
    order = list(spec.parse(text, "g.toml").steps)
    assert sorted(order) == sorted(graph)
    for name, deps in graph.items():
        assert all(order.index(d) < order.index(name) for d in deps)

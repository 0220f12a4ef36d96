"""A tiny, safe templater for step prompts: `{{ inputs.name }}`, `{{ steps.a.result }}`,
`{{ steps.a.results.0 }}`, `{{ item }}`, `{{ index }}`. A placeholder is a dotted path looked
up in a dict (a number picks a list's item; past its end is ""), optionally followed by the
one filter, `| json` (the value as JSON). There are no expressions or calls, so rendering
can neither run code nor fail on a valid template. `{{{{` stands for a literal `{{`. Pure."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_OPEN = "{{"
_CLOSE = "}}"
_IDENT = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_-]*|[0-9]+)\Z")
FILTERS = ("json",)


class TemplateError(ValueError):
    """A template that cannot be parsed; the message says where in it."""


@dataclass(frozen=True, slots=True)
class Ref:
    path: tuple[str, ...]
    filter: str | None = None

    def __str__(self) -> str:
        return ".".join(self.path)


Part = str | Ref


def parse(text: str) -> list[Part]:
    """The literal text and placeholders of `text`, in order."""
    parts: list[Part] = []
    literal: list[str] = []
    i = 0
    while True:
        j = text.find(_OPEN, i)
        k = text.find(_CLOSE, i)
        if k != -1 and (j == -1 or k < j):
            raise TemplateError(f"'}}}}' without an opening '{{{{' at character {k}")
        if j == -1:
            literal.append(text[i:])
            break
        literal.append(text[i:j])
        if text.startswith("{{{{", j):
            literal.append(_OPEN)
            i = j + 4
            continue
        end = text.find(_CLOSE, j + 2)
        if end == -1:
            raise TemplateError(f"'{{{{' at character {j} is never closed with '}}}}'")
        inner = text[j + 2:end].strip()
        if not inner:
            raise TemplateError(f"empty placeholder at character {j}")
        inner, bar, filt = (x.strip() for x in inner.partition("|"))
        if bar and filt not in FILTERS:
            raise TemplateError(f"unknown filter {filt!r} at character {j}; the filters "
                                f"are: {', '.join(FILTERS)}")
        path = tuple(inner.split("."))
        for name in path:
            if not _IDENT.match(name):
                raise TemplateError(f"'{{{{ {inner} }}}}' at character {j} is not a dotted "
                                    "name like inputs.topic or steps.plan.result")
        if any(literal):
            parts.append("".join(literal))
        literal = []
        parts.append(Ref(path, filt or None))
        i = end + 2
    tail = "".join(literal)
    if tail:
        parts.append(tail)
    return parts


def refs(parts: list[Part]) -> list[Ref]:
    return [p for p in parts if isinstance(p, Ref)]


def lookup(context: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at `path` in nested mappings (KeyError if absent); a number picks a
    list's item ("" past its end: how many items a fan-out has is known only when it ran)."""
    value: Any = context
    for name in path:
        if isinstance(value, list) and name.isdigit():
            value = value[int(name)] if int(name) < len(value) else ""
        elif isinstance(value, Mapping):
            value = value[name]
        else:
            raise KeyError(".".join(path))
    return value


def text_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "\n".join(text_of(v) for v in value)
    return str(value)


def render(parts: list[Part], context: Mapping[str, Any]) -> str:
    """`parts` with each placeholder replaced by its value in `context` (a list renders as
    one item a line). The caller validated every path, so a missing one is a KeyError."""
    return "".join(p if isinstance(p, str) else _show(p, lookup(context, p.path))
                   for p in parts)


def _show(ref: Ref, value: Any) -> str:
    if ref.filter == "json":
        return json.dumps(value, ensure_ascii=False)
    return text_of(value)

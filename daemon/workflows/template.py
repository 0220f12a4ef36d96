"""A tiny, safe templater for step prompts: `{{ inputs.name }}`, `{{ steps.a.result }}`,
`{{ item }}`, `{{ index }}`. A placeholder is a dotted path looked up in a dict; there are no
expressions, filters or calls, so rendering can neither run code nor fail on a valid
template. `{{{{` stands for a literal `{{`. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_OPEN = "{{"
_CLOSE = "}}"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


class TemplateError(ValueError):
    """A template that cannot be parsed; the message says where in it."""


@dataclass(frozen=True, slots=True)
class Ref:
    path: tuple[str, ...]

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
        path = tuple(inner.split("."))
        for name in path:
            if not _IDENT.match(name):
                raise TemplateError(f"'{{{{ {inner} }}}}' at character {j} is not a dotted "
                                    "name like inputs.topic or steps.plan.result")
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(Ref(path))
        i = end + 2
    tail = "".join(literal)
    if tail:
        parts.append(tail)
    return parts


def refs(parts: list[Part]) -> list[Ref]:
    return [p for p in parts if isinstance(p, Ref)]


def lookup(context: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at `path` in nested mappings (KeyError if absent)."""
    value: Any = context
    for name in path:
        if not isinstance(value, Mapping):
            raise KeyError(".".join(path))
        value = value[name]
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
    return "".join(p if isinstance(p, str) else text_of(lookup(context, p.path))
                   for p in parts)

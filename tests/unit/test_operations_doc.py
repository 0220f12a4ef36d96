"""docs/OPERATIONS.md documents every config key, with its real default.

The reference tables are checked against the msgspec Structs of daemon/config.py, both
ways: a key added to the code without a row fails here (with the row to paste), and so
does a row for a key that no longer exists or whose default changed. Descriptions and
examples are free text; key names and defaults are not.

    python -m tests.unit.test_operations_doc     # prints the rows the doc should have
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from daemon.config import file as config_mod
from daemon.config.file import ByteSize, Config, Duration, MemoryBudget

DOC = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"
# | `section.key` | default | example | meaning |
_ROW = re.compile(r"^\|\s*`([a-z_]+(?:\.[A-Za-z_]+)+)`\s*\|\s*([^|]*?)\s*\|")


def _struct_of(tp: Any) -> tuple[type[msgspec.Struct], bool] | None:
    """(Struct, is a NAME -> Struct table) for a Config field type, else None."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp, False
    if typing.get_origin(tp) is dict:
        value = typing.get_args(tp)[1]
        if isinstance(value, type) and issubclass(value, msgspec.Struct):
            return value, True
    return None


def render_default(value: Any) -> str:
    """A default as the doc writes it: TOML spelling, durations and sizes as in the file."""
    if value is msgspec.NODEFAULT:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Duration):
        return f'`"{config_mod.format_duration(float(value))}"`'
    if isinstance(value, MemoryBudget) and value.share is not None:
        return f'`"{value.share:g}%"`'
    if isinstance(value, ByteSize):
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value and value % size == 0:
                return f'`"{value // size}{unit}"`'
        return f"`{int(value)}`"
    if isinstance(value, str | list | dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def expected_keys() -> Iterator[tuple[str, str]]:
    """(dotted key, rendered default) for every field of every config section."""
    for section in msgspec.structs.fields(Config):
        found = _struct_of(section.type)
        assert found is not None, f"Config.{section.name} is not a section"
        struct, is_table = found
        prefix = f"{section.name}.NAME" if is_table else section.name
        for field in msgspec.structs.fields(struct):
            default = field.default
            if default is msgspec.NODEFAULT and field.default_factory is not msgspec.NODEFAULT:
                default = field.default_factory()
            yield f"{prefix}.{field.name}", render_default(default)


def documented_keys(text: str) -> dict[str, str]:
    """Rows of the tables under "## Configuration reference"."""
    start = text.index("## Configuration reference")
    end = text.find("\n## ", start + 1)
    rows: dict[str, str] = {}
    for line in text[start:end if end != -1 else None].splitlines():
        match = _ROW.match(line)
        if match:
            key = match.group(1)
            assert key not in rows, f"{key} is documented twice"
            rows[key] = match.group(2)
    return rows


def test_every_config_key_is_documented_with_its_default() -> None:
    documented = documented_keys(DOC.read_text())
    expected = dict(expected_keys())
    missing = [f"| `{k}` | {d} | | |" for k, d in expected.items() if k not in documented]
    assert not missing, ("docs/OPERATIONS.md lacks these config keys; add rows:\n"
                         + "\n".join(missing))
    stale = sorted(set(documented) - set(expected))
    assert not stale, f"docs/OPERATIONS.md documents keys the config does not have: {stale}"
    wrong = [f"{k}: doc says {documented[k]}, code says {d}"
             for k, d in expected.items() if documented[k] != d]
    assert not wrong, "wrong defaults in docs/OPERATIONS.md:\n" + "\n".join(wrong)


def test_the_example_config_in_the_doc_is_valid() -> None:
    """The full example must parse with the real parser, so it cannot rot either."""
    text = DOC.read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    assert blocks, "no ```toml example in docs/OPERATIONS.md"
    for block in blocks:
        config_mod.parse(block, source="OPERATIONS.md example")


def test_render_default() -> None:
    assert render_default(Duration(1800.0)) == '`"30m"`'
    assert render_default(ByteSize(16 << 20)) == '`"16MiB"`'
    assert render_default(None) == "unset"
    assert render_default(msgspec.NODEFAULT) == "required"


if __name__ == "__main__":
    for key, default in expected_keys():
        print(f"| `{key}` | {default} | | |")

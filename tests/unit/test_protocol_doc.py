"""docs/PROTOCOL.md describes the wire format the code speaks: its tables are generated from
the msgspec structs (tests/support/protocol_doc.py) and its example is examples/protocol_client.py,
byte for byte."""

from __future__ import annotations

import difflib
import typing

from protocol import deltas as d
from protocol import messages as m
from protocol.errors import ErrorCode
from tests.support import protocol_doc


def test_generated_tables_match_the_types() -> None:
    text = protocol_doc.DOC.read_text()
    fresh = protocol_doc.render(text)
    if fresh != text:
        diff = "".join(list(difflib.unified_diff(
            text.splitlines(keepends=True), fresh.splitlines(keepends=True),
            "docs/PROTOCOL.md", "rendered from protocol/"))[:60])
        raise AssertionError("docs/PROTOCOL.md is out of date; run "
                             f"`python -m tests.support.protocol_doc --write`:\n{diff}")


def test_every_message_kind_and_code_has_its_section() -> None:
    text = protocol_doc.DOC.read_text()
    assert set(protocol_doc.blocks(text)) == set(protocol_doc.SECTIONS)
    for cls in (*typing.get_args(m.Request), *typing.get_args(m.ServerMessage),
                *typing.get_args(d.DeltaBody), m.Hello):
        assert f"### `{cls.__struct_config__.tag}`" in text, cls
    for code in ErrorCode:
        assert f"| `{code.value}` |" in text, code


def test_the_example_in_the_doc_is_the_example_file() -> None:
    examples = protocol_doc.example_blocks(protocol_doc.DOC.read_text())
    assert list(examples) == ["examples/protocol_client.py"]
    path = protocol_doc.ROOT / "examples" / "protocol_client.py"
    assert examples["examples/protocol_client.py"] == path.read_text()

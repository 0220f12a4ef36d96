"""Edge cases found in review, each pinned by the test that would have caught it."""

from __future__ import annotations

import pytest

from daemon.config import parse
from daemon.errors import ConfigError


@pytest.mark.parametrize("text", [
    "agents = 5\n",
    'agents = "qwen"\n',
    "agents = [1]\n",
    'computers = "build1"\n',
])
def test_a_section_that_is_not_a_table_is_a_config_error(text: str) -> None:
    """`agents`/`computers` given as a value instead of a table is the user's mistake: a
    `ConfigError` naming the key, not an `AttributeError` out of the parser (which took the
    daemon, `stoker doctor` and a reload down with a traceback)."""
    section = text.split(" ", 1)[0]
    with pytest.raises(ConfigError, match=rf"Expected `object`, got .* at `\$\.{section}`"):
        parse(text)

"""What `stoker reload` reports: the settings it changed, and those that wait for a restart
(daemon/service/reload.py, `STARTUP_ONLY`, against docs/OPERATIONS.md)."""

from __future__ import annotations

import re
from pathlib import Path

from daemon.service.reload import STARTUP_ONLY

DOC = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"


def test_the_startup_only_settings_are_those_the_reference_says() -> None:
    """A row of the configuration reference that says `Startup only.` or `Read at start`
    is a key a reload cannot apply; the reloader must name exactly those."""
    said = set()
    for line in DOC.read_text().splitlines():
        row = re.match(r"^\|\s*`([a-z_]+\.[a-z_]+)`\s*\|", line)
        if row and re.search(r"Startup only|Read at start", line):
            said.add(row.group(1))
    assert said == set(STARTUP_ONLY)

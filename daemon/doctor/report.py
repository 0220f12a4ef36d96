"""The doctor's report: one :class:`Check` per row, and what the CLI makes of the rows.

Its own module, below everything else in the package: the verdicts, the remote computer
checks (`ssh`) and the report's assembly (`checks`) all produce rows, none imports another
to get the type.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail"]
STATUSES: tuple[Status, ...] = ("ok", "warn", "fail")


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the report."""

    name: str
    status: Status
    detail: str


def exit_status(checks: Iterable[Check]) -> int:
    """1 when any check failed; warnings alone are not a failure."""
    return 1 if any(c.status == "fail" for c in checks) else 0


def summary(checks: Sequence[Check]) -> str:
    """The one-line count the CLI prints under the table."""
    counts = {s: sum(1 for c in checks if c.status == s) for s in STATUSES}
    return f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failure(s)"

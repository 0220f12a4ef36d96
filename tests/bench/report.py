"""Markdown tables from `scripts/bench --json` output, for docs/PERFORMANCE.md.

    python -m tests.bench.report AFTER.json [BEFORE.json]

One table per scenario: each figure, its target and whether it holds, and (given a second
document) the figure before, for the "before / after" columns of an optimisation pass.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .common import Figure

RENAMED: dict[str, str] = {
    "daemon kill -9 -> daemon ready": "kill -9 -> daemon ready",
    "daemon kill -9 -> chat warm again": "kill -9 -> chat warm again",
    "agent's own cold start, same runs": "agent's own cold start (spawn, initialize, session/new)",
    "daemon restart adds (chat warm again - agent cold start)":
        "restart adds (chat warm again - agent cold start)",
    "daemon kill -9 -> first chunk": "kill -9 -> first chunk",
    "daemon restart adds (first chunk)": "restart adds (first chunk)",
    "daemon kill -9 -> daemon ready, 1M deltas logged": "kill -9 -> daemon ready, 1M deltas logged",
}
"""Figures renamed since an older document (new name -> old), so that "before" finds them."""


def _figures(document: dict[str, Any], scenario: str) -> dict[str, Figure]:
    found = document.get("scenarios", {}).get(scenario, {})
    return {f["name"]: Figure(**f) for f in found.get("figures", [])}


def render(after: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    machine = after["machine"]
    lines = [f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB "
             f"RAM, kernel {machine['kernel']}, Python {machine['python']}; "
             f"{machine['date']}, commit {machine['commit']}, load before {machine['load']}, "
             f"after {after.get('load_after')}; "
             f"{'quick' if after.get('quick') else 'full'} run, {after.get('runs')} runs per "
             f"measurement, {after.get('seconds')} s.", ""]
    for scenario, body in after.get("scenarios", {}).items():
        lines.append(f"### {body['title']}")
        lines.append("")
        if body.get("load"):
            start, end = body["load"]
            lines.append(f"Load {start:.2f} at the start, {end:.2f} at the end.")
            lines.append("")
        old = _figures(before, scenario) if before else {}
        header = "| figure | value | target | holds |"
        rule = "|---|---:|---|---|"
        if before:
            header = "| figure | before | after | target | holds |"
            rule = "|---|---:|---:|---|---|"
        lines += [header, rule]
        for raw in body["figures"]:
            fig = Figure(**raw)
            holds = "" if fig.holds is None else ("yes" if fig.holds else "**no**")
            cells = [fig.name]
            if before:
                prior = old.get(fig.name) or old.get(RENAMED.get(fig.name, ""))
                cells.append(prior.shown() if prior is not None else "")
            cells += [fig.shown(), fig.target or "", holds]
            lines.append("| " + " | ".join(cells) + " |")
        for why in body.get("skipped", []):
            lines.append(f"\nSkipped: {why}")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    after = json.loads(Path(sys.argv[1]).read_text())
    before = json.loads(Path(sys.argv[2]).read_text()) if len(sys.argv) == 3 else None
    print(render(after, before))
    return 0


if __name__ == "__main__":
    sys.exit(main())

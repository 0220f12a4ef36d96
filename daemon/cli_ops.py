"""CLI commands for operating the daemon: doctor.

Kept apart from the chat commands because they must work when the daemon does not: `doctor`
is what one runs exactly when nothing answers.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

import msgspec

from .cli import add_common, eprint, paths_from, run_async


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    help_text = ("check the config, socket, state dir, git, node and every agent; "
                 "exit 1 on problems")
    p = sub.add_parser("doctor", help=help_text, description=help_text)
    add_common(p)
    p.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                   help="how long each agent has to answer initialize (default: 15)")
    p.add_argument("--no-probe", action="store_true",
                   help="do not start agents; only look for their binaries")
    p.set_defaults(handler=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor

    paths = paths_from(args)

    async def main() -> int:
        checks = await doctor.run_checks(paths, timeout=args.timeout,
                                         probe_agents=not args.no_probe)
        status = doctor.exit_status(checks)
        if args.json:
            report: dict[str, Any] = {
                "ok": status == 0,
                "checks": [{"check": c.name, "status": c.status, "detail": c.detail}
                           for c in checks],
            }
            sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
            sys.stdout.flush()
        else:
            _print_table([["CHECK", "STATUS", "DETAIL"],
                          *([c.name, c.status, c.detail] for c in checks)])
            eprint(doctor.summary(checks))
        return status

    return run_async(main)


def _print_table(rows: list[list[str]], out: TextIO | None = None) -> None:
    """Columns padded to their widest cell; the last column (detail) is left ragged."""
    out = out or sys.stdout
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
        out.write("  ".join(cells).rstrip() + "\n")
    out.flush()

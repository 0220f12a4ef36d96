"""CLI commands for operating the daemon: doctor, and the body of `reload` (registered
with the chat commands, for the order of `stoker --help`).

Kept apart from the chat commands because they must work when the daemon does not: `doctor`
is what one runs exactly when nothing answers.
"""

from __future__ import annotations

import argparse
from typing import Any

from daemon.cli.common import (
    add_common,
    eprint,
    out_json,
    paths_from,
    print_table,
    run_async,
    show,
)


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
    from daemon.doctor import checks as doctor

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
            out_json(report)
        else:
            print_table([["CHECK", "STATUS", "DETAIL"],
                         *([c.name, c.status, c.detail] for c in checks)])
            eprint(doctor.summary(checks))
        return status

    return run_async(main)


def cmd_reload(args: argparse.Namespace) -> int:
    """`stoker reload`: what changed, and which of it waits for a restart."""
    from protocol import messages as m

    def render(result: m.ReloadResult) -> None:
        eprint("config reloaded" + (f": {', '.join(result.changed)} changed" if
                                    result.changed else ", nothing changed"))
        if result.restart_needed:
            eprint("restart the daemon for these to take effect (read at start only): "
                   + ", ".join(result.restart_needed))

    return show(args, m.Reload(id=0), render)

"""`stoker computers`: the remote computers of the config and their SSH connections.

One row per `[computers.NAME]`: its connection state, address, the latency of one SFTP round
trip on the live connection (measured now), how many agent/terminal processes run there and
how they spread over its connections (`CONNS`, e.g. `6+2`), and the last error. It never
connects: a computer nothing used yet is `idle`; `stoker doctor` tests the connection itself.
"""

from __future__ import annotations

import argparse
import time

from daemon.cli.common import add_common, print_table, show
from protocol import messages as m


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "list the remote computers with connection state and latency"
    p = sub.add_parser("computers", help=text, description=text)
    add_common(p)
    p.add_argument("--no-probe", action="store_true",
                   help="report the last latency instead of measuring it now")
    p.set_defaults(handler=cmd_computers)


def rows(result: m.ComputerList, now: float) -> list[list[str]]:
    out = [["NAME", "STATE", "ADDRESS", "LATENCY", "PROCS", "CONNS", "UP", "LAST ERROR"]]
    for c in result.computers:
        user = f"{c.user}@" if c.user else ""
        latency = "-" if c.latency_ms is None else f"{c.latency_ms:.1f}ms"
        up = "-" if c.connected_since is None else _age(now - c.connected_since)
        # Channels per connection, main first: "6+2" is two connections.
        conns = "+".join(str(n) for n in c.connections) or "-"
        out.append([c.name, c.state, f"{user}{c.host}:{c.port}", latency, str(c.processes),
                    conns, up, c.last_error[:120]])
    return out


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def cmd_computers(args: argparse.Namespace) -> int:
    def render(result: m.ComputerList) -> None:
        if not result.computers:
            print("no computers configured (see docs/REMOTE.md)")
            return
        print_table(rows(result, time.time()))

    return show(args, m.ListComputers(id=0, probe=not args.no_probe), render)

"""`stoker doctor`'s check of each remote computer: connect, verify the host key, run
`uname` and an echo round trip, see the tools the launcher needs and the `python3` that
agents there taking MCP over stdio need (daemon/ssh/mcp_stdio.py's probe, in the same round
trip), and ask for the remote port forward that brings Stoker's MCP server to agents there
(docs/REMOTE.md).

It runs in the doctor's own process (the daemon may not be running), with a short-lived
asyncio bridge, exactly the connection code the daemon uses. As everywhere in the doctor, the
facts are gathered here and the verdict is a pure function of them (unit tested).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import trio

from daemon.config.file import ComputerConfig, Config
from daemon.doctor.report import Check
from daemon.ssh.mcp_stdio import MIN_VERSION, PROBE, PYTHON, probe_problem

PYTHON_LINE = "stoker-python3 "
REMOTE_CHECK = (
    'echo "stoker-ok $(uname -srm)"; '
    'for t in setsid sed cut awk grep git; do command -v "$t" >/dev/null 2>&1 || '
    'echo "missing $t"; done; [ -r /proc/self/stat ] || echo "missing /proc"; '
    f'v=$({PROBE} 2>&1); c=$?; '
    f'echo "{PYTHON_LINE}$c $(printf %s "$v" | tr "\\n" " " | cut -c1-200)"'
)
"""One round trip; the last line is `stoker-python3 STATUS OUTPUT` (the probe's exit status
and what it printed, its version or its error, on one line)."""

FORWARD_PROBE_PORT = 9
"""The local end of the doctor's trial forward (discard: nothing connects to it anyway)."""


@dataclass(frozen=True, slots=True)
class ComputerFacts:
    name: str
    address: str
    outcome: Literal["ok", "unreachable", "refused", "broken"]
    detail: str = ""
    """The error, or `uname -srm` of the remote host."""
    missing: tuple[str, ...] = ()
    seconds: float = 0.0
    """Connect + handshake + round trip."""
    forwarding: str = ""
    """Why the server refused a remote port forward ("" when it allowed one)."""
    python: tuple[int | None, str] = (None, "")
    """The python3 probe's exit status (None: no answer) and what it printed."""


def python_problem(python: tuple[int | None, str]) -> str:
    """What is wrong with the computer's python3 for the stdio MCP bridge ("" if nothing)
    (pure)."""
    code, said = python
    if code is None:
        return f"{PYTHON} could not be checked (the probe printed nothing)"
    return probe_problem(code, said.encode(), said if code == 1 else "")


def computer_verdict(facts: ComputerFacts) -> Check:
    """Unreachable or refused (host key, login) fails: agents configured there cannot
    start. Missing git only warns (only remote workspaces need it), so do a missing or too
    old python3 (only agents taking stdio MCP need it) and a refused forward (only Stoker's
    MCP server needs it); missing launcher tools fail."""
    name = f"computer {facts.name}"
    if facts.outcome != "ok":
        return Check(name, "fail", facts.detail)
    needed = [t for t in facts.missing if t != "git"]
    if needed:
        return Check(name, "fail", f"{facts.address} ({facts.detail}) lacks what agents need "
                     f"there: {', '.join(needed)}")
    python = python_problem(facts.python)
    version = f", {PYTHON} {facts.python[1]}" if not python else ""
    summary = (f"{facts.address}: host key verified, {facts.detail}{version}, round trip "
               f"{facts.seconds * 1000:.0f} ms")
    warnings = []
    if "git" in facts.missing:
        warnings.append("git is missing (needed for remote workspaces)")
    if python:
        need = ".".join(map(str, MIN_VERSION))
        warnings.append(f"{python}, so agents there that take MCP over stdio get no Stoker "
                        f"MCP server (task tools); install Python {need} or later there, on "
                        f"the PATH of a command run over SSH (agents that take MCP over "
                        f"HTTP do not need it)")
    if facts.forwarding:
        warnings.append(f"no port forwarding, so agents there get no Stoker MCP server "
                        f"(task tools): {facts.forwarding}")
    if warnings:
        return Check(name, "warn", "; ".join([summary, *warnings]))
    return Check(name, "ok", summary)


def parse_python(line: str) -> tuple[int | None, str]:
    """(status, output) of the probe's `stoker-python3 STATUS OUTPUT` line (pure)."""
    code, _, said = line.removeprefix(PYTHON_LINE).partition(" ")
    return (int(code) if code.isdigit() else None), said.strip()


async def computer_facts(name: str, config: ComputerConfig, *, timeout: float
                         ) -> ComputerFacts:
    from daemon.ssh.bridge import open_bridge
    from daemon.ssh.computer import Computer
    from daemon.ssh.login import ComputerError

    started = time.monotonic()
    async with open_bridge() as bridge, trio.open_nursery() as nursery:
        computer = Computer(name, config, bridge=bridge, nursery=nursery)
        try:
            try:
                with trio.fail_after(timeout):
                    done = await computer.run(REMOTE_CHECK, timeout=timeout)
            except ComputerError as exc:
                return ComputerFacts(name, computer.address,
                                     "unreachable" if exc.transient else "refused", str(exc))
            except trio.TooSlowError:
                return ComputerFacts(name, computer.address, "unreachable",
                                     f"no answer within {timeout:g}s")
            lines = done.stdout.decode("utf-8", "replace").splitlines()
            first = next((x for x in lines if x.startswith("stoker-ok")), None)
            if first is None:
                said = done.stderr.decode("utf-8", "replace").strip()[-300:]
                return ComputerFacts(name, computer.address, "broken",
                                     f"the echo round trip failed: {said or done.code}")
            missing = tuple(x.split(" ", 1)[1] for x in lines if x.startswith("missing "))
            python = next((parse_python(x) for x in lines if x.startswith(PYTHON_LINE)),
                          (None, ""))
            seconds = time.monotonic() - started
            forwarding = ""
            try:  # to a port nothing here listens on; closed with the connection
                with trio.fail_after(timeout):
                    await computer.forward(FORWARD_PROBE_PORT)
            except ComputerError as exc:
                forwarding = str(exc)
            except trio.TooSlowError:
                forwarding = f"no answer to a forwarding request within {timeout:g}s"
            return ComputerFacts(name, computer.address, "ok",
                                 first.removeprefix("stoker-ok").strip(), missing, seconds,
                                 forwarding, python)
        finally:
            with trio.CancelScope(shield=True):
                await computer.close()
            nursery.cancel_scope.cancel()


async def computer_checks(config: Config, *, timeout: float) -> list[Check]:
    """One check per computer, run concurrently, reported in config order."""
    names = list(config.computers)
    results: dict[str, Check] = {}

    async def one(name: str) -> None:
        facts = await computer_facts(name, config.computers[name], timeout=timeout)
        results[name] = computer_verdict(facts)

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    return [results[n] for n in names]

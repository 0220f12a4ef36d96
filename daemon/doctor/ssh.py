"""`stoker doctor`'s check of each remote computer: connect, verify the host key, run
`uname` and an echo round trip, see the tools the launcher needs, and ask for the remote
port forward that brings Stoker's MCP server to agents there (docs/REMOTE.md).

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

REMOTE_CHECK = (
    'echo "stoker-ok $(uname -srm)"; '
    'for t in setsid sed cut awk grep git; do command -v "$t" >/dev/null 2>&1 || '
    'echo "missing $t"; done; [ -r /proc/self/stat ] || echo "missing /proc"'
)

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


def computer_verdict(facts: ComputerFacts) -> Check:
    """Unreachable or refused (host key, login) fails: agents configured there cannot
    start. Missing git only warns (only remote workspaces need it); missing launcher tools
    fail."""
    name = f"computer {facts.name}"
    if facts.outcome != "ok":
        return Check(name, "fail", facts.detail)
    needed = [t for t in facts.missing if t != "git"]
    if needed:
        return Check(name, "fail", f"{facts.address} ({facts.detail}) lacks what agents need "
                     f"there: {', '.join(needed)}")
    summary = (f"{facts.address}: host key verified, {facts.detail}, round trip "
               f"{facts.seconds * 1000:.0f} ms")
    warnings = []
    if "git" in facts.missing:
        warnings.append("git is missing (needed for remote workspaces)")
    if facts.forwarding:
        warnings.append(f"no port forwarding, so agents there get no Stoker MCP server "
                        f"(task tools): {facts.forwarding}")
    if warnings:
        return Check(name, "warn", "; ".join([summary, *warnings]))
    return Check(name, "ok", summary)


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
                                 forwarding)
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

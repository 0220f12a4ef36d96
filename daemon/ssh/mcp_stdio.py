"""Stoker's MCP server for an agent on a computer that takes MCP over stdio only.

Neither the daemon's socket nor `stoker mcp` is over there; what reaches the computer is the
daemon's HTTP endpoint, through the SSH remote port forward (forwards.py). Such an agent is
offered a stdio entry whose command bridges the two, written for the computer's own Python:

    {"name": "stoker", "command": "python3", "args": ["-c", <mcp_bridge.py>, URL],
     "env": [{"name": "STOKER_MCP_CREDENTIAL", "value": <the chat's credential>}]}

URL is the one an HTTP agent there is offered; the bearer credential of its entry goes to
the environment, never to argv (every user of the computer reads argv in `ps`; a process's
environment is its user's alone). The bridge program is standard-library Python 3.7+
(`mcp_bridge.py`, this package's file, sent as it is).

Before the first such offer on each connection, `python3` is looked for there (one short
exec); when it is missing or too old, `offer.Unavailable` says so and the chat gets the same
warning notice as for a refused forward. The answer is kept for the connection: a new one
(a reconnect, a reconfigured computer) asks again.
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import TYPE_CHECKING, Any

import trio

from daemon.mcp.credentials import ENV_CREDENTIAL
from daemon.mcp.offer import Unavailable
from daemon.ssh.login import ComputerError

if TYPE_CHECKING:
    from daemon.ssh.computer import Computer

PYTHON = "python3"
MIN_VERSION = (3, 7)
PROBE = (f"{PYTHON} -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3]); "
         f"sys.exit(sys.version_info < {MIN_VERSION!r})'")
"""Prints the version; exit 0: usable; 1: too old; 127 (the shell's): not found. `stoker
doctor` runs the same probe (daemon/doctor/ssh.py)."""
PROBE_TIMEOUT = 15.0


@functools.cache
def program() -> str:
    """The bridge program's text (mcp_bridge.py)."""
    return importlib.resources.files("daemon.ssh").joinpath("mcp_bridge.py").read_text(
        encoding="utf-8")


def stdio_entry(http: dict[str, Any]) -> dict[str, Any]:
    """The stdio `mcpServers` entry bridging to the HTTP entry `http` (offer.http_entry)
    (pure)."""
    credential = ""
    for header in http.get("headers") or []:
        value = str(header.get("value", ""))
        if str(header.get("name", "")).lower() == "authorization" \
                and value.startswith("Bearer "):
            credential = value.removeprefix("Bearer ")
    return {
        "name": http["name"],
        "command": PYTHON,
        "args": ["-c", program(), http["url"]],
        "env": [{"name": ENV_CREDENTIAL, "value": credential}],
    }


def probe_problem(code: int | None, stderr: bytes, version: str = "") -> str:
    """What the probe's exit says is wrong with the computer's python3 ("" if nothing),
    given what it printed (`version`) (pure)."""
    if code == 0:
        return ""
    if code == 1:
        need = ".".join(map(str, MIN_VERSION))
        found = f" ({version})" if version else ""
        return f"its {PYTHON}{found} is older than {need}"
    if code == 127:
        return f"{PYTHON} is not found on its PATH"
    said = stderr.decode("utf-8", "replace").strip()[:200]
    return f"{PYTHON} does not run ({said or f'exit status {code}'})"


class StdioOffer:
    """One computer's stdio entries, `python3` looked for once per connection."""

    def __init__(self, computer: Computer) -> None:
        self._computer = computer
        self._checked: tuple[Any, str] | None = None
        """(the connection asked on, what is wrong there or "")."""
        self._lock = trio.Lock()

    async def entry(self, http: dict[str, Any]) -> dict[str, Any]:
        """The stdio entry for the HTTP entry `http`; `Unavailable` when the computer has
        no usable python3 or cannot be asked."""
        computer = self._computer
        async with self._lock:
            try:
                conn = await computer.connection()
                checked = self._checked
                if checked is None or checked[0] is not conn:
                    done = await computer.run(PROBE, timeout=PROBE_TIMEOUT)
                    checked = self._checked = (conn, probe_problem(
                        done.code, done.stderr, done.stdout.decode("utf-8", "replace").strip()))
            except ComputerError as exc:
                raise Unavailable(str(exc)) from None
        if checked[1]:
            raise Unavailable(
                f"the agent takes MCP over stdio only, and its bridge to the daemon's HTTP "
                f"endpoint needs Python {'.'.join(map(str, MIN_VERSION))} or later there: "
                f"{checked[1]} (see docs/REMOTE.md)")
        return stdio_entry(http)

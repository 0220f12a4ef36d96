"""The doctor's facts: small I/O functions that look at the machine (paths, the daemon's
socket, the database, tools on PATH, an agent's ``initialize``) and return plain values for
the verdicts in :mod:`daemon.doctor.verdicts`.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import trio

from daemon.config.agents import AgentSpec
from daemon.doctor.verdicts import DaemonAnswer, PathFacts
from daemon.errors import StokerError


def path_facts(path: Path) -> PathFacts:
    """``stat`` (following symlinks, as the daemon's own open/connect does)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        # Creatable when the nearest existing ancestor is a writable directory.
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        return PathFacts("missing", writable=parent.is_dir() and os.access(parent, os.W_OK))
    except OSError:
        return PathFacts("other")
    if stat.S_ISDIR(st.st_mode):
        kind: Literal["dir", "socket", "file", "other"] = "dir"
    elif stat.S_ISSOCK(st.st_mode):
        kind = "socket"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    else:
        kind = "other"
    return PathFacts(kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                     writable=os.access(path, os.W_OK))


async def ask_daemon(path: Path, timeout: float = 5.0) -> DaemonAnswer:
    """Connect, say hello, ask for the status."""
    from daemon.client import Client, ClientError, DaemonNotRunning, RequestFailed
    from protocol import messages as m

    if not path.exists():
        return DaemonAnswer("absent")
    try:
        with trio.fail_after(timeout):
            async with Client.connect(path, client="doctor") as client:
                status: m.StatusResult = await client.request(m.GetStatus(id=0))
    except trio.TooSlowError:
        return DaemonAnswer("error", f"no answer within {timeout:g}s")
    except DaemonNotRunning as exc:
        return DaemonAnswer("absent" if not path.exists() else "refused", str(exc))
    except RequestFailed as exc:
        return DaemonAnswer("error", exc.message)
    except ClientError as exc:
        # Connecting to a Unix socket takes write permission on it.
        denied = not os.access(path, os.W_OK)
        return DaemonAnswer("denied" if denied else "error", str(exc))
    counts = status.actors
    up = (f"{status.uptime:.0f}s" if status.uptime < 120 else f"{status.uptime / 60:.0f}m"
          if status.uptime < 7200 else f"{status.uptime / 3600:.1f}h")
    return DaemonAnswer("answering", f"pid {status.pid}, version {status.version}, up {up}, "
                        f"{status.chats} chats, {counts.warm} warm, {counts.busy} busy",
                        config=status.config)


def tool_version(name: str, args: Sequence[str] = ("--version",)) -> str | None:
    """First line of ``NAME --version``, or ``None`` when it is not on PATH or fails."""
    binary = shutil.which(name)
    if binary is None:
        return None
    try:
        done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else name


async def probe(spec: AgentSpec, *, timeout: float, cwd: str
                ) -> tuple[dict[str, object] | str, float]:
    """Start the agent, ask ``initialize`` (the daemon's own probe), stop it."""
    from daemon.actors.backend.probe import probe_agent
    from daemon.execution.local import LocalExecutor

    instance = f"doctor-{os.getpid()}"
    started = time.monotonic()
    try:
        info = await probe_agent(LocalExecutor(instance), spec, cwd=cwd, timeout=timeout,
                                 grace=2.0, instance=instance)
    except StokerError as exc:
        return exc.message, time.monotonic() - started
    return dict(info), time.monotonic() - started
